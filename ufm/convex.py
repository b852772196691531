"""Convex twins of the NTP unconstrained-features model.

- Nuclear-norm regularized logits (the UFM with d >= min(V-1, m) is equivalent to it):
      min_L  sum_j pi_j [logsumexp(l_j) - p_j^T l_j] + lambda ||L||_*
  solved by default with accelerated proximal gradient (FISTA with singular-value thresholding and
  adaptive restart), stopped on a certified duality gap; warm-started along a lambda path. cvxpy
  (Clarabel or SCS) is the cross-check.
- The NTP-SVM (the max-margin direction L_mm; depends only on the support S):
      min_L ||L||_*  s.t.  L[z,j] = L[z',j] (z, z' in S_j),  L[z,j] - L[v,j] >= 1 (z in S_j, v not)
- The fixed-H linear model (Thrampoulidis 2024, arXiv 2402.18551), logits W H with H given:
      W^mm = argmin ||W||_F  s.t. W H satisfies the NTP-SVM constraints above,
      W*   = argmin ||W||_F  s.t. in-support logit differences of W H equal the log-odds.

cvxpy solves are sized first: nuclear norms become a PSD cone of side V + m, and an interior-point
solver (Clarabel) factors a dense matrix of its (n(n+1)/2)^2 entries (124 GiB at V = 104, m = 404,
which aborts the interpreter). Above ``CLARABEL_MAX_BYTES`` the default is SCS (first-order,
memory linear in the problem). A solve that ends 'optimal_inaccurate' warns with its residual; one
whose constraints are violated by more than ``FEASIBILITY_TOL`` raises ``ConvexSolveError``.
References: Zhao, Behnia, Vakilian, Thrampoulidis, COLM 2024; Thrampoulidis, arXiv 2402.18551;
Beck & Teboulle 2009 (FISTA); O'Donoghue & Candes 2015 (adaptive restart).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
from scipy.special import logsumexp, softmax

from .targets import NTPTargets

FEASIBILITY_TOL = 1e-4  # largest constraint violation accepted from a solver
# An interior-point KKT matrix above this goes to SCS instead: Clarabel's time grows as fast as its
# memory (19 s for the NTP-SVM at V = 30, m = 60, a 0.125 GiB matrix, where SCS takes 0.2 s and
# agrees to 1e-5 relative); below it (PSD side <= ~75) Clarabel is fast and accurate to ~1e-9.
CLARABEL_MAX_BYTES = 64 << 20
GAP_TOL = 1e-9  # FISTA stops when the duality gap is below this, relative to max(1, objective)


class ConvexSolveError(RuntimeError):
    """The solver did not reach an acceptable solution (or would not fit in memory)."""


class ConvexInaccurateWarning(UserWarning):
    """The solver reported 'optimal_inaccurate'; the result carries its residual."""


@dataclass(frozen=True)
class ConvexResult:
    solution: np.ndarray  # (V, m) logits, or (V, d) for the fixed-H problems
    value: float  # objective value at the solution
    status: str  # "optimal", or "optimal_inaccurate" (warned)
    solver: str  # FISTA, CLARABEL or SCS
    residual: float  # largest constraint violation (cvxpy), or the duality gap (FISTA)
    iterations: int | None = None  # FISTA iterations
    seconds: float = 0.0


def interior_point_bytes(psd_side: int) -> int:
    """Memory of a dense KKT factor for one PSD cone of side n: (n(n+1)/2)^2 float64 entries."""
    svec = psd_side * (psd_side + 1) // 2
    return 8 * svec * svec


def choose_solver(psd_side: int, solver: str | None) -> str:
    """The solver to use for a problem whose nuclear norm is a PSD cone of side ``psd_side``:
    Clarabel when its KKT matrix fits CLARABEL_MAX_BYTES, else SCS. An explicit Clarabel request
    that would not fit is refused here, before the solver can abort the interpreter."""
    need = interior_point_bytes(psd_side)
    if solver is None:
        fits = need <= CLARABEL_MAX_BYTES and "CLARABEL" in cp.installed_solvers()
        return "CLARABEL" if fits else "SCS"
    if solver.upper() == "CLARABEL" and need > CLARABEL_MAX_BYTES:
        raise ConvexSolveError(
            f"Clarabel would need about {need / 2**30:.1f} GiB for a PSD cone of side {psd_side} "
            f"(the limit is {CLARABEL_MAX_BYTES / 2**20:.0f} MiB); use solver='SCS' or the default"
        )
    return solver.upper()


def _solve(problem: cp.Problem, variable: cp.Variable, solver: str, what: str) -> ConvexResult:
    """Solve with cvxpy and check: a violation above FEASIBILITY_TOL raises; 'optimal_inaccurate'
    within it warns (ConvexInaccurateWarning) and is reported in the result's status."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            problem.solve(solver=solver)
    except cp.error.SolverError as err:
        raise ConvexSolveError(f"{what}: solver {solver} failed: {err}") from err
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or variable.value is None:
        raise ConvexSolveError(f"{what}: solver {solver} ended with status {problem.status!r}, not optimal")
    violation = max((float(np.max(c.violation(), initial=0.0)) for c in problem.constraints), default=0.0)
    if violation > FEASIBILITY_TOL:
        raise ConvexSolveError(f"{what}: solver {solver} ended {problem.status!r} with constraints violated "
                               f"by {violation:.3g} (> {FEASIBILITY_TOL:g}), not optimal")
    if problem.status == cp.OPTIMAL_INACCURATE:
        warnings.warn(f"{what}: solver {solver} reported optimal_inaccurate (constraint residual "
                      f"{violation:.3g}, objective {problem.value:.10g})", ConvexInaccurateWarning, stacklevel=3)
    return ConvexResult(np.asarray(variable.value), float(problem.value), problem.status, solver, violation,
                        seconds=time.perf_counter() - start)


def _svm_constraints(L, S: np.ndarray) -> list:
    """Equal logits on each support, and a margin of 1 over every off-support logit."""
    S = check_support(S)
    t = cp.Variable(S.shape[1])  # the common in-support logit of each context
    top = np.ones((S.shape[0], 1)) @ cp.reshape(t, (1, S.shape[1]), order="C")
    return [cp.multiply(S, L - top) == 0, cp.multiply(1 - S, L - top + 1) <= 0]


def check_support(S) -> np.ndarray:
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or not np.all((S == 0) | (S == 1)) or np.any(S.sum(0) == 0):
        raise ValueError("the support S must be a (V, m) 0/1 matrix with a non-empty support per column")
    return S


class LogitsProblem:
    """min_L CE(L) + lambda ||L||_*, set up once; ``solve(lam)`` warm-starts from the previous solve.

    solver None or "FISTA": accelerated proximal gradient. Each step is a gradient step on CE with
    step 1/Lip, Lip = max_j pi_j / 2 (the softmax Hessian's norm is at most 1/2), then singular-value
    soft-thresholding by lambda/Lip; momentum restarts when it points uphill. It stops when the
    duality gap is below ``tol`` relative to max(1, objective): the dual point comes from the
    gradient G = grad CE(L) scaled into {||G||_op <= lambda}; the dual value is
    sum_j pi_j H(q_j) with q_j = p_j + t (softmax(l_j) - p_j), a mixture that stays a distribution.
    Solve a path from large to small lambda: each solve starts from the last.
    "CVXPY": the same problem in cvxpy, solver sized by ``choose_solver``; "CLARABEL" / "SCS": that one.
    """

    def __init__(self, targets: NTPTargets, solver: str | None = None, *, tol: float = GAP_TOL,
                 max_iter: int = 200_000):
        self.targets = targets
        self.solver = "FISTA" if solver is None or solver.upper() == "FISTA" else solver.upper()
        self.tol, self.max_iter = tol, max_iter
        v, m = targets.vocab_size, targets.num_contexts
        self.P = np.zeros((v, m))  # (V, m) dense targets
        self.P[targets.tokens, targets.contexts] = targets.probs
        self.pi = np.asarray(targets.pi, dtype=np.float64)  # (m,)
        self._solved: list[tuple[float, np.ndarray]] = []  # (ln lambda, L) of the last two solves
        self._cvx = None

    def solve(self, lam: float) -> ConvexResult:
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
            raise ValueError(f"lambda must be positive and finite, got {lam}")
        if self.solver == "FISTA":
            result = self._fista(float(lam))
        else:
            result = self._cvxpy(float(lam))
        self._solved = [*self._solved[-1:], (math.log(lam), result.solution)]
        return result

    def _warm_start(self, lam: float) -> np.ndarray:
        """The previous solution, moved along the path: L_lambda grows linearly in ln(1/lambda)
        (L_in + ln(1/lambda) L_mm), so the secant through the last two solves extrapolates it."""
        if not self._solved:
            return np.zeros_like(self.P)
        if len(self._solved) == 1:
            return self._solved[-1][1].copy()
        (a, la), (b, lb) = self._solved
        if a == b:
            return lb.copy()
        return lb + (lb - la) * ((math.log(lam) - b) / (b - a))

    def path(self, lams) -> list[ConvexResult]:
        """Solutions at each lambda (given order), solved from the largest down with warm starts."""
        order = sorted(range(len(lams)), key=lambda i: -lams[i])
        out: dict[int, ConvexResult] = {}
        for i in order:
            out[i] = self.solve(lams[i])
        return [out[i] for i in range(len(lams))]

    def objective(self, L: np.ndarray, lam: float) -> float:
        return self._ce(L) + lam * float(np.linalg.svd(L, compute_uv=False).sum())

    def duality_gap(self, L: np.ndarray, lam: float) -> float:
        """Objective minus the dual value of the feasible dual point built from grad CE(L) (>= 0)."""
        soft = softmax(L, axis=0)  # (V, m)
        grad = self.pi * (soft - self.P)
        op = float(np.linalg.norm(grad, 2))
        t = min(1.0, lam / op) if op > 0 else 1.0
        q = self.P + t * (soft - self.P)  # (V, m) columns are distributions
        plogp = np.zeros_like(q)
        np.multiply(q, np.log(q, where=q > 0, out=np.zeros_like(q)), out=plogp, where=q > 0)
        dual = float(-(self.pi * plogp.sum(0)).sum())
        return self.objective(L, lam) - dual

    def _ce(self, L: np.ndarray) -> float:
        return float((self.pi * (logsumexp(L, axis=0) - (self.P * L).sum(0))).sum())

    def _fista(self, lam: float) -> ConvexResult:
        start = time.perf_counter()
        lip = 0.5 * float(self.pi.max())
        step = 1.0 / lip
        x = self._warm_start(lam)
        y, t = x.copy(), 1.0
        gap = math.inf
        for it in range(self.max_iter + 1):
            if it % 25 == 0:
                gap = self.duality_gap(x, lam)
                if gap <= self.tol * max(1.0, abs(self.objective(x, lam))):
                    break
            grad = self.pi * (softmax(y, axis=0) - self.P)
            u, sv, vt = np.linalg.svd(y - step * grad, full_matrices=False)
            sv = np.maximum(sv - step * lam, 0.0)
            r = int((sv > 0).sum())
            x_new = (u[:, :r] * sv[:r]) @ vt[:r]
            if float(((y - x_new) * (x_new - x)).sum()) > 0:  # momentum points uphill: restart
                y, t = x_new.copy(), 1.0
            else:
                t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
                y = x_new + ((t - 1.0) / t_new) * (x_new - x)
                t = t_new
            x = x_new
        else:
            raise ConvexSolveError(f"nuclear-norm logits at lambda={lam:g}: FISTA did not reach a duality gap "
                                   f"of {self.tol:g} in {self.max_iter} iterations (gap {gap:.3g})")
        return ConvexResult(x, self.objective(x, lam), "optimal", "FISTA", gap, it, time.perf_counter() - start)

    def _cvxpy(self, lam: float) -> ConvexResult:
        if self._cvx is None:
            v, m = self.P.shape
            param, var = cp.Parameter(nonneg=True), cp.Variable((v, m))
            ce = self.pi @ cp.log_sum_exp(var, axis=0) - cp.sum(cp.multiply(self.pi * self.P, var))
            self._cvx = (cp.Problem(cp.Minimize(ce + param * cp.normNuc(var))), param, var,
                         choose_solver(v + m, None if self.solver == "CVXPY" else self.solver))
        problem, param, var, solver = self._cvx
        param.value = lam
        return _solve(problem, var, solver, f"nuclear-norm logits at lambda={lam:g}")


def solve_logits(targets: NTPTargets, lam: float, *, solver: str | None = None) -> np.ndarray:
    """L_lambda (V, m) = argmin CE(L) + lambda ||L||_*. For sweeps, reuse a LogitsProblem."""
    return LogitsProblem(targets, solver).solve(lam).solution


def ntp_svm_result(S: np.ndarray, *, solver: str | None = None) -> ConvexResult:
    """The NTP-SVM solved with cvxpy (solver sized by ``choose_solver``), then made exactly feasible:
    each context's in-support logits are set to their mean and L is scaled so that the smallest
    margin is 1. The objective moves by the solver's own residual (reported in ``residual``)."""
    S = check_support(S)
    L = cp.Variable(S.shape)
    problem = cp.Problem(cp.Minimize(cp.normNuc(L)), _svm_constraints(L, S))
    raw = _solve(problem, L, choose_solver(sum(S.shape), solver), "NTP-SVM")
    polished = _make_svm_feasible(raw.solution, S)
    value = float(np.linalg.svd(polished, compute_uv=False).sum())
    return ConvexResult(polished, value, raw.status, raw.solver, raw.residual, seconds=raw.seconds)


def _make_svm_feasible(L: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Equal in-support logits (their column mean), then the smallest margin scaled to exactly 1."""
    top = (L * S).sum(0) / S.sum(0)  # (m,) common in-support logit
    L = np.where(S > 0, top, L)
    off = np.where(S > 0, -np.inf, L).max(0)  # (m,) largest off-support logit (-inf: full support)
    margins = top - off
    finite = np.isfinite(margins)
    if not finite.any():
        return L - top  # every support is the whole vocabulary: L_mm = 0
    smallest = float(margins[finite].min())
    if smallest <= 0:
        raise ConvexSolveError(f"NTP-SVM: the solver's answer has a margin of {smallest:.3g} <= 0")
    return L / smallest


def ntp_svm(S: np.ndarray, *, solver: str | None = None) -> np.ndarray:
    """L_mm (V, m): the minimum nuclear-norm logits with equal in-support logits and margins >= 1."""
    return ntp_svm_result(S, solver=solver).solution


def linear_ntp_svm(S: np.ndarray, H: np.ndarray, *, solver: str | None = None) -> ConvexResult:
    """W^mm (V, d) = argmin ||W||_F s.t. W H meets the NTP-SVM constraints (H (d, m) fixed)."""
    H = np.asarray(H, dtype=np.float64)
    W = cp.Variable((np.shape(S)[0], H.shape[0]))
    problem = cp.Problem(cp.Minimize(cp.sum_squares(W)), _svm_constraints(W @ H, S))
    return _solve(problem, W, choose_solver(0, solver), "NTP-SVM with fixed H (not NTP-separable?)")


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
    return _solve(problem, W, choose_solver(0, solver), "finite component with fixed H (not NTP_H-compatible?)")


def hull_distances(W: np.ndarray, *, solver: str | None = None) -> np.ndarray:
    """(K,) dist(w_k, conv{w_j : j != k}) for the rows of W (K, d); their minimum is rho(W), the quantity
    the softmax code maximizes (Jiang et al., ICML 2024)."""
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or len(W) < 2:
        raise ValueError(f"W must be (K, d) with K >= 2 rows, got shape {W.shape}")
    out = np.empty(len(W))
    for k in range(len(W)):
        others = np.delete(W, k, axis=0)  # (K-1, d)
        a = cp.Variable(len(others), nonneg=True)
        problem = cp.Problem(cp.Minimize(cp.sum_squares(W[k] - others.T @ a)), [cp.sum(a) == 1])
        point = _solve(problem, a, choose_solver(0, solver), "distance to a convex hull").solution @ others
        out[k] = np.linalg.norm(W[k] - point)
    return out
