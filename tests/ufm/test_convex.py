"""ufm.convex: FISTA against Clarabel, the NTP-SVM, solvers sized before they run, the fixed-H max-margin
direction and the excess loss along the regularization path."""

import numpy as np
import pytest

from tests.ufm.conftest import PATH
from ufm import convex
from ufm.convex import (ConvexInaccurateWarning, ConvexSolveError, LogitsProblem, choose_solver,
                        interior_point_bytes, linear_finite_component, linear_ntp_svm, ntp_svm_result)
from ufm.targets import random_supports
from ufm.train import train_ufm


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


def test_fista_matches_clarabel_and_certifies_its_gap():
    t = random_supports(10, 8, (1, 3), probs="zipf", seed=1)  # SCIENCE.md's V=8, m=10 example
    first_order, interior = LogitsProblem(t), LogitsProblem(t, solver="CLARABEL")
    for lam in (1e-2, 1e-3):
        a, b = first_order.solve(lam), interior.solve(lam)
        assert a.solver == "FISTA" and b.solver == "CLARABEL"
        assert 0 <= a.residual <= 1e-9 * max(1.0, a.value)
        assert a.value <= b.value + 1e-7  # never worse than the interior-point answer
        assert a.value == pytest.approx(b.value, rel=1e-7)
        np.testing.assert_allclose(a.solution, b.solution, atol=1e-3 * np.abs(b.solution).max())
        # The gap is an upper bound on any point's suboptimality: small, not zero, at Clarabel's answer.
        assert 0 <= first_order.duality_gap(b.solution, lam) < 1e-3
    assert first_order.duality_gap(np.zeros((8, 10)), 1e-3) > 0.1  # a poor point has a large gap


def test_lambda_path_reuses_work(shared_language):
    cold = [LogitsProblem(shared_language).solve(lam) for lam in PATH]
    warm = LogitsProblem(shared_language).path(list(PATH))
    for c, w in zip(cold, warm):
        assert w.value == pytest.approx(c.value, rel=1e-8)
    assert sum(w.iterations for w in warm) < 0.8 * sum(c.iterations for c in cold)


def test_solver_is_sized_before_it_runs():
    # Zhao et al.'s size: V = 104, m = 404 -> a PSD cone of side 508; Clarabel's KKT matrix 124.5 GiB.
    assert interior_point_bytes(508) / 2**30 == pytest.approx(124.5, abs=0.1)
    assert choose_solver(508, None) == "SCS" and choose_solver(90, None) == "SCS"
    assert choose_solver(18, None) == "CLARABEL"
    with pytest.raises(ConvexSolveError, match=r"Clarabel would need about 124.5 GiB"):
        choose_solver(508, "clarabel")
    with pytest.raises(ConvexSolveError, match="Clarabel would need"):
        ntp_svm_result(np.eye(104)[:, np.arange(404) % 104], solver="CLARABEL")


def test_ntp_svm_answer_is_exactly_feasible(shared_language):
    S = shared_language.support()
    r = ntp_svm_result(S)
    L = r.solution
    top = (L * S).sum(0) / S.sum(0)
    assert np.abs((L - top) * S).max() < 1e-12  # equal in-support logits
    margins = top - np.where(S > 0, -np.inf, L).max(0)
    assert margins.min() == pytest.approx(1.0, abs=1e-12)
    assert r.value == pytest.approx(np.linalg.norm(L, "nuc"), rel=1e-12)


def test_inaccurate_solves_warn_with_their_residual(monkeypatch):
    class FakeConstraint:
        def violation(self):
            return np.array([3e-6])

    class FakeProblem:
        status, value, constraints = "optimal_inaccurate", 1.5, [FakeConstraint()]

        def solve(self, solver):
            pass

    class FakeVariable:
        value = np.ones((2, 2))

    with pytest.warns(ConvexInaccurateWarning, match=r"optimal_inaccurate \(constraint residual 3e-06"):
        r = convex._solve(FakeProblem(), FakeVariable(), "SCS", "test problem")
    assert r.status == "optimal_inaccurate" and r.residual == 3e-6
    FakeConstraint.violation = lambda self: np.array([0.5])
    with pytest.raises(ConvexSolveError, match="violated by 0.5"):
        convex._solve(FakeProblem(), FakeVariable(), "SCS", "test problem")


@pytest.mark.slow
def test_convex_solves_at_zhao_size():
    """(V, m) = (104, 404), supports of 1-6 tokens: both problems finish with default settings and
    are feasible / certified to 1e-4 (times are printed by benchmarks/convex.py, not asserted)."""
    t = random_supports(404, 104, (1, 6), probs="zipf", seed=0)
    S = t.support()
    svm = ntp_svm_result(S)
    top = (svm.solution * S).sum(0) / S.sum(0)
    assert (top - np.where(S > 0, -np.inf, svm.solution).max(0)).min() >= 1 - 1e-12
    problem = LogitsProblem(t)
    for r in problem.path([1e-2, 1e-3, 1e-4, 1e-5]):
        assert r.residual <= 1e-4 * max(1.0, r.value)


@pytest.mark.parametrize("language", ["science", "shared"])
def test_excess_loss_is_lambda_times_lmm_nuclear_norm(language, shared_language):
    """CE(L_lambda) - H = lambda ||L_mm||_* (1 + o(1)) along the convex path (Zhao et al. 2024)."""
    t = random_supports(10, 8, (1, 3), probs="zipf", seed=1) if language == "science" else shared_language
    lmm_nuc = np.linalg.norm(ntp_svm_result(t.support()).solution, "nuc")
    P = t.dense()
    for r, lam in zip(LogitsProblem(t).path([1e-3, 1e-4, 1e-5]), (1e-3, 1e-4, 1e-5)):
        L = r.solution
        ce = float(t.pi @ (np.log(np.exp(L - L.max(0)).sum(0)) + L.max(0) - (P * L).sum(0)))
        assert (ce - t.entropy) / (lam * lmm_nuc) == pytest.approx(1.0, abs=0.05), lam
