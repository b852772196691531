"""Label smoothing in the UFM (Guo et al., "Cross Entropy versus Label Smoothing: A Neural Collapse
Perspective", TMLR 2025): the closed-form global minimizer and the curvature that sets how fast
gradient descent collapses to it.

Balanced one-hot targets (``ufm.targets.one_hot([n] * K)``: N = K n contexts, uniform pi), no bias,
d >= K - 1, the toolkit's objective

    (1/N) sum_i CE((1 - eps) e_{y_i} + eps 1/K, W h_i) + (lambda_W/2)||W||^2 + (lambda_H/2)||H||^2.

At a global minimizer the features collapse to their class means, which form a simplex ETF with
the classifier's rows (Zhu et al. 2021 for eps = 0; Zhou et al. 2022 and Guo et al. 2025 with
smoothing). Written with the margin Delta = w_y.h - w_c.h (c != y), the CE to the smoothed target of
an ETF is log(1 + (K-1) e^-Delta) + eps (K-1)/K Delta, and the cheapest norms that give Delta (AM-GM,
with lambda_W ||W||^2 = lambda_H ||H||^2 at the optimum) cost (K-1) sqrt(lambda_W lambda_H n) Delta. So

    f(Delta) = log(1 + (K-1) e^-Delta) + (K-1) (eps/K + sqrt(lambda_W lambda_H n)) Delta,

minimized at Delta* = log((K-1)(1 - r)/r), r = (K-1)(eps/K + sqrt(lambda_W lambda_H n)), if r < (K-1)/K
(else W = H = 0). Smoothing lowers the margin and the norms (the target's own log-odds cap it).

The within-class block of the Hessian at the minimizer (perturbations of H that sum to zero in each
class, an invariant subspace) is (1/N) W^T S W + lambda_H I, S = diag(p) - p p^T the softmax curvature
at the minimizer's logits. Its smallest eigenvalue mu sets the asymptotic rate of NC1 under GD with
step lr: Tr S_W shrinks by (1 - lr mu)^2 a step. Smoothing keeps p less peaked, so mu grows with eps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize_scalar

from .theory import etf_classifier


@dataclass(frozen=True)
class ETFMinimizer:
    """A global minimizer of the balanced UFM that is a simplex ETF: its margin, norms and objective."""

    num_classes: int
    per_class: int
    weight_decay: float
    feature_decay: float
    margin: float  # Delta* = w_y.h_y - w_c.h_y (0 when the minimizer is W = H = 0)
    feature_norm: float  # ||h_i||
    classifier_norm: float  # ||w_c||
    objective: float  # the objective's value at the minimizer

    @property
    def collapsed_to_zero(self) -> bool:
        return self.margin == 0.0


@dataclass(frozen=True)
class SmoothedETF(ETFMinimizer):
    """The closed-form global minimizer under CE with label smoothing ``eps``."""

    eps: float = 0.0


def _decays(num_classes: int, per_class: int, weight_decay: float, feature_decay: float | None):
    K, n = int(num_classes), int(per_class)
    if K < 2 or n < 1:
        raise ValueError(f"need K >= 2 classes and n >= 1 contexts per class, got K = {K}, n = {n}")
    lam_w = float(weight_decay)
    lam_h = lam_w if feature_decay is None else float(feature_decay)
    if not (lam_w > 0 and lam_h > 0 and math.isfinite(lam_w * lam_h)):
        raise ValueError(f"the closed form needs weight_decay and feature_decay > 0, got {lam_w}, {lam_h}")
    return K, n, lam_w, lam_h


def _norms(K: int, n: int, lam_w: float, lam_h: float, margin: float) -> tuple[float, float]:
    """||h||, ||w|| of the cheapest ETF with ``margin``: a b = (K-1) margin / K, lambda_W b^2 = lambda_H n a^2."""
    scale = (K - 1) * margin / K  # w_y . h_y
    return math.sqrt(scale * math.sqrt(lam_w / (lam_h * n))), math.sqrt(scale * math.sqrt(lam_h * n / lam_w))


def etf_minimizer(num_classes: int, per_class: int, weight_decay: float, feature_decay: float | None,
                  margin_loss: Callable[[float], float]) -> ETFMinimizer:
    """For a loss whose global minimizer is a simplex ETF (CE, focal, ... : Zhou et al. 2022): the margin
    minimizing margin_loss(Delta) + (K-1) sqrt(lambda_W lambda_H n) Delta, by a bounded search on
    [0, 200] (0: the zero minimizer), and the norms and objective there."""
    K, n, lam_w, lam_h = _decays(num_classes, per_class, weight_decay, feature_decay)
    c = (K - 1) * math.sqrt(lam_w * lam_h * n)
    best = minimize_scalar(lambda m: margin_loss(m) + c * m, bounds=(0.0, 200.0), method="bounded",
                           options=dict(xatol=1e-12))
    margin, objective = float(best.x), float(best.fun)
    if margin_loss(0.0) <= objective:
        margin, objective = 0.0, margin_loss(0.0)
    a, b = _norms(K, n, lam_w, lam_h, margin)
    return ETFMinimizer(K, n, lam_w, lam_h, margin, a, b, objective)


def smoothed_etf(num_classes: int, per_class: int, weight_decay: float, feature_decay: float | None = None,
                 eps: float = 0.0) -> SmoothedETF:
    """Delta*, the norms and the objective of the global minimizer (module docstring); eps = 0 is plain CE."""
    K, n, lam_w, lam_h = _decays(num_classes, per_class, weight_decay, feature_decay)
    if not 0 <= eps < 1:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    r = (K - 1) * (eps / K + math.sqrt(lam_w * lam_h * n))
    if r >= (K - 1) / K:  # f is increasing from Delta = 0: the zero solution
        return SmoothedETF(K, n, lam_w, lam_h, 0.0, 0.0, 0.0, math.log(K), eps)
    margin = math.log((K - 1) * (1 - r) / r)
    objective = math.log1p((K - 1) * math.exp(-margin)) + r * margin
    return SmoothedETF(K, n, lam_w, lam_h, margin, *_norms(K, n, lam_w, lam_h, margin), objective, eps)


def smoothed_etf_factors(opt: ETFMinimizer, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A minimizer as arrays: W (K, d) and H (d, K n), contexts in ``one_hot``'s order (class-major)."""
    E = etf_classifier(opt.num_classes, dim)  # (K, d) unit rows
    labels = np.repeat(np.arange(opt.num_classes), opt.per_class)
    return opt.classifier_norm * E, opt.feature_norm * E[labels].T


def within_class_curvature(opt: SmoothedETF) -> np.ndarray:
    """Eigenvalues of the within-class Hessian block (1/N) W^T S W + lambda_H I at the minimizer, ascending
    (K - 1 of them: the features' span; the rest of R^d adds lambda_H only)."""
    K, N = opt.num_classes, opt.num_classes * opt.per_class
    W, H = smoothed_etf_factors(opt, K - 1)
    z = W @ H[:, 0]  # (K,) the logits of a class-0 context; every class is the same up to relabelling
    p = np.exp(z - z.max())
    p /= p.sum()
    S = np.diag(p) - np.outer(p, p)  # (K, K)
    return np.linalg.eigvalsh(W.T @ S @ W / N) + opt.feature_decay


def nc1_rate(opt: SmoothedETF, lr: float) -> float:
    """-d ln(Tr S_W)/dt under GD with step ``lr`` near the minimizer: -2 ln(1 - lr mu_min)."""
    mu = float(within_class_curvature(opt)[0])
    if not 0 < lr * mu < 1:
        raise ValueError(f"lr {lr} x mu {mu:.3g} must lie in (0, 1) for a monotone contraction")
    return -2.0 * math.log1p(-lr * mu)
