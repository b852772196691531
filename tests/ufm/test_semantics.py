"""ufm.semantics (issue 14): spectra against numpy, clusterings on planted structure, learning order on
toys with known answers, and the hierarchical language end to end."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import normalized_mutual_info_score

from ufm import semantics as se
from ufm.targets import NTPTargets, hierarchical_language, random_supports
from ufm.theory import centered_support
from ufm.train import train_ufm


def _same_subspaces(a: se.Spectrum, u, s, vt, k):
    np.testing.assert_allclose(a.S, s[:k], rtol=1e-8)
    # Singular vectors are defined up to sign: compare the rank-k reconstructions.
    np.testing.assert_allclose((a.U * a.S) @ a.Vt, (u[:, :k] * s[:k]) @ vt[:k], atol=1e-8)


def test_support_spectrum_is_the_svd_of_the_centered_support():
    t = random_supports(30, 12, (1, 4), seed=3)
    S_tilde = centered_support(t.support())
    u, s, vt = np.linalg.svd(S_tilde, full_matrices=False)
    _same_subspaces(se.support_spectrum(t, 5), u, s, vt, 5)
    op = se.support_operator(t)
    x = np.random.default_rng(0).standard_normal((30, 3))
    np.testing.assert_allclose(op @ x, S_tilde @ x, atol=1e-12)
    np.testing.assert_allclose(op.T @ x[:12], S_tilde.T @ x[:12], atol=1e-12)


def test_large_matrices_take_arpack_and_agree_with_numpy(monkeypatch):
    monkeypatch.setattr(se, "DENSE_SVD_ENTRIES", 10)  # force the sparse path on a small case
    t = random_supports(40, 15, (1, 4), seed=4)
    u, s, vt = np.linalg.svd(centered_support(t.support()), full_matrices=False)
    _same_subspaces(se.support_spectrum(t, 4), u, s, vt, 4)
    M = sp.random(25, 18, density=0.3, random_state=1, format="csr")
    u, s, vt = np.linalg.svd(M.toarray(), full_matrices=False)
    _same_subspaces(se.matrix_spectrum(M, 3), u, s, vt, 3)
    with pytest.raises(ValueError, match=r"k must lie in \[1, 17\]"):
        se.matrix_spectrum(M, 18)


def test_log_odds_spectrum_is_that_of_l_in():
    from ufm.theory import sparse_component

    t = random_supports(10, 6, (2, 3), probs="zipf", seed=1)
    u, s, vt = np.linalg.svd(sparse_component(t), full_matrices=False)
    _same_subspaces(se.support_spectrum(t, 3, which="log_odds"), u, s, vt, 3)
    with pytest.raises(ValueError, match="which must be"):
        se.support_spectrum(t, 3, which="l_mm")


@given(st.integers(0, 10_000))
def test_orthant_clusters_recover_planted_sign_patterns_under_rotation(seed):
    """Rows built from 5 sign patterns over 3 orthogonal directions (with magnitudes that vary), then
    rotated and padded: the orthant clustering finds the patterns whatever the rotation."""
    rng = np.random.default_rng(seed)
    patterns = np.array([[1, 1, 1], [1, -1, 1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])
    truth = rng.integers(0, 5, size=60)
    truth[:5] = np.arange(5)  # every pattern present
    scales = np.array([3.0, 2.0, 1.0])  # distinct singular values keep the directions identifiable
    coords = patterns[truth] * scales * rng.uniform(0.8, 1.2, size=(60, 3))
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    X = np.c_[coords, np.zeros((60, 5))] @ q.T  # (60, 8) rotated
    got = se.orthant_clusters(X, 3)
    direct = se.orthant_clusters(np.c_[coords, np.zeros((60, 5))], 3)
    assert normalized_mutual_info_score(got, direct) == pytest.approx(1.0)  # rotation does not matter
    assert len(np.unique(got)) <= 2 ** 3


def test_orthant_clusters_on_exact_planted_patterns():
    X = np.array([[2.0, 1.0], [2.1, 0.9], [-2.0, 1.0], [-1.9, 1.1], [2.0, -1.0], [-2.0, -1.0]])
    labels = se.orthant_clusters(X, 2)
    assert labels[0] == labels[1] and labels[2] == labels[3]
    assert len(np.unique(labels)) == 4
    assert len(np.unique(se.orthant_clusters(X, 1))) == 2  # the first direction alone: the sign of column 0


def test_cluster_scores_against_sklearn_and_the_shuffle():
    truth = np.repeat(np.arange(4), 10)
    perfect = se.cluster_scores((truth + 1) % 4, truth, shuffles=100)  # relabelled: still perfect
    assert perfect.nmi == 1.0 and perfect.ari == 1.0 and perfect.p_value == pytest.approx(1 / 101)
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(40) < 0.3, rng.integers(0, 4, 40), truth)
    s = se.cluster_scores(noisy, truth, shuffles=100)
    assert s.nmi == pytest.approx(normalized_mutual_info_score(truth, noisy))
    assert s.nmi_shuffled < 0.2 < s.nmi
    with pytest.raises(ValueError, match="equal-length"):
        se.cluster_scores([0, 1], [0, 1, 2])


def test_half_times_on_curves_with_known_answers():
    steps = np.arange(0, 101)
    fast = 1 / (1 + np.exp(-(steps - 20) / 2.0))  # reaches half its final value at step 20
    slow = 1 / (1 + np.exp(-(steps - 60) / 2.0))  # at step 60
    flat = np.zeros_like(steps, dtype=float)  # never grows: no half time
    t = se.half_times(steps, np.c_[fast, slow, flat])
    np.testing.assert_array_equal(t[:2], [20, 60])
    assert np.isnan(t[2])
    order = se.learning_order(steps, np.c_[fast, slow, 1 / (1 + np.exp(-(steps - 90) / 2.0))], [3.0, 2.0, 1.0])
    assert order.spearman == pytest.approx(-1.0)


def _two_direction_targets():
    """A 6-word language whose S~ has exactly two directions of different size: words {0, 1} follow
    6 contexts, {2, 3} follow 2 and {4, 5} one (three disjoint supports: rank 2 once centred)."""
    supports = [[0, 1]] * 6 + [[2, 3]] * 2 + [[4, 5]]
    tokens = np.array([z for s in supports for z in s])
    contexts = np.repeat(np.arange(len(supports)), 2)
    return NTPTargets(np.full(9, 1 / 9), tokens, contexts, np.full(18, 0.5), 6)


def test_two_direction_toy_learns_the_larger_direction_first():
    t = _two_direction_targets()
    full = se.support_spectrum(t)
    assert (full.S > 1e-9).sum() == 2 and full.S[0] > 1.5 * full.S[1]
    spec = se.Spectrum(full.U[:, :2], full.S[:2], full.Vt[:2])
    r = train_ufm(t, 4, weight_decay=1e-4, steps=1500, optimizer="gd", lr=0.5, lr_schedule="constant",
                  init_scale=1e-3, device="cpu", snapshots=list(range(0, 1501, 10)),
                  observe=lambda W, F: dict(zip(("a", "b"), se.spectral_projections(W, F, spec).tolist())))
    curves = np.c_[r.series("a"), r.series("b")]
    # The projection is u^T W H v, computed here again by hand at the last snapshot.
    np.testing.assert_allclose(curves[-1], np.diag(spec.U.T @ (r.W @ r.H).numpy() @ spec.Vt.T), rtol=1e-10)
    t_half = se.half_times(r.steps(), curves)
    assert t_half[0] < t_half[1]


def test_hierarchical_language_concepts_and_learning_order():
    t, labels = hierarchical_language(2, 3, 4)
    assert t.vocab_size == 24 and t.num_contexts == sum(range(1, 7)) + 8 + 16
    spec = se.support_spectrum(t)
    assert int((spec.S > 1e-9 * spec.S[0]).sum()) == 5  # 6 fine indicators, centred
    # The top direction's sign is the broad category; all 5 directions separate the fine ones.
    assert normalized_mutual_info_score(labels["broad"], se.orthant_clusters(spec.U * spec.S, 1)) == 1.0
    assert normalized_mutual_info_score(labels["fine"], se.orthant_clusters(spec.U[:, :5] * spec.S[:5], 5)) == 1.0


def test_attribute_inputs_and_gap():
    a = se.attribute_inputs((2, 3), identity=0.5)
    assert a.X.shape == (2 + 3 + 6, 6) and a.shared[0, 0] == 2 and a.shared.max() == 2
    assert a.shared[0, 1] == 1  # inputs 0 and 1 share attribute 0, differ in attribute 1
    etf = np.eye(6) - 1 / 6
    assert se.attribute_gap(etf, a.shared) == pytest.approx(0.0, abs=1e-12)
    assert se.attribute_gap(a.X, a.shared) > 0.3
    with pytest.raises(ValueError, match=">= 2 values"):
        se.attribute_inputs((1, 3))
