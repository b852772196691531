"""Theory checks: each prediction computed independently (closed form or cvxpy) and compared with
what the simulator converged to, with the tolerance stated per test."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tests.conftest import requires_cuda
from tests.ufm.reference import class_means, offdiag, within_over_between
from ufm import collapse_metrics, theory
from ufm.convex import (ConvexSolveError, LogitsProblem, hull_distances, linear_finite_component,
                        linear_ntp_svm, ntp_svm, ntp_svm_result)
from ufm.targets import NTPTargets, mixup_pairs, one_hot, random_supports
from ufm.theory import (centered_support, factor, gram_cosine, one_hot_lmm, project_f, seli, simplex_etf,
                        simplex_etf_gram, sparse_component, subspace_collapse, subspace_collapse_ratio,
                        support_certificate)
from ufm.train import train_ufm

SMALL = dict(device="cpu", snapshots=3)


@pytest.fixture(scope="module")
def small_language():
    return random_supports(10, 8, (1, 3), probs="zipf", seed=1)  # V=8, m=10, k_j <= 3


def test_balanced_ce_closed_form_norms():
    # SCIENCE.md 5: K=5, n=20, lambda_W = lambda_H = 5e-3 -> ||w_k||^2 = 13.26168.
    lam, n, k = 5e-3, 20, 5
    # ((K-1)/K) sqrt(n lam_H / lam_W) log(1 / sqrt(n lam_W lam_H) - (K-1))
    want = (k - 1) / k * math.sqrt(n) * math.log(1 / math.sqrt(n * lam * lam) - (k - 1))
    assert want == pytest.approx(13.26168, abs=1e-5)
    r = train_ufm(one_hot([n] * k), 8, weight_decay=lam, steps=6000, optimizer="gd", lr=50.0,
                  lr_schedule="constant", **SMALL)
    np.testing.assert_allclose(r.W.square().sum(1).numpy(), want, rtol=1e-6)


def test_factorized_ufm_reaches_convex_optimum(small_language):
    lam = 1e-2
    convex = LogitsProblem(small_language).solve(lam)
    r = train_ufm(small_language, 8, weight_decay=lam, steps=20_000, optimizer="gd", lr=5.0,
                  lr_schedule="constant", **SMALL)  # d = V >= min(V-1, m)
    W, H, L = r.W.numpy(), r.H.numpy(), r.logits()
    assert r.history[-1]["objective"] == pytest.approx(convex.value, rel=1e-4)
    np.testing.assert_allclose(L, convex.solution, atol=1e-3 * np.abs(convex.solution).max())
    np.testing.assert_allclose(W.T @ W, H @ H.T, atol=1e-8)  # balanced factors
    nuc = np.linalg.norm(L, "nuc")
    assert (W**2).sum() == pytest.approx(nuc, rel=1e-8) and (H**2).sum() == pytest.approx(nuc, rel=1e-8)
    np.testing.assert_allclose(L.sum(0), 0.0, atol=1e-8)  # 1^T L = 0


def test_regularization_path_in_f_and_f_perp(small_language):
    S, l_in = small_language.support(), sparse_component(small_language)
    l_mm = ntp_svm(S)
    problem = LogitsProblem(small_language)
    dists, coss, nucs = [], [], []
    for lam in (1e-2, 1e-3, 1e-4):
        L = problem.solve(lam).solution
        pf = project_f(L, S)
        dists.append(np.linalg.norm(pf - l_in))
        coss.append(gram_cosine(L - pf, l_mm))
        nucs.append(np.linalg.norm(L, "nuc"))
    assert dists[0] > dists[1] > dists[2] and dists[2] < 0.01  # P_F(L_lambda) -> L_in
    assert coss[0] < coss[1] < coss[2] and coss[2] > 0.97  # cos(P_Fperp L_lambda, L_mm) -> 1
    slope = (nucs[2] - nucs[1]) / math.log(10)  # per unit of ln(1/lambda)
    assert slope == pytest.approx(np.linalg.norm(l_mm, "nuc"), rel=0.05)


@pytest.mark.slow
def test_simulator_follows_regularization_path(small_language):
    # The default optimizer (Adam, cosine schedule) reaches the convex optimum at each lambda.
    S, l_in = small_language.support(), sparse_component(small_language)
    l_mm = ntp_svm(S)
    problem = LogitsProblem(small_language)
    dists, coss = [], []
    for lam in (1e-2, 1e-3, 1e-4):
        r = train_ufm(small_language, 8, weight_decay=lam, steps=20_000, l_mm=l_mm, **SMALL)
        convex = problem.solve(lam)
        assert r.history[-1]["objective"] == pytest.approx(convex.value, rel=1e-6)
        # Clarabel's own accuracy bounds this one: at lambda=1e-4 the UFM's objective is the lower of the two.
        assert r.history[-1]["pf_dist"] == pytest.approx(np.linalg.norm(project_f(convex.solution, S) - l_in), abs=1e-4)
        dists.append(r.history[-1]["pf_dist"])
        coss.append(r.history[-1]["cos_mm"])
    assert dists[0] > dists[1] > dists[2]
    assert coss[0] < coss[1] < coss[2]


def test_same_support_contexts_have_identical_lmm_columns_and_collapse():
    t = random_supports(24, 12, (2, 3), probs="zipf", num_patterns=4, seed=0)
    l_mm = ntp_svm(t.support())
    for group in t.support_groups():
        np.testing.assert_allclose(l_mm[:, group], l_mm[:, group[:1]].repeat(len(group), 1), atol=1e-5)
    r = train_ufm(t, 16, weight_decay=0.0, steps=4000, optimizer="ngd", lr=0.5, device="cpu",
                  snapshots=[100, 1000], track_subspace=True)
    ratios = r.series("subspace_ratio")
    assert ratios[0] > ratios[-1] and ratios[-1] < 0.5 * ratios[0]
    assert subspace_collapse_ratio(r.W.numpy(), r.H.numpy(), t) == pytest.approx(ratios[-1])


def test_one_hot_lmm_is_centered_labels_and_seli():
    counts = [4, 4, 2, 1]
    labels = np.repeat(np.arange(4), counts)
    np.testing.assert_allclose(ntp_svm(one_hot(counts).support()), one_hot_lmm(labels, 4), atol=1e-6)
    r = train_ufm(one_hot(counts), 8, weight_decay=1e-4, steps=5000, **SMALL)
    grams = seli(counts)
    W, H = r.W.numpy(), r.H.numpy()
    assert gram_cosine(W @ W.T, grams.words) > 0.995  # SELI to 5e-3 at lambda = 1e-4
    assert gram_cosine(H.T @ H, grams.contexts) > 0.995


def test_minority_collapse_with_weight_decay():
    # Fang et al. 2021: as minority classes get rarer, their classifiers' mean cosine rises.
    def minority_cos(ratio):
        r = train_ufm(one_hot([ratio] * 3 + [1] * 3), 6, weight_decay=5e-3, steps=3000, **SMALL)
        w = torch.nn.functional.normalize(r.W[3:], dim=1)
        c = (w @ w.T).numpy()
        return c[np.triu_indices(3, 1)].mean()

    cosines = [minority_cos(r) for r in (1, 10, 100)]
    assert cosines[0] < cosines[1] < cosines[2]


def test_one_shared_support_gives_rank_one_centered_support():
    S = np.zeros((7, 5))
    S[[1, 3, 4], :] = 1.0
    l_mm = ntp_svm(S)
    np.testing.assert_allclose(l_mm, centered_support(S), atol=1e-6)
    assert np.linalg.matrix_rank(l_mm, tol=1e-6) == 1
    assert support_certificate(S).exact


@settings(max_examples=8)
@given(seed=st.integers(0, 10_000), m=st.integers(2, 6), v=st.integers(3, 6))
def test_support_certificate_agrees_with_cvxpy(seed, m, v):
    S = random_supports(m, v, (1, v - 1), seed=seed).support()
    assert_verdict_matches_cvxpy(S, support_certificate(S))


def assert_verdict_matches_cvxpy(S: np.ndarray, cert) -> None:
    """Certified: S~ is L_mm (cvxpy's NTP-SVM) up to scale. Not certified: S~ is feasible but strictly
    worse, so its nuclear norm exceeds the optimum's."""
    l_mm = ntp_svm_result(S).solution
    if cert.exact:
        assert gram_cosine(l_mm, centered_support(S)) == pytest.approx(1.0, abs=1e-5)
    else:
        assert np.linalg.norm(centered_support(S), "nuc") > np.linalg.norm(l_mm, "nuc") + 1e-6


def _polar_by_eigh(a: np.ndarray) -> np.ndarray:
    """U_r V_r^T of a (V, m) matrix as a (a^T a)^(+1/2), from an eigendecomposition, not an SVD."""
    evals, evecs = np.linalg.eigh(a.T @ a)
    keep = evals > evals.max() * 1e-12
    inv_sqrt = (evecs[:, keep] / np.sqrt(evals[keep])) @ evecs[:, keep].T
    return a @ inv_sqrt


@pytest.mark.parametrize("seed", range(4))
def test_support_certificate_is_the_polar_factor(seed):
    """The certificate's polar factor and largest off-support entry against an eigendecomposition,
    and its verdict against cvxpy, on supports that include both verdicts."""
    verdicts = set()
    for m, v in ((5, 6), (6, 5)):
        S = random_supports(m, v, (1, v - 1), seed=seed).support()
        cert = support_certificate(S)
        polar = _polar_by_eigh(centered_support(S))
        np.testing.assert_allclose(cert.polar, polar, atol=1e-9)
        assert cert.max_off_support == pytest.approx(polar[S == 0].max(), abs=1e-9)
        assert cert.exact == (cert.max_off_support <= 1e-9)
        assert support_certificate(S, tol=cert.max_off_support).exact  # the bound itself is allowed
        assert_verdict_matches_cvxpy(S, cert)
        verdicts.add(cert.exact)
    if seed == 0:
        assert verdicts == {True, False}


def test_support_certificate_of_a_full_support():
    """Every word in every support: no off-support entry to check, S~ = 0, and a zero polar factor."""
    cert = support_certificate(np.ones((4, 3)))
    assert cert.exact and cert.max_off_support == -np.inf
    np.testing.assert_array_equal(cert.polar, np.zeros((4, 3)))


@pytest.mark.parametrize("W", [
    pytest.param(theory.etf_classifier(k, k - 1), id=f"simplex-{k}") for k in (3, 4, 6)] + [
    pytest.param(np.stack([np.cos(2 * np.pi * np.arange(k) / k), np.sin(2 * np.pi * np.arange(k) / k)], 1), id=f"{k}-gon")
    for k in (5, 7)] + [pytest.param(np.concatenate([np.eye(3), -np.eye(3)]), id="cross-polytope-3")])
def test_softmax_code_rho_is_the_hull_distance_of_its_configuration(W):
    """The closed forms against cvxpy's distances of each known optimum to the hull of the others."""
    rho = theory.softmax_code_rho(*W.shape)
    np.testing.assert_allclose(hull_distances(W), rho, atol=1e-6)


def test_span_residual_is_relative_to_the_vector():
    basis = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    coef, residual = theory.span_residual(np.array([3.0, 4.0, 12.0]), basis)
    np.testing.assert_allclose(coef, [3.0, 4.0], atol=1e-12)
    assert residual == pytest.approx(12.0 / 13.0, rel=1e-12)
    assert math.isnan(theory.span_residual(np.zeros(3), basis)[1])


def test_imbalanced_frame_takes_a_class_of_one_sample():
    # s_k^2 = sqrt(n_k lambda_H / lambda_W) - N lambda_H (SCIENCE.md section 5), positive for n_k = 1 here.
    frame = theory.imbalanced_mse_frame([5, 1], 1e-3)
    np.testing.assert_allclose(frame.s2, np.sqrt([5.0, 1.0]) - 6e-3, rtol=1e-12)
    with pytest.raises(ValueError, match="counts must be >= 1"):
        theory.imbalanced_mse_frame([5, 0], 1e-3)


def test_fixed_h_linear_model():
    t = random_supports(6, 5, (2, 3), probs="zipf", seed=3)
    H = np.random.default_rng(0).normal(size=(8, 6))  # d > m, full rank: separable and compatible
    w_mm = linear_ntp_svm(t.support(), H).solution
    L = w_mm @ H
    S = t.support().astype(bool)
    for j in range(6):
        top = L[S[:, j], j]
        assert np.ptp(top) < 1e-6 and top.min() - L[~S[:, j], j].max() >= 1 - 1e-6
    w_star = linear_finite_component(t, H).solution
    np.testing.assert_allclose(project_f(w_star @ H, S), sparse_component(t), atol=1e-6)
    # GD on the unregularized linear model: P_F of its logits approaches L_in (Thrampoulidis 2024).


def test_simplex_etf_closed_form():
    e = simplex_etf(6)
    np.testing.assert_allclose(e @ e.T, simplex_etf_gram(6), atol=1e-14)
    np.testing.assert_allclose(simplex_etf(2) @ simplex_etf(2).T, [[1, -1], [-1, 1]], atol=1e-14)  # the smallest
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        simplex_etf(1)


def test_chunked_ce_equals_dense_with_bias_and_layernorm():
    from ufm.features import layer_norm_columns
    from ufm.model import TargetTensors, soft_label_ce

    t = random_supports(30, 23, (1, 4), probs="zipf", seed=4)
    data = TargetTensors(t, torch.device("cpu"), torch.float64)
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(23, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    H = torch.randn(5, 30, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(23, generator=gen, dtype=torch.float64, requires_grad=True)
    out = []
    for chunk in (None, 7 * 30, 1):  # dense reference, 7-row chunks, one row at a time
        loss = soft_label_ce(W, layer_norm_columns(H), b, data.pi, data.tokens, data.contexts, data.probs,
                             chunk_entries=chunk)
        out.append((loss.detach(), *torch.autograd.grad(loss, (W, H, b))))
    for got in out[1:]:
        for a, e in zip(got, out[0]):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)
    # CE - H = sum_j pi_j KL(p_j || softmax(l_j)) > 0 for finite logits.
    assert float(out[0][0]) > t.entropy


def test_class_stats_weight_contexts_by_pi_p():
    P = np.array([[0.5, 1.0, 0.0], [0.5, 0.0, 1.0]])
    t = NTPTargets.from_arrays([0.2, 0.3, 0.5], P)
    r = train_ufm(t, 3, weight_decay=1e-2, steps=5, **SMALL)
    stats = r.class_stats()
    np.testing.assert_allclose(stats.counts.numpy(), [0.2 * 0.5 + 0.3, 0.2 * 0.5 + 0.5], rtol=1e-14)
    H = r.H.numpy()
    mean0 = (0.1 * H[:, 0] + 0.3 * H[:, 1]) / 0.4
    np.testing.assert_allclose(stats.means[0].numpy(), mean0, rtol=1e-12)
    assert collapse_metrics(stats).num_classes_kept == 2


def test_minibatch_and_history():
    t = random_supports(40, 10, 2, seed=5)
    r = train_ufm(t, 6, weight_decay=1e-3, steps=300, batch_size=8, device="cpu", snapshots=4,
                  track_metrics=True)
    obj = r.series("objective")
    assert obj[-1] < obj[0] and r.steps()[0] == 0 and r.steps()[-1] == 300
    assert "metrics" in r.history[-1] and r.history[-1]["metrics"]["num_classes_kept"] == 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=0), "dim must be an integer >= 1"),
        (dict(weight_decay=-1.0), "weight_decay must be >= 0"),
        (dict(optimizer="sgdm"), "optimizer must be one of"),
        (dict(lr=0.0), "lr must be positive"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
    ],
)
def test_bad_training_arguments(kwargs, match):
    args = dict(dim=4, weight_decay=1e-3, steps=10, device="cpu") | kwargs
    with pytest.raises(ValueError, match=match):
        train_ufm(one_hot([2, 2]), **args)


def test_divergence_is_an_error():
    with pytest.raises(FloatingPointError, match="training diverged"):
        train_ufm(one_hot([2, 2]), 4, weight_decay=1e-3, steps=50, optimizer="gd", lr=1e6,
                  lr_schedule="constant", **SMALL)


def test_bad_convex_inputs():
    with pytest.raises(ValueError, match="0/1 matrix with a non-empty support"):
        ntp_svm(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="lambda must be positive"):
        LogitsProblem(one_hot([1, 1])).solve(0.0)
    H = np.ones((1, 2))  # rank 1, d < m: two contexts with different supports cannot be separated
    with pytest.raises(ConvexSolveError, match="not optimal"):
        linear_ntp_svm(np.eye(2), H)


@requires_cuda
@pytest.mark.gpu
def test_cuda_training_matches_cpu():
    t = random_supports(20, 12, (1, 3), seed=6)
    a = train_ufm(t, 8, weight_decay=1e-3, steps=200, device="cpu", snapshots=2)
    b = train_ufm(t, 8, weight_decay=1e-3, steps=200, device="cuda", snapshots=2)
    torch.testing.assert_close(a.W, b.W, rtol=1e-9, atol=1e-11)


def test_etf_error_floor_is_attained_and_never_beaten():
    """sqrt(2 - 2 sqrt(D/(K-1))) for D < K-1: means whose centred Gram is a rank-D projection inside
    the simplex's span reach it; random means in R^D never go below it."""
    from ufm import collapse_metrics, stats_from_features
    from ufm.theory import etf_error_floor

    rng = np.random.default_rng(0)

    def etf_error(means):
        K = len(means)
        return collapse_metrics(stats_from_features(means, np.arange(K), K)).etf_error

    for K, D in ((11, 4), (30, 8), (5, 3)):
        floor = etf_error_floor(K, D)
        assert floor == pytest.approx(math.sqrt(2 - 2 * math.sqrt(D / (K - 1))), rel=1e-15)
        centred = np.eye(K) - 1.0 / K  # its columns span the simplex's (K-1)-dimensional space
        basis = np.linalg.svd(centred)[0][:, : K - 1]  # (K, K-1) orthonormal, orthogonal to 1
        means = basis[:, :D]  # (K, D): Gram = a rank-D projection inside E's range
        assert etf_error(means) == pytest.approx(floor, abs=1e-12)
        assert min(etf_error(rng.normal(size=(K, D))) for _ in range(50)) > floor
    assert etf_error_floor(10, 9) == 0.0 and etf_error_floor(10, 50) == 0.0
    with pytest.raises(ValueError, match="need K >= 2 classes and D >= 1"):
        etf_error_floor(1, 4)


COUNTS = [40, 40, 10, 10, 3]


LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS)


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


def test_etf_classifier_needs_room():
    with pytest.raises(ValueError, match="needs d >= K - 1 = 4, got d = 3"):
        theory.etf_classifier(5, 3)


MINORITY_REFERENCE = {1: -0.111, 10: 0.026, 100: 0.317, 1000: 0.727}  # SCIENCE.md 5, K_A = K_B = 5


def reference_ratio(W, H, targets, rtol):
    """The measure written out directly: truncated SVD pseudo-inverse in R^d, projections as d x d
    matrices, H restricted to W's kept row space; loops over pairs (no code shared with ufm)."""
    u, s, vt = np.linalg.svd(W, full_matrices=False)
    keep = s > rtol * s[0]
    pinv = vt[keep].T @ np.diag(1 / s[keep]) @ u[:, keep].T  # (d, V)
    row_space = vt[keep].T @ vt[keep]  # (d, d)
    supports = {}
    for j in range(targets.num_contexts):
        supports.setdefault(tuple(sorted(targets.tokens[targets.contexts == j])), []).append(j)
    ratios = []
    for sup, group in supports.items():
        diffs = np.stack([pinv[:, z] - pinv[:, sup[0]] for z in sup[1:]], 1)
        basis = np.linalg.qr(diffs)[0][:, : np.linalg.matrix_rank(diffs)]
        P = (np.eye(W.shape[1]) - basis @ basis.T) @ row_space
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                ratios.append(np.linalg.norm(P @ (H[:, a] - H[:, b])) / np.linalg.norm(P @ H[:, a]))
    return float(np.mean(ratios))


def minority_cos(ratio: int) -> float:
    from ufm.targets import one_hot

    r = train_ufm(one_hot([ratio] * 5 + [1] * 5), 10, weight_decay=1e-4, steps=20_000, device="cpu", snapshots=[])
    w = r.W.numpy()[5:]
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    return float((w @ w.T)[np.triu_indices(5, 1)].mean())


def test_subspace_ratio_falls_along_the_regularization_path(shared_language, convex_path):
    """The issue's figures with W truncated to its numerical rank: 0.078, 0.072, 0.046, 0.034."""
    ratios = []
    for L in convex_path:
        W, H = factor(L)
        got = subspace_collapse(W, H, shared_language)
        assert got.ratio == pytest.approx(reference_ratio(W, H, shared_language, 1e-2), rel=1e-9)
        assert got.unprojected > got.ratio and got.pairs == 270
        ratios.append(got.ratio)
    np.testing.assert_allclose(ratios, [0.078, 0.072, 0.046, 0.034], atol=1.5e-3)
    assert all(a > b for a, b in zip(ratios, ratios[1:]))  # non-increasing as lambda falls


def test_subspace_ratio_ignores_negligible_directions(shared_language, convex_path):
    W, H = factor(convex_path[2])
    base = subspace_collapse_ratio(W, H, shared_language)
    rng = np.random.default_rng(0)
    scale = 1e-9 * np.linalg.norm(W, 2)
    W_noisy = np.c_[W, scale * rng.normal(size=(W.shape[0], 3))]  # 3 extra directions of size 1e-9
    H_noisy = np.r_[H + 1e-9 * rng.normal(size=H.shape), 1e-9 * rng.normal(size=(3, H.shape[1]))]
    assert subspace_collapse_ratio(W_noisy, H_noisy, shared_language) == pytest.approx(base, rel=1e-6)
    # Without the rank tolerance, W^+ blows the same noise up into the measure.
    assert abs(subspace_collapse_ratio(W_noisy, H_noisy, shared_language, rank_rtol=0.0) - base) > 0.01


def test_subspace_ratio_is_nan_without_geometry(shared_language):
    zero_w, zero_h = np.zeros((30, 8)), np.zeros((8, 60))
    rng = np.random.default_rng(1)
    assert math.isnan(subspace_collapse_ratio(zero_w, zero_h, shared_language))
    assert math.isnan(subspace_collapse_ratio(zero_w, rng.normal(size=(8, 60)), shared_language))
    assert math.isnan(subspace_collapse_ratio(rng.normal(size=(30, 8)), zero_h, shared_language))
    assert subspace_collapse(zero_w, zero_h, shared_language).rank == 0


def test_limit_grams_on_random_supports():
    """G_W -> (L_mm L_mm^T)^(1/2) and G_H -> (L_mm^T L_mm)^(1/2) as lambda -> 0, on random supports
    (not one-hot); the trained UFM lands on the convex optimum's Grams."""
    t = random_supports(24, 12, (1, 4), probs="zipf", seed=3)
    lmm = ntp_svm_result(t.support()).solution
    u, s, vt = np.linalg.svd(lmm)
    want_w, want_h = (u[:, :len(s)] * s) @ u[:, :len(s)].T, (vt[:len(s)].T * s) @ vt[:len(s)]  # square roots
    cos = lambda a, b: float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    words, contexts = [], []
    for r in LogitsProblem(t).path([1e-2, 1e-4, 1e-6]):
        W, H = factor(r.solution)
        words.append(cos(W @ W.T, want_w))
        contexts.append(cos(H.T @ H, want_h))
    assert words[0] < words[1] < words[2] and words[2] > 0.99
    assert contexts[0] < contexts[1] < contexts[2] and contexts[2] > 0.98
    trained = train_ufm(t, 12, weight_decay=1e-4, steps=6000, device="cpu", snapshots=[])
    W_opt, H_opt = factor(LogitsProblem(t).solve(1e-4).solution)
    W, H = trained.W.numpy(), trained.H.numpy()
    assert cos(W @ W.T, W_opt @ W_opt.T) > 0.9999 and cos(H.T @ H, H_opt.T @ H_opt) > 0.9999


def test_structural_correlation_with_s_tilde_rises_over_training(shared_language):
    from ufm.theory import centered_support, cosine_matrix, gram_to_cosines, offdiag_correlation, predicted_grams

    target = gram_to_cosines(predicted_grams(centered_support(shared_language.support())).contexts)
    r = train_ufm(shared_language, 32, weight_decay=1e-5, steps=2000, device="cpu", snapshots=[0, 100, 2000],
                  observe=lambda W, H: dict(corr=offdiag_correlation(cosine_matrix(H.T), target)))
    corr = r.series("corr")
    # At initialization the contexts' cosines are noise; trained, they carry S~'s structure.
    assert abs(corr[0]) < 0.2 and corr[0] < corr[1] < corr[2] and corr[2] > 0.95


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [1, 10, 100])
def test_minority_collapse_reproduces_the_reference(ratio):
    assert minority_cos(ratio) == pytest.approx(MINORITY_REFERENCE[ratio], abs=0.05)


@pytest.mark.slow
def test_minority_collapse_at_ratio_1000():
    assert minority_cos(1000) == pytest.approx(MINORITY_REFERENCE[1000], abs=0.05)
