"""Convex twins of the NTP unconstrained-features model, solved with cvxpy (Clarabel, or SCS).

- Nuclear-norm regularized logits (the UFM with d >= min(V-1, m) is equivalent to it):
      min_L  sum_j pi_j [logsumexp(l_j) - p_j^T l_j] + lambda ||L||_*
- The NTP-SVM (the max-margin direction L_mm; depends only on the support S):
      min_L ||L||_*  s.t.  L[z,j] = L[z',j] (z, z' in S_j),  L[z,j] - L[v,j] >= 1 (z in S_j, v not)
- The fixed-H linear model (Thrampoulidis 2024, arXiv 2402.18551), logits W H with H given:
      W^mm = argmin ||W||_F  s.t. W H satisfies the NTP-SVM constraints above,
      W*   = argmin ||W||_F  s.t. in-support logit differences of W H equal the log-odds.

Each solve checks the solver's status; anything but optimal raises ``ConvexSolveError``.
References: Zhao, Behnia, Vakilian, Thrampoulidis, COLM 2024; Thrampoulidis, arXiv 2402.18551.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from .targets import NTPTargets


FEASIBILITY_TOL = 1e-6  # largest constraint violation accepted from an 'optimal_inaccurate' solve


class ConvexSolveError(RuntimeError):
    """The solver did not report an optimal solution."""


@dataclass(frozen=True)
class ConvexResult:
    solution: np.ndarray  # (V, m) logits, or (V, d) for the fixed-H problems
    value: float  # optimal objective value
    status: str  # solver status ("optimal")
    solver: str


def _solve(problem: cp.Problem, variable: cp.Variable, solver: str | None, what: str) -> ConvexResult:
    """Solve and check. An 'optimal_inaccurate' answer is kept only if its constraints hold to
    FEASIBILITY_TOL (Clarabel flags near-degenerate SDPs so while its answer is still tight); the
    status is reported in the result either way."""
    name = solver or ("CLARABEL" if "CLARABEL" in cp.installed_solvers() else "SCS")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            problem.solve(solver=name)
    except cp.error.SolverError as err:
        raise ConvexSolveError(f"{what}: solver {name} failed: {err}") from err
    accurate_enough = problem.status == cp.OPTIMAL_INACCURATE and max(
        (float(np.max(c.violation(), initial=0.0)) for c in problem.constraints), default=0.0
    ) <= FEASIBILITY_TOL
    if problem.status != cp.OPTIMAL and not accurate_enough:
        raise ConvexSolveError(f"{what}: solver {name} ended with status {problem.status!r}, not optimal")
    return ConvexResult(np.asarray(variable.value), float(problem.value), problem.status, name)


def _svm_constraints(L, S: np.ndarray) -> list:
    """Equal logits on each support, and a margin of 1 over every off-support logit."""
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or not np.all((S == 0) | (S == 1)) or np.any(S.sum(0) == 0):
        raise ValueError("the support S must be a (V, m) 0/1 matrix with a non-empty support per column")
    t = cp.Variable(S.shape[1])  # the common in-support logit of each context
    top = np.ones((S.shape[0], 1)) @ cp.reshape(t, (1, S.shape[1]), order="C")
    return [cp.multiply(S, L - top) == 0, cp.multiply(1 - S, L - top + 1) <= 0]


class LogitsProblem:
    """min_L CE(L) + lambda ||L||_*, built once; ``solve(lam)`` reuses it (lambda is a Parameter)."""

    def __init__(self, targets: NTPTargets, solver: str | None = None):
        self.targets = targets
        self.solver = solver
        v, m = targets.vocab_size, targets.num_contexts
        self.lam = cp.Parameter(nonneg=True)
        self.L = cp.Variable((v, m))
        weighted = np.zeros((v, m))  # pi_j p_jz
        weighted[targets.tokens, targets.contexts] = targets.pi[targets.contexts] * targets.probs
        ce = targets.pi @ cp.log_sum_exp(self.L, axis=0) - cp.sum(cp.multiply(weighted, self.L))
        self.problem = cp.Problem(cp.Minimize(ce + self.lam * cp.normNuc(self.L)))

    def solve(self, lam: float) -> ConvexResult:
        if not lam > 0:
            raise ValueError(f"lambda must be positive, got {lam}")
        self.lam.value = float(lam)
        return _solve(self.problem, self.L, self.solver, f"nuclear-norm logits at lambda={lam:g}")


def solve_logits(targets: NTPTargets, lam: float, *, solver: str | None = None) -> np.ndarray:
    """L_lambda (V, m) = argmin CE(L) + lambda ||L||_*. For sweeps, reuse a LogitsProblem."""
    return LogitsProblem(targets, solver).solve(lam).solution


def ntp_svm_result(S: np.ndarray, *, solver: str | None = None) -> ConvexResult:
    S = np.asarray(S, dtype=np.float64)
    L = cp.Variable(S.shape)
    problem = cp.Problem(cp.Minimize(cp.normNuc(L)), _svm_constraints(L, S))
    return _solve(problem, L, solver, "NTP-SVM")


def ntp_svm(S: np.ndarray, *, solver: str | None = None) -> np.ndarray:
    """L_mm (V, m): the minimum nuclear-norm logits with equal in-support logits and margins >= 1."""
    return ntp_svm_result(S, solver=solver).solution


def linear_ntp_svm(S: np.ndarray, H: np.ndarray, *, solver: str | None = None) -> ConvexResult:
    """W^mm (V, d) = argmin ||W||_F s.t. W H meets the NTP-SVM constraints (H (d, m) fixed)."""
    H = np.asarray(H, dtype=np.float64)
    W = cp.Variable((np.shape(S)[0], H.shape[0]))
    problem = cp.Problem(cp.Minimize(cp.sum_squares(W)), _svm_constraints(W @ H, S))
    return _solve(problem, W, solver, "NTP-SVM with fixed H (not NTP-separable?)")


def linear_finite_component(targets: NTPTargets, H: np.ndarray, *, solver: str | None = None) -> ConvexResult:
    """W* (V, d) = argmin ||W||_F s.t. (e_z - e_z')^T W h_j = log(p_jz / p_jz') on each support."""
    H = np.asarray(H, dtype=np.float64)
    W = cp.Variable((targets.vocab_size, H.shape[0]))
    L = W @ H
    rows, cols, logp = targets.tokens, targets.contexts, np.log(targets.probs)
    first = np.r_[True, cols[1:] != cols[:-1]]  # the first support token of each context
    anchor = np.maximum.accumulate(np.where(first, np.arange(len(cols)), 0))  # its index, per entry
    rest = ~first
    lhs = cp.hstack([L[rows[i], cols[i]] - L[rows[anchor[i]], cols[i]] for i in np.flatnonzero(rest)])
    rhs = (logp - logp[anchor])[rest]
    problem = cp.Problem(cp.Minimize(cp.sum_squares(W)), [lhs == rhs])
    return _solve(problem, W, solver, "finite component with fixed H (not NTP_H-compatible?)")
