"""ufm.losses: the focal loss (Zhou et al. 2022), a family member added through the seam."""

import numpy as np
import pytest
import torch

from ufm.fit import FitOptions, fit
from ufm.losses import Batch, CrossEntropy, Focal, MSE, mixup
from ufm.metrics import collapse_metrics
from ufm.targets import one_hot, random_supports
from ufm.train import train_ufm


def test_focal_loss_equals_its_dense_formula_and_gamma_zero_is_the_ce():
    t = random_supports(7, 5, (1, 3), seed=2)
    g = torch.Generator().manual_seed(0)
    W, H, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((5, 3), (3, 7), (5,)))
    batch = Batch(*(torch.as_tensor(a) for a in (t.pi, t.tokens, t.contexts, t.probs)))
    L = (W @ H).numpy() + b.numpy()[:, None]
    s = np.exp(L - L.max(0)) / np.exp(L - L.max(0)).sum(0)
    P = t.dense()
    for gamma in (0.0, 1.0, 2.5):
        want = -(t.pi * (P * (1 - s) ** gamma * np.log(s)).sum(0)).sum()
        assert float(Focal(gamma)(W, H, b, batch, chunk_entries=None)) == pytest.approx(want, rel=1e-12)
    ce = -(t.pi * (P * np.log(s)).sum(0)).sum()
    assert float(Focal(0.0)(W, H, b, batch, chunk_entries=None)) == pytest.approx(ce, rel=1e-12)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_focal_loss_reaches_the_etf_with_the_characterized_norms(gamma):
    """Balanced one-hot, weight decay: NC1-NC3 below 1e-6, and the margin, norms and objective of
    the simplex ETF that minimizes one sample's focal loss plus the cheapest norms' ridge."""
    K, n, lam = 4, 5, 5e-3
    r = fit(one_hot([n] * K), FitOptions(dim=K - 1, weight_decay=lam, steps=800, lr=None, optimizer="gd"),
            loss=Focal(gamma), device="cpu", snapshots=[])
    m = collapse_metrics(r.class_stats(), r.words())
    assert m.nc1_trace_ratio < 1e-6 and m.etf_error < 1e-6 and m.dual_error < 1e-6
    opt = Focal(gamma).etf_optimum(K, n, lam)
    W, H = r.W.numpy(), r.H.numpy()
    L = W @ H
    labels = np.repeat(np.arange(K), n)
    margin = L[labels, np.arange(K * n)] - np.where(np.eye(K, dtype=bool)[:, labels], -np.inf, L).max(0)
    np.testing.assert_allclose(margin, opt.margin, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(H, axis=0), opt.feature_norm, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), opt.classifier_norm, rtol=1e-6)
    assert r.history[-1]["objective"] == pytest.approx(opt.objective, rel=1e-9)


def test_focal_loss_by_name_and_its_bad_gamma():
    r = train_ufm(one_hot([2, 2]), 2, weight_decay=1e-3, steps=3, loss="focal", device="cpu", snapshots=[3])
    assert r.family["loss"] == {"name": "focal", "gamma": 2.0}
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        Focal(-1.0)


def _dense_logits(W, H, b):
    L = W.numpy() @ H.numpy()
    return L + b.numpy()[:, None] if b is not None else L


def _random_problem(seed=0, bias=True):
    t = random_supports(7, 5, (1, 3), probs="zipf", seed=seed)
    g = torch.Generator().manual_seed(seed)
    W, H = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64) if bias else None
    P = np.zeros((5, 7))
    P[t.tokens, t.contexts] = t.probs
    args = (torch.as_tensor(t.pi), torch.as_tensor(t.tokens), torch.as_tensor(t.contexts), torch.as_tensor(t.probs))
    return t, W, H, b, P, args


@pytest.mark.parametrize("bias", [False, True])
def test_mse_equals_the_dense_squared_error(bias):
    t, W, H, b, P, args = _random_problem(bias=bias)
    L = _dense_logits(W, H, b)
    want = 0.5 * (t.pi * ((L - P) ** 2).sum(0)).sum()
    assert float(MSE()(W, H, b, Batch(*args), chunk_entries=None)) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_label_smoothing_equals_the_ce_to_the_smoothed_target(eps):
    t, W, H, b, P, args = _random_problem()
    L = _dense_logits(W, H, b)
    logq = L - np.log(np.exp(L).sum(0))
    target = (1 - eps) * P + eps / P.shape[0]
    want = -(t.pi * (target * logq).sum(0)).sum()
    got = float(CrossEntropy(eps)(W, H, b, Batch(*args), chunk_entries=None))
    assert got == pytest.approx(want, rel=1e-12)


def test_mixup_mixes_features_and_targets_of_the_same_pairs():
    t, W, H, b, P, args = _random_problem(bias=False)
    rng = np.random.default_rng(5)
    mixed, (pi, tok, col, prob) = mixup(H, Batch(*args), alpha=0.4, rng=rng)
    again = np.random.default_rng(5)  # the same draws, redone by hand
    perm, lam = again.permutation(7), again.beta(0.4, 0.4, size=7)
    np.testing.assert_allclose(mixed.numpy(), H.numpy() * lam + H.numpy()[:, perm] * (1 - lam), rtol=1e-13)
    target = np.zeros((5, 7))
    np.add.at(target, (tok.numpy(), col.numpy()), prob.numpy())
    np.testing.assert_allclose(target, P * lam + P[:, perm] * (1 - lam), atol=1e-14)
    L = W.numpy() @ mixed.numpy()
    want = -(t.pi * (target * (L - np.log(np.exp(L).sum(0)))).sum(0)).sum()
    got = float(CrossEntropy()(W, mixed, None, Batch(pi, tok, col, prob), chunk_entries=None))
    assert got == pytest.approx(want, rel=1e-12)


def test_mixup_training_runs_and_is_seeded():
    a = train_ufm(one_hot([3] * 4), 4, weight_decay=1e-3, steps=200, mixup_alpha=1.0, device="cpu", snapshots=[200])
    b = train_ufm(one_hot([3] * 4), 4, weight_decay=1e-3, steps=200, mixup_alpha=1.0, device="cpu", snapshots=[200])
    c = train_ufm(one_hot([3] * 4), 4, weight_decay=1e-3, steps=200, device="cpu", snapshots=[200])
    assert torch.equal(a.W, b.W) and not torch.allclose(a.W, c.W, atol=1e-3)
    assert a.history[-1]["ce"] < a.history[0]["ce"]
