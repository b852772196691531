"""ufm.smoothing: the smoothed CE's closed-form minimizer against the simulator and autograd."""

import math

import numpy as np
import pytest
import torch

from ufm.losses import Batch, CrossEntropy
from ufm.model import TargetTensors
from ufm.smoothing import nc1_rate, smoothed_etf, smoothed_etf_factors, within_class_curvature
from ufm.targets import one_hot
from ufm.train import train_ufm


@pytest.mark.parametrize("eps, lam_w, lam_h, dim", [(0.0, 5e-3, 5e-3, 3), (0.1, 5e-3, 5e-3, 3),
                                                     (0.2, 2e-3, 1e-2, 5)])
def test_the_closed_form_minimizer_is_what_gd_converges_to(eps, lam_w, lam_h, dim):
    K, n = 4, 5
    opt = smoothed_etf(K, n, lam_w, lam_h, eps)
    r = train_ufm(one_hot([n] * K), dim, weight_decay=lam_w, feature_decay=lam_h, label_smoothing=eps,
                  steps=600, optimizer="gd", device="cpu", seed=1, snapshots=[])
    W, H = r.W.numpy(), r.H.numpy()
    L = W @ H  # (K, N)
    labels = np.repeat(np.arange(K), n)
    own = L[labels, np.arange(K * n)]
    others = np.where(np.eye(K, dtype=bool)[:, labels], -np.inf, L).max(0)
    assert r.history[-1]["objective"] == pytest.approx(opt.objective, rel=1e-9)
    np.testing.assert_allclose(own - others, opt.margin, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(H, axis=0), opt.feature_norm, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), opt.classifier_norm, rtol=1e-6)


def test_smoothing_lowers_the_margin_and_the_norms():
    rows = [smoothed_etf(5, 4, 1e-3, eps=e) for e in (0.0, 0.05, 0.1, 0.3)]
    for a, b in zip(rows, rows[1:]):
        assert b.margin < a.margin and b.feature_norm < a.feature_norm and b.classifier_norm < a.classifier_norm
    # The smoothed target's own log-odds, log((1 - eps + eps/K) / (eps/K)), bound the margin from above.
    for r in rows[1:]:
        assert r.margin < math.log((1 - r.eps + r.eps / 5) / (r.eps / 5))


def test_too_much_regularization_gives_the_zero_minimizer():
    opt = smoothed_etf(3, 2, 0.3, eps=0.1)
    assert opt.collapsed_to_zero and opt.objective == pytest.approx(math.log(3))
    r = train_ufm(one_hot([2] * 3), 2, weight_decay=0.3, label_smoothing=0.1, steps=300, optimizer="gd",
                  device="cpu", seed=0, snapshots=[])
    assert r.history[-1]["objective"] == pytest.approx(math.log(3), rel=1e-9)
    assert float(r.W.abs().max()) < 1e-4 and float(r.H.abs().max()) < 1e-4


@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_the_within_class_block_equals_the_autograd_hessian_there(eps):
    K, n, lam = 3, 2, 1e-2
    opt = smoothed_etf(K, n, lam, eps=eps)
    targets, d, N = one_hot([n] * K), K - 1, K * n
    W, H = smoothed_etf_factors(opt, d)
    data = TargetTensors(targets, torch.device("cpu"), torch.float64)
    sel = data.select(None)

    def objective(h):  # H alone, W at the minimizer
        Ht = h.reshape(d, N)
        return CrossEntropy(eps)(torch.as_tensor(W), Ht, None, Batch(*sel), chunk_entries=None) \
            + lam / 2 * Ht.square().sum()

    hess = torch.autograd.functional.hessian(objective, torch.as_tensor(H.ravel())).numpy()  # (d N, d N)
    # Within-class directions: column j moves by v, its class partner by -v (n = 2).
    basis = []
    for c in range(K):
        for axis in range(d):
            x = np.zeros((d, N))
            x[axis, c * n], x[axis, c * n + 1] = 1, -1
            basis.append(x.ravel() / math.sqrt(2))
    Q = np.array(basis).T  # (d N, K d), orthonormal columns
    got = np.sort(np.linalg.eigvalsh(Q.T @ hess @ Q))
    np.testing.assert_allclose(got, np.sort(np.tile(within_class_curvature(opt), K)), rtol=1e-10)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="eps must be in"):
        smoothed_etf(4, 2, 1e-3, eps=1.0)
    with pytest.raises(ValueError, match="weight_decay and feature_decay > 0"):
        smoothed_etf(4, 2, 0.0)
    with pytest.raises(ValueError, match="K >= 2"):
        smoothed_etf(1, 2, 1e-3)
    with pytest.raises(ValueError, match="must lie in"):
        nc1_rate(smoothed_etf(4, 2, 1e-3), lr=1e6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_the_numerical_etf_minimizer_agrees_with_the_closed_form(eps):
    from ufm.smoothing import etf_minimizer

    K = 5
    exact = smoothed_etf(K, 3, 2e-3, 4e-3, eps)
    numeric = etf_minimizer(K, 3, 2e-3, 4e-3,
                            lambda m: math.log1p((K - 1) * math.exp(-m)) + eps * (K - 1) / K * m)
    for key in ("margin", "feature_norm", "classifier_norm", "objective"):
        assert getattr(numeric, key) == pytest.approx(getattr(exact, key), rel=1e-7), key
    zero = etf_minimizer(3, 2, 0.3, None, lambda m: math.log1p(2 * math.exp(-m)) + 0.1 * 2 / 3 * m)
    assert zero.collapsed_to_zero and zero.objective == pytest.approx(math.log(3))
