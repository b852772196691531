"""train_ufm's options, each against what it promises (issue 16, item 5)."""

import math

import numpy as np
import pytest
import torch

from ufm.fit import _lr_at
from ufm.targets import one_hot, random_supports
from ufm.train import TrainConfig, train_ufm

T = random_supports(12, 6, (1, 3), probs="zipf", seed=2)


def test_bias_is_learned_and_enters_the_logits():
    r = train_ufm(T, 4, weight_decay=1e-3, steps=300, bias=True, device="cpu", snapshots=[300])
    assert r.bias is not None and float(r.bias.abs().max()) > 1e-3
    np.testing.assert_allclose(r.logits(), (r.W @ r.H).numpy() + r.bias.numpy()[:, None], rtol=1e-12)
    assert r.history[-1]["ce_minus_entropy"] < r.history[0]["ce_minus_entropy"]


def test_float32_follows_float64():
    a = train_ufm(T, 4, weight_decay=1e-3, steps=3000, device="cpu", snapshots=[3000])
    b = train_ufm(T, 4, weight_decay=1e-3, steps=3000, dtype="float32", device="cpu", snapshots=[3000])
    assert b.W.dtype == torch.float32 and a.W.dtype == torch.float64
    # Both converge to the same optimum; float32 agrees to its precision there.
    assert b.history[-1]["objective"] == pytest.approx(a.history[-1]["objective"], rel=1e-5)


def test_layernorm_alone_normalizes_the_features_and_leaves_h_unregularized():
    r = train_ufm(T, 4, weight_decay=1e-3, steps=200, layernorm=True, device="cpu", snapshots=[200])
    F = r.features().numpy()
    np.testing.assert_allclose(F.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose((F ** 2).mean(0), 1.0, rtol=1e-3)  # LN without affine: norm sqrt(d)
    last = r.history[-1]
    assert last["objective"] == pytest.approx(last["ce"] + 0.5e-3 * last["w_norm"] ** 2, rel=1e-12)


def test_init_scale_sets_the_starting_norms():
    small = train_ufm(T, 4, weight_decay=1e-3, steps=0, init_scale=1e-3, device="cpu", snapshots=[0])
    large = train_ufm(T, 4, weight_decay=1e-3, steps=0, init_scale=1.0, device="cpu", snapshots=[0])
    ratio = large.history[0]["w_norm"] / small.history[0]["w_norm"]
    assert ratio == pytest.approx(1000.0, rel=1e-12)  # same seed, scaled draws
    # Near-zero logits: the softmax is uniform, CE = log V.
    assert small.history[0]["ce_minus_entropy"] == pytest.approx(np.log(6) - T.entropy, abs=1e-4)


def test_minibatches_reach_the_full_batch_optimum():
    t = one_hot([4] * 5)
    full = train_ufm(t, 8, weight_decay=5e-3, steps=3000, device="cpu", snapshots=[3000])
    mini = train_ufm(t, 8, weight_decay=5e-3, steps=3000, batch_size=10, device="cpu", snapshots=[3000])
    assert mini.history[-1]["objective"] == pytest.approx(full.history[-1]["objective"], rel=1e-2)


def test_learning_rate_schedules():
    """Cosine from lr down to lr * 1e-3 at the last step, by the formula; constant stays at lr."""
    cosine = TrainConfig(dim=2, weight_decay=0.0, steps=5, lr=0.1)
    want = [0.1 * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * s / 4))) for s in range(5)]
    assert [_lr_at(cosine, s) for s in range(5)] == pytest.approx(want, rel=1e-12)
    assert _lr_at(cosine, 0) == pytest.approx(0.1) and _lr_at(cosine, 4) == pytest.approx(1e-4)
    assert [_lr_at(TrainConfig(dim=2, weight_decay=0.0, steps=2, lr=0.1), s) for s in range(2)] == pytest.approx([0.1, 1e-4])
    assert {_lr_at(TrainConfig(dim=2, weight_decay=0.0, steps=5, lr=0.1, lr_schedule="constant"), s) for s in range(5)} == {0.1}
    r = train_ufm(one_hot([2, 2]), 2, weight_decay=1e-3, steps=4, snapshots=[0, 4])  # device "auto"
    assert r.steps().dtype == np.int64 and list(r.steps()) == [0, 4]


@pytest.mark.parametrize("normalize", ["features", "words", "both"])
def test_normalized_ufm_puts_on_the_sphere_only_what_it_names(normalize):
    r = train_ufm(one_hot([3, 3, 3]), 4, weight_decay=1e-3, steps=50, device="cpu", features="normalized",
                  normalize=normalize, radius=2.0, snapshots=[])
    model = r.model
    h = model.features().detach()  # (d, m) the features that meet W
    w = model.words().detach()  # (V, d)
    on_sphere = lambda norms: bool(torch.allclose(norms, torch.full_like(norms, 2.0), rtol=1e-9))  # noqa: E731
    assert on_sphere(h.norm(dim=0)) == (normalize in ("features", "both"))
    assert on_sphere(w.norm(dim=1)) == (normalize in ("words", "both"))


def test_mse_with_a_bias_trains_the_objective_written_out():
    """The recorded objective of an MSE run with a bias equals the formula computed from the trained
    factors: sum_j pi_j (1/2)||W h_j + b - p_j||^2 + (lambda/2)(||W||^2 + ||H||^2)."""
    lam = 1e-3
    r = train_ufm(T, 4, weight_decay=lam, steps=200, loss="mse", bias=True, device="cpu", snapshots=[200])
    W, H, b = r.W.numpy(), r.H.numpy(), r.bias.numpy()
    assert np.abs(b).max() > 1e-3  # the bias is used, so its cross term 2 b^T W h matters
    residual = W @ H + b[:, None] - T.dense()
    want = 0.5 * (T.pi * (residual ** 2).sum(0)).sum() + 0.5 * lam * ((W ** 2).sum() + (H ** 2).sum())
    assert r.history[-1]["objective"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("options, match", [
    (dict(snapshots=-2), "snapshots must be an integer >= 0, got -2"),
    (dict(snapshots=[5, 999]), r"snapshot step\(s\) \[999\] come after the last step \(10\)"),
    (dict(chunk_entries=0), r"chunk_entries \(None for dense logits\) must be an integer >= 1, got 0"),
    (dict(seed=2 ** 70), r"seed must be an integer in \[0, 2\*\*63\)"),
    (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*63\)"),
    (dict(l_mm=np.full((6, 12), np.nan)), r"l_mm holds 72 NaN or Inf value\(s\)"),
])
def test_bad_training_options_are_refused_before_training(options, match):
    with pytest.raises(ValueError, match=match):
        train_ufm(T, 4, weight_decay=1e-3, steps=10, device="cpu", **options)


def test_a_run_that_cannot_fit_in_memory_is_refused_with_its_estimate():
    from ufm.fit import TRAIN_MEMORY_FRACTION, training_bytes

    config = TrainConfig(dim=100_000_000, weight_decay=1e-3, steps=1, lr=0.05)
    need = training_bytes(config, one_hot([5] * 10))
    # W (10 x 1e8) and H (1e8 x 50), five float64 copies each: 2.4e11 bytes at least.
    assert need >= 5 * 8 * (10 + 50) * 100_000_000
    with pytest.raises(ValueError, match=r"needs about .* GiB, more than 80% of the .* GiB free on cpu; lower dim"):
        train_ufm(one_hot([5] * 10), 100_000_000, weight_decay=1e-3, steps=1, device="cpu")
    assert TRAIN_MEMORY_FRACTION == 0.8
    # An ordinary run's estimate stays a small multiple of its parameters.
    small = TrainConfig(dim=4, weight_decay=1e-3, steps=1, lr=0.05)
    assert training_bytes(small, T) < 100 * 8 * (6 * 4 + 4 * 12)


TWO_CLASSES = one_hot([2, 2])


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss="hinge"), "loss must be one of ce, mse(, [a-z_]+)*, got 'hinge'"),
    (dict(features="resnet"), "features must be one of free, deep_linear, perturbed, normalized, fixed_h(, [a-z_]+)*, got 'resnet'"),
    (dict(loss="mse", label_smoothing=0.1), "undefined combination: label smoothing"),
    (dict(loss="mse", mixup_alpha=1.0), "undefined combination: mixup"),
    (dict(features="normalized", layernorm=True), "undefined combination: layernorm is an option of features 'free'"),
    (dict(features="deep_linear"), "deep_linear' needs depth >= 1"),
    (dict(depth=2), "depth is the deep_linear, fixed_h(, [a-z_]+)* models', not 'free'"),
    (dict(features="deep_linear", depth=1, layer_init="zeros"), "layer_init must be 'identity' or 'random'"),
    (dict(features="perturbed", beta=-1.0, h0=np.zeros((2, 4))), "beta must be >= 0, got -1.0"),
    (dict(features="normalized", radius=0.0), "radius must be positive, got 0.0"),
    (dict(features="normalized", radius=-2.0), "radius must be positive"),
    (dict(features="perturbed", beta=1.0), "features 'perturbed' needs h0"),
    (dict(features="fixed_h"), "features 'fixed_h' needs h0"),
    (dict(features="fixed_h", h0=np.zeros((2, 3))), r"h0 must have shape \(d, m\) = \(2, 4\)"),
    (dict(features="fixed_h", h0=np.zeros((2, 4)), classifier="etf"), "nothing to train"),
    (dict(features="fixed_h", h0=np.full((2, 4), np.nan)), "h0 contains 8 NaN or Inf"),
    (dict(classifier=np.zeros((3, 2))), r"classifier must have shape \(V, d\) = \(2, 2\)"),
    (dict(classifier="orthogonal"), "classifier must be a \\(V, d\\) array or 'etf'"),
    (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\)"),
    (dict(mixup_alpha=0.0), "mixup_alpha must be positive"),
])
def test_bad_family_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_ufm(TWO_CLASSES, 2, weight_decay=1e-3, steps=1, device="cpu", **kwargs)


def test_result_dict_records_the_family_and_round_trips_json():
    import json

    r = train_ufm(one_hot([2, 2]), 3, loss="mse", weight_decay=1e-3, features="deep_linear", depth=1, steps=5,
                  device="cpu", snapshots=[5])
    d = json.loads(json.dumps(r.to_dict()))
    assert d["config"]["loss"] == "mse" and d["config"]["features"] == "deep_linear" and d["config"]["depth"] == 1
    assert d["targets"]["num_contexts"] == 4 and [h["step"] for h in d["history"]] == [0, 5]
    assert d["seconds"] == r.seconds > 0
