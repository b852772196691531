"""Closed-form predictions for the NTP unconstrained-features model (SCIENCE.md sections 3 and 5).

References: Zhao, Behnia, Vakilian, Thrampoulidis, "Implicit geometry of next-token prediction",
COLM 2024 (L_in, L_mm, S~, subspace collapse); Thrampoulidis et al., "Imbalance trouble", NeurIPS
2022 (SELI); Papyan, Han, Donoho, PNAS 2020 (simplex ETF).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .targets import NTPTargets


def simplex_etf(num_classes: int) -> np.ndarray:
    """(K, K) rows: K unit vectors with pairwise cosine -1/(K-1) (in the subspace orthogonal to 1)."""
    if num_classes < 2:
        raise ValueError(f"a simplex ETF needs at least 2 classes, got {num_classes}")
    e = np.eye(num_classes) - 1.0 / num_classes
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def simplex_etf_gram(num_classes: int) -> np.ndarray:
    """(K, K) Gram of a unit simplex ETF: K/(K-1) (I - 11^T/K)."""
    k = num_classes
    return k / (k - 1) * (np.eye(k) - 1.0 / k)


def etf_error_floor(num_classes: int, dim: int) -> float:
    """The smallest ETF error K class means in R^D can have: sqrt(2 - 2 sqrt(D / (K - 1))) when
    D < K - 1, else 0.

    The normalized Gram G = M M^T / ||M M^T||_F has rank <= D and the ETF target E = (I - 11^T/K) /
    sqrt(K - 1) has K - 1 equal eigenvalues, so ||G - E||_F^2 = 2 - 2 <G, E> and <G, E> is at most
    sqrt(D / (K - 1)), reached by G = P / sqrt(D) with P a rank-D projection inside E's range."""
    if num_classes < 2 or dim < 1:
        raise ValueError(f"need K >= 2 classes and D >= 1, got K={num_classes}, D={dim}")
    if dim >= num_classes - 1:
        return 0.0
    return math.sqrt(2.0 - 2.0 * math.sqrt(dim / (num_classes - 1)))


def sparse_component_values(targets: NTPTargets) -> np.ndarray:
    """L_in on the support, (nnz,) aligned with targets.tokens / targets.contexts (any size)."""
    logp = np.log(targets.probs)
    mean = np.bincount(targets.contexts, weights=logp, minlength=targets.num_contexts) / targets.support_sizes
    return logp - mean[targets.contexts]


def sparse_component(targets: NTPTargets) -> np.ndarray:
    """L_in (V, m): log p_jz minus its mean over the support S_j, on the support; 0 off it."""
    L = np.zeros((targets.vocab_size, targets.num_contexts))
    L[targets.tokens, targets.contexts] = sparse_component_values(targets)
    return L


def project_f(L: np.ndarray, S: np.ndarray) -> np.ndarray:
    """P_F(L): in-support entries minus their column mean over the support; 0 off the support."""
    k = S.sum(0)
    mean = (L * S).sum(0) / k
    return (L - mean) * S


def centered_support(S: np.ndarray) -> np.ndarray:
    """S~ = (I - 11^T/V) S: always NTP-SVM feasible with margins exactly 1."""
    S = np.asarray(S, dtype=np.float64)
    return S - S.mean(0, keepdims=True)


@dataclass(frozen=True)
class SupportCertificate:
    exact: bool  # S~ is the NTP-SVM solution L_mm
    max_off_support: float  # largest off-support entry of U V^T (must be <= 0 for exactness)
    polar: np.ndarray  # (V, m) polar factor U V^T of S~


def support_certificate(S: np.ndarray, tol: float = 1e-9) -> SupportCertificate:
    """Is S~ exactly L_mm? Dual certificate: the off-support entries of the polar factor U V^T of
    S~ must all be <= 0 (Zhao et al. 2024). ``tol`` absorbs rounding."""
    S = np.asarray(S, dtype=np.float64)
    st = centered_support(S)
    u, s, vt = np.linalg.svd(st, full_matrices=False)
    r = int((s > s.max() * 1e-10).sum())
    polar = u[:, :r] @ vt[:r]
    off = polar[S == 0]
    worst = float(off.max()) if off.size else -np.inf
    return SupportCertificate(exact=worst <= tol, max_off_support=worst, polar=polar)


def one_hot_lmm(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """L_mm of one-hot labels: Z^ = (I - 11^T/K) Y, Y (K, m) the label matrix."""
    y = np.zeros((num_classes, len(labels)))
    y[labels, np.arange(len(labels))] = 1.0
    return y - y.mean(0, keepdims=True)


@dataclass(frozen=True)
class PredictedGrams:
    words: np.ndarray  # (V, V) G_W proportional to (L L^T)^(1/2)
    contexts: np.ndarray  # (m, m) G_H proportional to (L^T L)^(1/2)


def predicted_grams(L: np.ndarray) -> PredictedGrams:
    """Limit geometry of the factors of L (L_mm, or S~ as its proxy): with L = U Sigma V^T,
    W = U Sigma^(1/2), H = Sigma^(1/2) V^T, so W W^T = U Sigma U^T and H^T H = V Sigma V^T.
    For one-hot labels L = Z^ this is SELI (Thrampoulidis et al. 2022); balanced: a simplex ETF."""
    u, s, vt = np.linalg.svd(np.asarray(L, dtype=np.float64), full_matrices=False)
    return PredictedGrams(words=(u * s) @ u.T, contexts=(vt.T * s) @ vt)


def seli(counts) -> PredictedGrams:
    """SELI Grams of one-hot labels with counts[c] examples of class c (context order: by class)."""
    counts = np.asarray(counts)
    labels = np.repeat(np.arange(len(counts)), counts)
    return predicted_grams(one_hot_lmm(labels, len(counts)))


def factor(L: np.ndarray, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Balanced factors W = U Sigma^(1/2) (V, r), H = Sigma^(1/2) V^T (r, m) of L."""
    u, s, vt = np.linalg.svd(np.asarray(L, dtype=np.float64), full_matrices=False)
    r = dim or int((s > s.max() * 1e-10).sum())
    root = np.sqrt(s[:r])
    return u[:, :r] * root, root[:, None] * vt[:r]


def gram_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine between two matrices as vectors (Frobenius): 1 when proportional."""
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def cosine_matrix(rows: np.ndarray) -> np.ndarray:
    """(n, n) pairwise cosines of the rows of ``rows`` (n, d); a zero row has cosine 0."""
    unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-300)
    return unit @ unit.T


def gram_to_cosines(gram: np.ndarray) -> np.ndarray:
    """The cosines a Gram matrix (n, n) implies: G_ab / sqrt(G_aa G_bb)."""
    d = np.sqrt(np.maximum(np.diag(gram), 1e-300))
    return gram / np.outer(d, d)


def offdiag_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the off-diagonal (upper-triangle) entries of two (n, n) matrices."""
    iu = np.triu_indices(len(a), 1)
    return float(np.corrcoef(a[iu], b[iu])[0, 1])


# Directions of W whose singular value is below this fraction of the largest are left out of the
# subspace-collapse measure: W^+ would blow up solver noise (1e-8..1e-6 of the top) and optimizer
# leftovers (~1e-3 of the top after Adam) into the largest terms of the ratio. Balanced factors of
# L have singular values sqrt(sigma_i(L)), so this keeps every direction of L above 1e-4 of its top.
SUBSPACE_RANK_RTOL = 1e-2


@dataclass(frozen=True)
class SubspaceCollapse:
    ratio: float  # mean over same-support pairs of ||P(h_j - h_j')|| / ||P h_j|| (0: full collapse)
    unprojected: float  # the same without P: ||h_j - h_j'|| / ||h_j||
    rank: int  # directions of W kept (singular values above rank_rtol of the largest)
    pairs: int  # same-support pairs averaged over


def subspace_collapse(W: np.ndarray, H: np.ndarray, targets: NTPTargets, *,
                      rank_rtol: float = SUBSPACE_RANK_RTOL) -> SubspaceCollapse:
    """Subspace collapse of same-support contexts (Zhao et al., COLM 2024).

    W (V, d) is truncated to its numerical rank r (singular values > rank_rtol * the largest) and the
    features H (d, m) are read in W's r kept row directions (the only ones the logits see). For
    each support S, P projects out span{W_r^+ (e_z - e_z') : z, z' in S}: the in-support logit
    differences, which carry each context's own probabilities. What remains should coincide within
    a group of contexts of the same support. NaN when W or H is zero, or no group has two contexts.
    """
    W, H = np.asarray(W, dtype=np.float64), np.asarray(H, dtype=np.float64)
    u, s, vt = np.linalg.svd(W, full_matrices=False)
    rank = int((s > rank_rtol * s[0]).sum()) if s.size and s[0] > 0 else 0
    coords = vt[:rank] @ H  # (r, m) features in W's kept row directions
    pinv = u[:, :rank].T / s[:rank, None]  # (r, V) W_r^+ in those coordinates
    ratios, raw = [], []
    for group in targets.support_groups():
        if len(group) < 2:
            continue
        sup = targets.tokens[targets.contexts == group[0]]
        ph = (_complement_projector(pinv, sup) @ coords[:, group]).T  # (g, r)
        a, b = np.triu_indices(len(group), 1)
        ratios.append(_pair_ratios(ph, a, b))
        raw.append(_pair_ratios(H[:, group].T, a, b))
    if not ratios or rank == 0:
        return SubspaceCollapse(math.nan, math.nan if not raw else _mean(raw), rank, sum(map(len, ratios)))
    return SubspaceCollapse(_mean(ratios), _mean(raw), rank, sum(map(len, ratios)))


def subspace_collapse_ratio(W: np.ndarray, H: np.ndarray, targets: NTPTargets, *,
                            rank_rtol: float = SUBSPACE_RANK_RTOL) -> float:
    """``subspace_collapse(...).ratio``: the measure alone."""
    return subspace_collapse(W, H, targets, rank_rtol=rank_rtol).ratio


def _pair_ratios(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||x_a - x_b|| / ||x_a|| for the pairs (a, b); NaN where x_a is zero (nothing to compare)."""
    num = np.linalg.norm(x[a] - x[b], axis=1)
    den = np.linalg.norm(x[a], axis=1)
    out = np.full(len(a), math.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _mean(chunks: list[np.ndarray]) -> float:
    values = np.concatenate(chunks)
    return float(values.mean()) if values.size and not np.isnan(values).any() else math.nan


def _complement_projector(pinv: np.ndarray, support: np.ndarray) -> np.ndarray:
    """I - Q Q^T, Q an orthonormal basis of span{pinv (e_z - e_z') : z, z' in support}."""
    diffs = pinv[:, support[1:]] - pinv[:, support[:1]]  # (r, k-1)
    r = pinv.shape[0]
    if diffs.shape[1] == 0 or not np.any(diffs):
        return np.eye(r)
    q, sv, _ = np.linalg.svd(diffs, full_matrices=False)
    q = q[:, sv > sv.max() * 1e-10]
    return np.eye(r) - q @ q.T


# ---- the UFM family's closed forms (SCIENCE.md section 5) -------------------------------------


def etf_classifier(num_classes: int, dim: int) -> np.ndarray:
    """(K, d) unit rows with pairwise cosine -1/(K-1): a simplex ETF in the first K-1 coordinates."""
    if dim < num_classes - 1:
        raise ValueError(f"a simplex ETF of {num_classes} classes needs d >= K - 1 = {num_classes - 1}, got d = {dim}")
    rows, _ = factor(simplex_etf_gram(num_classes), num_classes - 1)  # (K, K-1), rows W W^T = Gram
    return np.pad(rows, ((0, 0), (0, dim - num_classes + 1)))


@dataclass(frozen=True)
class MSEFrame:
    """The global optimum of the bias-free imbalanced MSE UFM (Dang et al., ICML 2023), per class k: an
    orthogonal frame (W W^T and every layer's class-mean Gram diagonal) with these diagonals."""

    s2: np.ndarray  # (K,) (W W^T)_kk; W W^T is diagonal
    feature_gram: np.ndarray  # (K,) (Hbar^T Hbar)_kk of the features that meet W; diagonal too
    logits: np.ndarray  # (K,) (W Hbar)_kk, the class's own logit
    layer_means: np.ndarray  # (depth + 1, K) squared norm of class k's mean after each layer (first: H)
    collapsed: np.ndarray  # (K,) bool: the class's W row and means are 0


def imbalanced_mse_frame(counts, weight_decay: float, feature_decay: float | None = None, *,
                         depth: int = 0) -> MSEFrame:
    """min (1/2N)||W W_L ... W_1 H - Y||^2 + (lambda_W/2)(||W||^2 + sum_l ||W_l||^2) + (lambda_H/2)||H||^2,
    n_k examples of class k, d >= K (depth 0: the free UFM).

    Depth 0 has the closed form s_k^2 = max(0, sqrt(n_k lambda_H / lambda_W) - N lambda_H), zero when
    n_k <= N^2 lambda_W lambda_H (SCIENCE.md section 5). With depth L the optimum is the same
    orthogonal frame in every layer (Dang et al.); the classes decouple, and with balanced factors
    (lambda_W s^2 = lambda_W t_l^2 = lambda_H n_k u^2 = c at the optimum, by AM-GM) each class's logit z
    minimizes the scalar n_k/(2N)(z - 1)^2 + ((L+2)/2) (z^2 lambda_W^(L+1) lambda_H n_k)^(1/(L+2)) over
    [0, 1], whose global minimum (it can be z = 0: collapse) is found numerically."""
    n = np.asarray(counts, dtype=np.float64)
    lam_w = float(weight_decay)
    lam_h = lam_w if feature_decay is None else float(feature_decay)
    if n.ndim != 1 or np.any(n < 1) or not (lam_w > 0 and lam_h > 0):
        raise ValueError("counts must be >= 1 and both decays positive (the frame is defined for lambda > 0)")
    if int(depth) < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    N, L = n.sum(), int(depth)
    if L == 0:
        s2 = np.maximum(0.0, np.sqrt(n * lam_h / lam_w) - N * lam_h)
        z = s2 / (s2 + N * lam_h)
    else:
        z = np.array([_deep_class_logit(nk, N, L, lam_w, lam_h) for nk in n])
    c = (z ** 2 * lam_w ** (L + 1) * lam_h * n) ** (1.0 / (L + 2))  # each factor's lambda * sv^2
    s2 = c / lam_w
    u2 = c / (lam_h * n)  # squared norm of the class mean of H
    layer_means = np.stack([u2 * s2 ** l for l in range(L + 1)])
    return MSEFrame(s2=s2, feature_gram=layer_means[-1], logits=z, layer_means=layer_means, collapsed=z == 0)


def _deep_class_logit(nk: float, N: float, L: int, lam_w: float, lam_h: float) -> float:
    from scipy.optimize import minimize_scalar

    def f(z: float) -> float:
        return nk / (2 * N) * (z - 1) ** 2 + (L + 2) / 2 * (z * z * lam_w ** (L + 1) * lam_h * nk) ** (1.0 / (L + 2))

    best = minimize_scalar(f, bounds=(0.0, 1.0), method="bounded", options=dict(xatol=1e-14))
    return float(best.x) if f(best.x) < f(0.0) else 0.0


def softmax_code_rho(num_classes: int, dim: int) -> float:
    """rho of the softmax code (Jiang et al., ICML 2024), max over unit W of min_k dist(w_k, conv{w_j, j != k}),
    where it is known in closed form: K <= d + 1 the simplex ETF, K/(K-1); d = 2 the regular K-gon,
    1 - cos(2 pi / K); K = 2d the cross-polytope, 1."""
    K, d = num_classes, dim
    if K <= d + 1:
        return K / (K - 1)
    if d == 2:
        return 1.0 - math.cos(2.0 * math.pi / K)
    if K == 2 * d:
        return 1.0
    raise ValueError(f"no closed form for the softmax code of K = {K} classes in d = {d} (known: K <= d + 1, d = 2, K = 2d)")


def span_residual(x: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares coefficients of x (d,) on the rows of ``basis`` (r, d), and ||residual|| / ||x||."""
    coef, *_ = np.linalg.lstsq(np.asarray(basis, dtype=np.float64).T, np.asarray(x, dtype=np.float64), rcond=None)
    norm = float(np.linalg.norm(x))
    return coef, float(np.linalg.norm(x - basis.T @ coef)) / norm if norm > 0 else math.nan
