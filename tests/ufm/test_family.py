"""The UFM family (losses x feature models), each against its closed form or theorem (issue 15).

Every prediction is computed independently of the simulator (closed form, scipy, cvxpy or a dense
numpy formula) and compared with what train_ufm converged to, with an explicit tolerance.
"""

import math

import numpy as np
import pytest
import torch

from ufm import theory
from ufm.convex import hull_distances, linear_finite_component, linear_ntp_svm
from ufm.losses import MSE, Batch, CrossEntropy, mixup
from ufm.targets import mixup_pairs, one_hot, random_supports
from ufm.train import train_ufm

COUNTS = [40, 40, 10, 10, 3]
LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS)


def class_means(H: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.stack([H[:, labels == k].mean(1) for k in range(labels.max() + 1)])  # (K, d)


def within_over_between(H: np.ndarray, labels: np.ndarray) -> float:
    """Tr S_W / Tr S_B, written out here (no ufm code)."""
    means = class_means(H, labels)
    sw = ((H - means[labels].T) ** 2).sum() / H.shape[1]
    sb = ((means - means.mean(0)) ** 2).sum() / len(means)
    return sw / sb


def offdiag(G: np.ndarray) -> float:
    return float(np.abs(G - np.diag(np.diag(G))).max())


# ---- losses against dense numpy ----------------------------------------------------------------


def _random_problem(seed=0, bias=True):
    t = random_supports(7, 5, (1, 3), probs="zipf", seed=seed)
    g = torch.Generator().manual_seed(seed)
    W, H = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64) if bias else None
    P = np.zeros((5, 7))
    P[t.tokens, t.contexts] = t.probs
    args = (torch.as_tensor(t.pi), torch.as_tensor(t.tokens), torch.as_tensor(t.contexts), torch.as_tensor(t.probs))
    return t, W, H, b, P, args


def _dense_logits(W, H, b):
    L = W.numpy() @ H.numpy()
    return L + b.numpy()[:, None] if b is not None else L


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


# ---- imbalanced MSE: the orthogonal frame (Dang et al. 2023) -------------------------------------


def test_imbalanced_mse_frame_numbers():
    f = theory.imbalanced_mse_frame(COUNTS, 1e-3)
    # sqrt(n_k) - N lambda with N = 103, written out.
    np.testing.assert_allclose(f.s2, [math.sqrt(40) - 0.103] * 2 + [math.sqrt(10) - 0.103] * 2 + [math.sqrt(3) - 0.103])
    np.testing.assert_allclose(f.s2, [6.221555, 6.221555, 3.059278, 3.059278, 1.629051], atol=5e-7)
    g = theory.imbalanced_mse_frame(COUNTS, 2e-2)
    assert g.collapsed.tolist() == [False, False, False, False, True] and g.s2[-1] == 0.0


@pytest.mark.parametrize("lam", [1e-3, 2e-2])
def test_mse_ufm_converges_to_the_imbalanced_frame(lam):
    r = train_ufm(one_hot(COUNTS), 8, loss="mse", weight_decay=lam, steps=3000, optimizer="gd", device="cpu",
                  snapshots=[3000])
    f = theory.imbalanced_mse_frame(COUNTS, lam)
    G = (r.W @ r.W.T).numpy()
    assert offdiag(G) < 1e-3
    live = ~f.collapsed
    np.testing.assert_allclose(np.diag(G)[live], f.s2[live], rtol=1e-3)
    assert np.all(np.diag(G)[f.collapsed] < 1e-6)  # lambda = 2e-2: the n = 3 class is gone
    means = class_means(r.H.numpy(), LABELS)
    np.testing.assert_allclose(np.diag(means @ means.T)[live], f.feature_gram[live], rtol=1e-3)
    np.testing.assert_allclose(np.diag(r.W.numpy() @ means.T)[live], f.logits[live], rtol=1e-3)


def test_deep_linear_frame_is_the_same_in_every_layer():
    """Dang et al.: NC1 in every layer and the orthogonal frame in every layer; the diagonals come
    from the per-class scalar problem (theory.imbalanced_mse_frame(depth=2), scipy)."""
    r = train_ufm(one_hot(COUNTS), 8, loss="mse", weight_decay=1e-3, features="deep_linear", depth=2,
                  steps=3000, optimizer="gd", device="cpu", snapshots=[3000])
    f = theory.imbalanced_mse_frame(COUNTS, 1e-3, depth=2)
    layers = [h.numpy() for h in r.layer_features()]
    assert len(layers) == 3
    for layer, predicted in zip(layers, f.layer_means):
        means = class_means(layer, LABELS)
        assert within_over_between(layer, LABELS) < 1e-8  # NC1
        assert offdiag(theory.cosine_matrix(means)) < 1e-6  # orthogonal class means
        np.testing.assert_allclose(np.diag(means @ means.T), predicted, rtol=1e-4)
    G = (r.W @ r.W.T).numpy()
    assert offdiag(G) < 1e-6
    np.testing.assert_allclose(np.diag(G), f.s2, rtol=1e-4)
    # Depth shrinks the frame: each extra factor pays its own ridge.
    assert np.all(f.s2 < theory.imbalanced_mse_frame(COUNTS, 1e-3).s2)


def test_depth_zero_scalar_problem_equals_the_closed_form():
    """The scalar problem the deep frame solves, run at depth 0, recovers the closed form."""
    from ufm.theory import _deep_class_logit

    f = theory.imbalanced_mse_frame(COUNTS, 1e-3)
    z = [_deep_class_logit(n, 103, 0, 1e-3, 1e-3) for n in COUNTS]
    np.testing.assert_allclose(z, f.logits, rtol=1e-8)


# ---- normalized features: the softmax code (Jiang et al. 2024) ------------------------------------


# (5, 2), (4, 3) and (6, 3) also run in the softmax-code experiment's quick test.
@pytest.mark.parametrize("K,d", [(8, 2), (6, 3)])
def test_normalized_ufm_reaches_the_softmax_code(K, d):
    r = train_ufm(one_hot([1] * K), d, weight_decay=0.0, features="normalized", radius=2.0, steps=3000,
                  optimizer="gd", device="cpu", snapshots=[3000])
    W = r.words().numpy()
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 2.0, rtol=1e-12)
    rho = hull_distances(W / 2.0).min()  # cvxpy, per class
    assert rho == pytest.approx(theory.softmax_code_rho(K, d), abs=1e-4)
    if K == 2 * d:  # the cross-polytope: antipodal pairs, the rest orthogonal
        cos = np.sort(theory.cosine_matrix(W), axis=1)
        np.testing.assert_allclose(cos[:, 0], -1.0, atol=1e-4)
        np.testing.assert_allclose(cos[:, 1:-1], 0.0, atol=1e-3)


def test_softmax_code_closed_forms():
    assert theory.softmax_code_rho(5, 2) == pytest.approx(1 - math.cos(2 * math.pi / 5))
    # A regular pentagon, its rho measured by cvxpy.
    angles = 2 * np.pi * np.arange(5) / 5
    assert hull_distances(np.c_[np.cos(angles), np.sin(angles)]).min() == pytest.approx(1 - math.cos(2 * math.pi / 5), abs=1e-6)
    assert hull_distances(theory.etf_classifier(4, 3)).min() == pytest.approx(4 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="no closed form"):
        theory.softmax_code_rho(10, 3)


# ---- mixup (Fisher, Meng & Papyan 2024) ----------------------------------------------------------


def test_mixup_features_lie_in_the_span_of_the_two_classifiers():
    K, d = 4, 5
    t, rows = mixup_pairs(K, [0.1, 0.25, 0.4, 0.6, 0.75, 0.9])
    r = train_ufm(t, d, weight_decay=0.0, feature_decay=1e-2, classifier="etf", steps=3000, optimizer="gd",
                  device="cpu", snapshots=[3000])
    W, H = r.W.numpy(), r.H.numpy()
    np.testing.assert_allclose(W, theory.etf_classifier(K, d))  # the classifier stayed fixed
    g = {}
    for j, (i, k, lam) in enumerate(rows):
        i, k = int(i), int(k)
        coef, resid = theory.span_residual(H[:, j], W[[i, k]] if i != k else W[[i]])
        assert resid < 1e-6
        if i != k:
            g.setdefault(round(lam, 6), []).append(coef)
    for lam, coefs in g.items():
        coefs = np.array(coefs)  # h = g(lam) w_i + g(1 - lam) w_k, the same g for every pair
        assert np.ptp(coefs[:, 0]) < 1e-6
        np.testing.assert_allclose(coefs[:, 1], np.mean(g[round(1 - lam, 6)], axis=0)[0], atol=1e-6)
    for i in range(K):  # same-class mixes: one feature whatever lam
        same = H[:, (rows[:, 0] == i) & (rows[:, 1] == i)]
        assert np.abs(same - same[:, :1]).max() < 1e-6 * np.linalg.norm(same[:, 0])


# ---- perturbation (Tirer, Huang & Niles-Weed 2023) -----------------------------------------------


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


# ---- fixed features: GD's implicit bias (Thrampoulidis 2024) ------------------------------------


def test_fixed_h_gd_turns_toward_w_mm_and_fits_the_finite_part():
    t = random_supports(10, 8, (2, 3), seed=0)
    H0 = np.random.default_rng(0).standard_normal((12, t.num_contexts))
    w_mm = linear_ntp_svm(t.support(), H0).solution
    w_star = linear_finite_component(t, H0).solution

    def observe(W, F):
        return dict(cos_wmm=float((W * w_mm).sum() / np.linalg.norm(W) / np.linalg.norm(w_mm)))

    r = train_ufm(t, 12, weight_decay=0.0, features="fixed_h", h0=H0, steps=3000, optimizer="gd", device="cpu",
                  snapshots=8, observe=observe)
    assert np.array_equal(r.H.numpy(), H0)  # H never moved
    cos = r.series("cos_wmm")
    assert np.all(np.diff(cos[1:]) > 0) and cos[-1] > 0.97 and cos[0] < 0.5
    # The in-support logit differences approach log-probability ratios: those of W* H0.
    assert r.history[-1]["pf_dist"] < 5e-3 < r.history[1]["pf_dist"]
    L, L_star = r.W.numpy() @ H0, w_star @ H0
    S = t.support().astype(bool)
    diffs = lambda M: np.concatenate([M[S[:, j], j] - M[S[:, j], j].mean() for j in range(t.num_contexts)])  # noqa: E731
    np.testing.assert_allclose(diffs(L), diffs(L_star), atol=5e-3)


# ---- bad input -------------------------------------------------------------------------------------


T = one_hot([2, 2])


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
        train_ufm(T, 2, weight_decay=1e-3, steps=1, device="cpu", **kwargs)


def test_etf_classifier_needs_room():
    with pytest.raises(ValueError, match="needs d >= K - 1 = 4, got d = 3"):
        theory.etf_classifier(5, 3)


def test_result_dict_records_the_family_and_round_trips_json():
    import json

    r = train_ufm(one_hot([2, 2]), 3, loss="mse", weight_decay=1e-3, features="deep_linear", depth=1, steps=5,
                  device="cpu", snapshots=[5])
    d = json.loads(json.dumps(r.to_dict()))
    assert d["config"]["loss"] == "mse" and d["config"]["features"] == "deep_linear" and d["config"]["depth"] == 1
    assert d["targets"]["num_contexts"] == 4 and [h["step"] for h in d["history"]] == [0, 5]
    assert d["seconds"] == r.seconds > 0


def test_penalty_of_a_minibatch_scales_the_per_context_terms():
    """(lambda_W/2)||W||^2 + (m/B)[(lambda_H/2)||H_b||^2 + (beta/2)||H_b - H0_b||^2], written out."""
    from ufm.classifiers import LearnedClassifier, Words
    from ufm.features import Features, Perturbed
    from ufm.model import UFMModel

    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(3, 6, generator=g, dtype=torch.float64)
    W0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    model = UFMModel(Words(LearnedClassifier(), W0), Features(Perturbed(0.7, h0), h0.clone(), []))
    with torch.no_grad():
        model.H.add_(torch.randn(3, 6, generator=g, dtype=torch.float64))  # move H off its anchor
    batch = torch.tensor([1, 4])
    W, H = model.W.detach().numpy(), model.H.detach().numpy()
    want = 0.5 * 0.1 * (W ** 2).sum() + 3.0 * (0.5 * 0.2 * (H[:, [1, 4]] ** 2).sum()
                                               + 0.5 * 0.7 * ((H - h0.numpy())[:, [1, 4]] ** 2).sum())
    with torch.no_grad():
        got = float(model.penalty(0.1, 0.2, batch, scale=3.0))
    assert got == pytest.approx(want, rel=1e-12)
