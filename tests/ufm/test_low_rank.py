"""ufm.low_rank: the Schatten cost of deep factors and the codes' objectives, checked in the toolkit's
own deep linear objective and against what GD converges to."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.special import logsumexp

from ufm.low_rank import (CODES, balanced_factors, code_objective, cross_polytope_code, effective_rank,
                          numerical_rank, polygon_code, schatten_cost)
from ufm.losses import Batch, CrossEntropy
from ufm.model import TargetTensors
from ufm.targets import one_hot
from ufm.train import train_ufm


def toolkit_objective(W, layers, H, lam):
    """The deep linear UFM's objective on one_hot([1] * K), from ufm.losses and the factors' ridge."""
    K = W.shape[0]
    data = TargetTensors(one_hot([1] * K), torch.device("cpu"), torch.float64)
    F = torch.as_tensor(H)
    for layer in layers:
        F = torch.as_tensor(layer) @ F
    fit = float(CrossEntropy()(torch.as_tensor(W), F, None, Batch(*data.select(None)), chunk_entries=None))
    return fit + lam / 2 * sum(float(np.sum(np.square(x))) for x in [W, H, *layers])


@pytest.mark.parametrize("code, K", [("collapse", 5), ("polygon", 5), ("cross-polytope", 6)])
@pytest.mark.parametrize("depth", [0, 2])
def test_a_code_at_its_best_scale_is_reached_by_balanced_factors_in_the_toolkits_objective(code, K, depth):
    lam = 1e-3
    o = code_objective(code, K, depth, lam)
    W, layers, H = balanced_factors(o.scale * CODES[code](K), depth, K)
    assert o.objective == pytest.approx(toolkit_objective(W, layers, H, lam), rel=1e-10)
    # the best scale: nearby scales cost more
    for s in (0.99 * o.scale, 1.01 * o.scale):
        W, layers, H = balanced_factors(s * CODES[code](K), depth, K)
        assert toolkit_objective(W, layers, H, lam) > o.objective


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), depth=st.integers(0, 3))
def test_no_factorization_is_cheaper_than_the_schatten_cost(seed, depth):
    """Random factors of a product: their ridge is never below the closed-form least ridge, and the
    balanced factors of that product attain it."""
    rng = np.random.default_rng(seed)
    factors = [rng.standard_normal((4, 4)) for _ in range(depth + 2)]
    Z = np.linalg.multi_dot(factors) if len(factors) > 2 else factors[0] @ factors[1]
    ridge = 0.5 * sum(float(np.sum(f ** 2)) for f in factors)
    least = schatten_cost(Z, depth, 1.0)
    assert ridge >= least * (1 - 1e-12)
    W, layers, H = balanced_factors(Z, depth, 4)
    product = W @ (np.linalg.multi_dot([*layers[::-1], H]) if layers else H)
    np.testing.assert_allclose(product, Z, atol=1e-9 * np.abs(Z).max())
    assert 0.5 * sum(float(np.sum(x ** 2)) for x in [W, H, *layers]) == pytest.approx(least, rel=1e-10)


def test_codes_have_margin_one_and_their_ranks():
    for K in (4, 6, 8):
        for name, want in (("collapse", K - 1), ("polygon", 2), ("cross-polytope", K // 2)):
            C = CODES[name](K)
            own = np.diag(C)
            others = np.where(np.eye(K, dtype=bool), -np.inf, C).max(0)
            np.testing.assert_allclose(own - others, 1.0, atol=1e-12)
            assert numerical_rank(C, 1e-9) == want
    with pytest.raises(ValueError, match="even number of classes"):
        cross_polytope_code(5)
    np.testing.assert_allclose(polygon_code(4), cross_polytope_code(4), atol=1e-12)  # the square


def test_depth_zero_keeps_the_collapse_and_depth_makes_low_rank_cheaper():
    """Depth 0 (the plain UFM): the collapse is the cheapest code, the known global optimum; from
    depth 2 on (K = 4) or 1 on (K = 6), a lower-rank code costs less."""
    lam = 1e-3
    for K, first in ((4, 2), (6, 1)):
        for L in range(5):
            costs = {c: code_objective(c, K, L, lam).objective for c in CODES}
            low = min(costs["polygon"], costs["cross-polytope"])
            assert (low < costs["collapse"]) == (L >= first), (K, L, costs)


@pytest.mark.parametrize("depth, want_rank", [(0, 5), (2, 3)])
def test_gd_finds_the_collapse_at_depth_zero_and_a_lower_rank_code_beneath_it_deeper(depth, want_rank):
    K, lam = 6, 1e-3
    model = dict(features="deep_linear", depth=depth) if depth else {}
    r = train_ufm(one_hot([1] * K), K, weight_decay=lam, steps=3000, optimizer="gd", device="cpu", seed=3,
                  snapshots=[], **model)
    Z = r.logits()
    objective = r.history[-1]["objective"]
    collapse = code_objective("collapse", K, depth, lam).objective
    assert [numerical_rank(F.numpy()) for F in r.layer_features()] == [want_rank] * (depth + 1)
    # a stationary point's factors are balanced: the objective is the CE of Z plus its least ridge
    ce = float(np.mean(logsumexp(Z, axis=0) - np.diag(Z)))
    assert objective == pytest.approx(ce + schatten_cost(Z, depth, lam), rel=1e-6)
    if depth == 0:
        assert objective == pytest.approx(collapse, rel=1e-8)
    else:  # a point below the collapse: the collapse is not the global minimum at this depth
        assert objective < collapse * (1 - 0.1)
        assert objective == pytest.approx(code_objective("cross-polytope", K, depth, lam).objective, rel=1e-6)


def test_effective_rank_reads_flat_and_spiked_spectra():
    assert effective_rank(np.eye(5)) == pytest.approx(5.0)
    assert effective_rank(np.outer([1.0, 2.0], [3.0, 1.0])) == pytest.approx(1.0)
    assert numerical_rank(np.zeros((3, 3))) == 0
    with pytest.raises(ValueError, match="weight_decay must be > 0"):
        code_objective("collapse", 4, 1, 0.0)
    assert math.isfinite(code_objective("polygon", 7, 3, 1e-2).objective)
