"""ufm.perturbation and the perturbed feature model (Tirer, Huang & Niles-Weed 2023), in the paper's units."""

import math

import numpy as np
import pytest

from tests.ufm.reference import within_over_between
from ufm.targets import one_hot
from ufm.train import train_ufm


def _anchor(K=4, n=10, d=8, noise=0.8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(K), n)
    return labels, rng.standard_normal((d, K))[:, labels] + noise * rng.standard_normal((d, K * n))


def test_perturbed_mse_optimum_is_stationary_and_less_variable_than_h0():
    labels, H0 = _anchor()
    N, beta, lam = len(labels), 1e-2, 1e-3
    r = train_ufm(one_hot([10] * 4), 8, loss="mse", weight_decay=lam, features="perturbed", beta=beta, h0=H0,
                  steps=3000, optimizer="gd", device="cpu", snapshots=[3000])
    W, H = r.W.numpy(), r.H.numpy()
    # For the trained W, the optimal H in closed form: (W^T W / N + (lambda_H + beta) I)^-1 (W^T Y / N + beta H0).
    Y = np.eye(4)[:, labels]
    H_star = np.linalg.solve(W.T @ W / N + (lam + beta) * np.eye(8), W.T @ Y / N + beta * H0)
    np.testing.assert_allclose(H, H_star, atol=1e-4)
    assert within_over_between(H, labels) < within_over_between(H0, labels)


@pytest.mark.parametrize("beta", [100.0, 200.0, 400.0])
def test_theorem_4_2_response_blocks_from_the_exact_jacobian(beta):
    """Tirer et al.'s Theorem 4.2 (paper units, K = 4, n = 10, d = 10, lambda_W = 0.5, lambda_H = 1):
    the blocks of dH/dH0 at a collapsed minimizer, from the toolkit's objective by autograd, against
    the closed forms, within the theorem's O(1/beta^2) (the constant measured: ~2; allowed: 3)."""
    from ufm.perturbation import anchor_response, block_singular_values, collapsed_minimizer, theorem_4_2

    lam = dict(lam_w=0.5, lam_h=1.0)
    got = block_singular_values(anchor_response(4, 10, 10, beta=beta, **lam), 4)
    want = theorem_4_2(beta=beta, **lam)
    assert want.same_min == pytest.approx(1 - math.sqrt(2) / beta) and want.cross_max == pytest.approx(
        2 * (1 - math.sqrt(0.5)) / beta)
    for key in ("same_max", "same_min", "cross_max"):
        assert abs(getattr(got, key) - getattr(want, key)) < 3 / beta ** 2, key
    assert got.cross_second < 1e-12 * got.cross_max  # the cross-class blocks have rank 1
    # The anchor is a minimizer: the collapsed frame has s t = 1 - sqrt(lambda_W lambda_H).
    W, H = collapsed_minimizer(4, 10, 10, **lam)
    assert (W @ H)[0, 0] == pytest.approx(1 - math.sqrt(0.5), rel=1e-14)


def test_theorem_4_2_error_shrinks_as_one_over_beta_squared():
    from ufm.perturbation import anchor_response, block_singular_values, theorem_4_2

    def error(beta):
        got = block_singular_values(anchor_response(4, 10, 10, beta=beta, lam_w=0.5, lam_h=1.0), 4)
        want = theorem_4_2(beta=beta, lam_w=0.5, lam_h=1.0)
        return abs(got.same_min - want.same_min), abs(got.cross_max - want.cross_max)

    for small, large in zip(error(100.0), error(200.0)):
        assert 3.5 < small / large < 4.5  # doubling beta quarters the error


def test_corollary_3_2_large_beta_reduces_within_class_variability():
    """At large beta (paper units, lambda_W = 0.05, lambda_H = 0.5) the optimized features are less
    variable within classes than a random H0, and approach it as beta grows."""
    from ufm.perturbation import toolkit_units

    labels, H0 = _anchor(d=10)
    ratios = []
    for beta in (10.0, 100.0, 1000.0):
        units = toolkit_units(4, 10, lam_w=0.05, lam_h=0.5, beta=beta)
        assert units["beta"] == beta / 40 and units["weight_decay"] == 0.05 / 4 and units["feature_decay"] == 0.5 / 40
        r = train_ufm(one_hot([10] * 4), 10, loss="mse", features="perturbed", h0=H0, steps=1000, optimizer="gd",
                      device="cpu", snapshots=[], **units)
        ratios.append(within_over_between(r.H.numpy(), labels) / within_over_between(H0, labels))
    assert all(r < 1 for r in ratios) and ratios == sorted(ratios) and ratios[-1] > 0.999
