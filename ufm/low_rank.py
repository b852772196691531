"""Depth against neural collapse: the low-rank bias of the regularized deep linear UFM with CE
(Garrod & Keating, "The Persistence of Neural Collapse Despite Low-Rank Bias", NeurIPS 2025; for MSE
with ReLU layers, Sukenik, Lampert & Mondelli, NeurIPS 2024).

The toolkit's deep linear UFM on balanced one-hot targets, one context per class
(``ufm.targets.one_hot([1] * K)``, ``features="deep_linear"``, depth L, one lambda for every factor):

    (1/K) sum_k CE(Z e_k, k) + (lambda/2)(||W||^2 + sum_l ||W_l||^2 + ||H||^2),  Z = W W_L ... W_1 H  (K, K).

The cheapest F = L + 2 factors with product Z cost (F lambda / 2) sum_i sigma_i(Z)^(2/F), reached by
balanced factors that each carry sigma^(1/F) (AM-GM on the singular values): a Schatten-(2/F)
quasi-norm, which rewards low rank more the deeper the model. A "code" C (K, K) of margin 1 (each
column's own entry exceeds every other by at least 1) is compared at its best scale s:

    f(s) = (1/K) sum_k CE(s C e_k, k) + (F lambda / 2) s^(2/F) sum_i sigma_i(C)^(2/F).

Codes here: the collapse (DNC: I - 11^T/K, rank K - 1, the optimum at depth 0), the K-gon (rank 2)
and the cross-polytope (K even: classes at +-e_i, rank K/2). Where a lower-rank code costs less than
the collapse, the collapse is not the global minimum: that is the papers' claim, checked in the
toolkit's own objective by ``balanced_factors``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp


def schatten_cost(Z: np.ndarray, depth: int, weight_decay: float) -> float:
    """(F lambda/2) sum sigma_i(Z)^(2/F), F = depth + 2: the least ridge of F factors with product Z."""
    F = depth + 2
    return F * weight_decay / 2 * float(np.sum(_singular_values(Z) ** (2.0 / F)))


def _singular_values(Z: np.ndarray) -> np.ndarray:
    """The non-zero singular values: those above numpy's rank tolerance (sigma_max max(shape) eps), since a
    round-off 1e-17 raised to 2/F (1e-9 at F = 4) is not a small number."""
    sigma = np.linalg.svd(np.asarray(Z, dtype=np.float64), compute_uv=False)
    return sigma[sigma > sigma[0] * max(np.shape(Z)) * np.finfo(np.float64).eps] if sigma.size else sigma


def collapse_code(num_classes: int) -> np.ndarray:
    """(K, K) I - 11^T/K: the simplex ETF's logits, margin 1, rank K - 1."""
    return np.eye(num_classes) - 1.0 / num_classes


def polygon_code(num_classes: int) -> np.ndarray:
    """(K, K) classes on a regular K-gon in a plane: cos(2 pi (k - l)/K) / (1 - cos(2 pi/K)), margin 1, rank 2."""
    angle = 2 * np.pi * np.arange(num_classes) / num_classes
    return np.cos(angle[:, None] - angle[None, :]) / (1 - math.cos(2 * math.pi / num_classes))


def cross_polytope_code(num_classes: int) -> np.ndarray:
    """(K, K), K even: class i and i + K/2 at +e_i and -e_i; own logit 1, antipode -1, others 0; rank K/2."""
    if num_classes % 2:
        raise ValueError(f"a cross-polytope code needs an even number of classes, got {num_classes}")
    half = num_classes // 2
    e = np.eye(half)
    return np.block([[e, -e], [-e, e]])


CODES = {"collapse": collapse_code, "polygon": polygon_code, "cross-polytope": cross_polytope_code}


@dataclass(frozen=True)
class CodeObjective:
    code: str
    depth: int
    rank: int
    scale: float  # the best s
    ce: float  # the loss term at s
    objective: float  # the loss plus the least ridge at s


def code_objective(code: str, num_classes: int, depth: int, weight_decay: float) -> CodeObjective:
    """The objective of ``code`` at its best scale (module docstring), by a bounded search on ln s."""
    if not weight_decay > 0:
        raise ValueError(f"weight_decay must be > 0 (without it no scale is best), got {weight_decay}")
    C = CODES[code](num_classes)  # (K, K)
    F = depth + 2
    ridge = schatten_cost(C, depth, weight_decay)  # at scale 1; s C costs s^(2/F) times it

    best = minimize_scalar(lambda ls: one_hot_ce(math.exp(ls) * C) + ridge * math.exp(ls) ** (2.0 / F),
                           bounds=(-20.0, 20.0), method="bounded", options=dict(xatol=1e-12))
    s = math.exp(best.x)
    return CodeObjective(code, depth, len(_singular_values(C)), s, one_hot_ce(s * C), float(best.fun))


def one_hot_ce(Z: np.ndarray) -> float:
    """The loss term of one context per class: (1/K) sum_k CE(Z e_k, k), Z (K, K) logits."""
    return float(np.mean(logsumexp(Z, axis=0) - np.diag(Z)))


def balanced_factors(Z: np.ndarray, depth: int, dim: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """W (K, d), the layers [W_1 .. W_L] (d, d) and H (d, K) with W W_L ... W_1 H = Z and total ridge
    ``schatten_cost``: Z = U S V^T, every factor carries S^(1/F) (d >= rank Z)."""
    U, sigma, Vt = np.linalg.svd(np.asarray(Z, dtype=np.float64))
    r = int(np.sum(sigma > 1e-12 * sigma[0]))
    if dim < r:
        raise ValueError(f"Z has rank {r}; its factors need d >= {r}, got d = {dim}")
    root = np.zeros((dim, dim))
    root[:r, :r] = np.diag(sigma[:r] ** (1.0 / (depth + 2)))  # (d, d)
    H = root[:, :r] @ Vt[:r]  # (d, K)
    W = U[:, :r] @ root[:r]  # (K, d)
    return W, [root.copy() for _ in range(depth)], H


def numerical_rank(X: np.ndarray, tol: float = 1e-3) -> int:
    """Singular values above ``tol`` times the largest (0 for a zero matrix)."""
    sigma = np.linalg.svd(np.asarray(X, dtype=np.float64), compute_uv=False)
    return int(np.sum(sigma > tol * sigma[0])) if sigma.size and sigma[0] > 0 else 0


def effective_rank(X: np.ndarray) -> float:
    """exp of the entropy of the normalized singular values (Roy & Vetterli 2007): 1 for rank one."""
    sigma = np.linalg.svd(np.asarray(X, dtype=np.float64), compute_uv=False)
    p = sigma[sigma > 0] / sigma.sum()
    return float(np.exp(-(p * np.log(p)).sum()))
