"""ufm.fit: the one training loop of the UFM family, and train_ufm over it."""

import json
import math

import numpy as np
import pytest

from tests.ufm.pin_runs import PINNED, cases, run_case
from ufm.convex import ntp_svm_result
from ufm.targets import random_supports
from ufm.theory import subspace_collapse
from ufm.train import TrainConfig, train_ufm


def _close(got, want, path=""):
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        if math.isnan(want):
            assert math.isnan(got), path
        else:
            assert got == pytest.approx(want, rel=1e-10, abs=1e-12), path
    else:
        assert got == want, path


@pytest.mark.parametrize("name", sorted(cases()))
def test_seeded_runs_equal_the_runs_pinned_before_the_seam(name):
    targets, kwargs = cases()[name]
    _close(run_case(targets, kwargs), json.loads(PINNED.read_text())[name], name)


def test_train_ufm_takes_family_objects_and_records_them():
    from ufm.features import DeepLinear
    from ufm.fit import FitOptions
    from ufm.losses import CrossEntropy, Focal
    from ufm.targets import one_hot
    from ufm.train import TrainConfig, train_ufm

    t = one_hot([2, 2, 2])
    a = train_ufm(t, 3, weight_decay=1e-3, steps=20, loss=CrossEntropy(0.1), features=DeepLinear(2),
                  device="cpu", seed=4, snapshots=[20])
    b = train_ufm(t, 3, weight_decay=1e-3, steps=20, label_smoothing=0.1, features="deep_linear", depth=2,
                  device="cpu", seed=4, snapshots=[20])
    assert a.history == b.history  # the same run, named by objects or by keywords
    assert type(a.config) is FitOptions and isinstance(b.config, TrainConfig)
    assert a.family["loss"] == {"name": "ce", "label_smoothing": 0.1} == b.family["loss"]
    assert a.family["features"] == {"name": "deep_linear", "depth": 2, "layer_init": "identity"}
    with pytest.raises(ValueError, match="label_smoothing belong"):
        train_ufm(t, 3, weight_decay=1e-3, steps=1, loss=Focal(), label_smoothing=0.1, device="cpu")
    with pytest.raises(ValueError, match="depth belong"):
        train_ufm(t, 3, weight_decay=1e-3, steps=1, features=DeepLinear(1), depth=2, device="cpu")


def test_training_history_records_the_measure_and_its_unprojected_twin(shared_language):
    r = train_ufm(shared_language, 16, weight_decay=1e-3, steps=300, device="cpu", snapshots=[300],
                  track_subspace=True)
    last = r.history[-1]
    got = subspace_collapse(r.W.numpy(), r.H.numpy(), shared_language)
    assert last["subspace_ratio"] == got.ratio and last["subspace_ratio_unprojected"] == got.unprojected
    assert last["subspace_rank"] == got.rank <= 16


def test_default_gradient_descent_step_converges():
    """lr 20 and 10 diverge on the V=8, m=10 example without weight decay; the line search does not."""
    t = random_supports(10, 8, (1, 3), probs="zipf", seed=1)
    for lr in (20.0, 10.0):
        with pytest.raises(FloatingPointError, match="training diverged"):
            train_ufm(t, 8, weight_decay=0.0, steps=3000, optimizer="gd", lr=lr, device="cpu", snapshots=2)
    r = train_ufm(t, 8, weight_decay=0.0, steps=3000, optimizer="gd", device="cpu", snapshots=30)
    objective = r.series("objective")
    assert r.config.lr is None
    assert np.all(np.diff(objective) <= 1e-15)  # Armijo: every step decreases the objective
    assert r.history[-1]["ce_minus_entropy"] < 1e-3
    with pytest.raises(ValueError, match="lr None .* is for optimizer 'gd' only"):
        TrainConfig(dim=8, weight_decay=0.0, steps=3, lr=None, optimizer="adam")


def test_default_adam_reaches_the_etf_and_has_no_excursions_after_convergence():
    """The acceptance case (K=10, 5 contexts each, d=16, weight decay 1e-3, default optimizer) reaches
    a simplex ETF; plain Adam took the ETF error from 6e-15 back to 2e-3 between steps 7k and 14k, and
    the default (AMSGrad) never comes back once converged. One 20,000-step run checks both."""
    from ufm.targets import one_hot
    from ufm.theory import gram_cosine, simplex_etf_gram

    r = train_ufm(one_hot([5] * 10), 16, weight_decay=1e-3, steps=20_000, device="cpu", snapshots=30,
                  track_metrics=True)
    late = [h["metrics"]["etf_error"] for h in r.history if h["step"] >= 1500]
    assert max(late) < 1e-9
    G, E = (r.W @ r.W.T).numpy(), simplex_etf_gram(10)
    assert gram_cosine(G, E) == pytest.approx(1.0, abs=1e-3)
    assert np.linalg.norm(G / np.linalg.norm(G) - E / np.linalg.norm(E)) < 1e-3
    m = r.metrics()
    assert m.etf_error < 1e-3 and m.nc1_trace_ratio < 1e-3 and m.dual_error < 1e-3


@pytest.mark.slow
def test_default_adam_keeps_the_sparse_part_converged(shared_language):
    """||P_F L - L_in|| went 0.0085 -> 0.35 -> 0.0074 under plain Adam on the subspace language.
    Slow (20,000 steps): by default the ETF run above guards the same optimizer against excursions."""
    r = train_ufm(shared_language, 32, weight_decay=1e-5, steps=20_000, device="cpu", snapshots=25)
    pf = r.series("pf_dist")
    settled = pf[r.steps() >= 300]
    assert settled.max() < 1.5 * pf[-1] and pf[-1] < 0.008


def test_history_diagnostics_equal_numpy_from_the_logits(shared_language):
    """cos_mm, mm_dist, pf_dist and CE - H of the training history, recomputed from L = W H with
    dense numpy (no code shared with the monitor's chunked, support-only computations)."""
    l_mm = ntp_svm_result(shared_language.support()).solution
    r = train_ufm(shared_language, 16, weight_decay=1e-4, steps=400, device="cpu", snapshots=[400], l_mm=l_mm)
    last = r.history[-1]
    L = r.W.numpy() @ r.H.numpy()  # (V, m)
    S, P = shared_language.support(), shared_language.dense()
    k = S.sum(0)
    pf = np.where(S > 0, L - (L * S).sum(0) / k, 0.0)  # P_F(L)
    logp = np.where(P > 0, np.log(np.where(P > 0, P, 1.0)), 0.0)
    l_in = np.where(S > 0, logp - (logp * S).sum(0) / k, 0.0)
    perp = L - pf
    assert last["pf_dist"] == pytest.approx(np.linalg.norm(pf - l_in), rel=1e-10)
    assert last["cos_mm"] == pytest.approx((perp * l_mm).sum() / np.linalg.norm(perp) / np.linalg.norm(l_mm), rel=1e-10)
    unit = L / np.linalg.norm(L) - l_mm / np.linalg.norm(l_mm)
    assert last["mm_dist"] == pytest.approx(np.linalg.norm(unit), rel=1e-8)
    lse = np.log(np.exp(L - L.max(0)).sum(0)) + L.max(0)
    ce = float(shared_language.pi @ (lse - (P * L).sum(0)))
    assert last["ce_minus_entropy"] == pytest.approx(ce - shared_language.entropy, rel=1e-9)


@pytest.mark.parametrize("family", [dict(batch_size=4, mixup_alpha=0.5), dict(optimizer="gd")])
def test_an_interrupted_run_resumes_to_the_uninterrupted_one(tmp_path, monkeypatch, family):
    """A run killed in its 26th step, checkpointed every 10, resumes from step 20 with the minibatch and
    mixup generators, the optimizer and the line search's step restored: the same factors and history."""
    import torch

    import ufm.fit as fit_module
    from ufm.targets import random_supports
    from ufm.train import train_ufm

    t = random_supports(12, 6, (1, 3), probs="zipf", seed=2)
    run = dict(weight_decay=1e-3, steps=40, device="cpu", seed=3, snapshots=[0, 10, 20, 30, 40], **family)
    whole = train_ufm(t, 4, **run)
    ckpt, real, calls = tmp_path / "run.ckpt", fit_module._step, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 26:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train_ufm(t, 4, checkpoint=ckpt, checkpoint_every=10, **run)
    monkeypatch.setattr(fit_module, "_step", real)
    resumed = train_ufm(t, 4, checkpoint=ckpt, checkpoint_every=10, **run)
    assert resumed.resumed_from == 20 and whole.resumed_from is None
    assert torch.equal(resumed.W, whole.W) and torch.equal(resumed.H, whole.H)
    assert resumed.history == whole.history
    with pytest.raises(ValueError, match="another configuration or data"):
        train_ufm(t, 4, checkpoint=ckpt, **dict(run, weight_decay=2e-3))
