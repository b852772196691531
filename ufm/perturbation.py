"""The perturbed MSE UFM of Tirer, Huang & Niles-Weed, "Perturbation Analysis of Neural Collapse"
(ICML 2023), in the paper's units and in the toolkit's.

The paper minimizes, for K classes of n samples (N = K n) with one-hot Y (K, N),

    1/(2N) ||W H - Y||^2 + lambda_W/(2K) ||W||^2 + lambda_H/(2N) ||H||^2 + beta/(2N) ||H - H0||^2,

and ``train_ufm(loss="mse", features="perturbed")`` minimizes the same function written as
sum_j pi_j (1/2)||W h_j - y_j||^2 + (lambda_W'/2)||W||^2 + (lambda_H'/2)||H||^2 + (beta'/2)||H - H0||^2
with pi_j = 1/N: lambda_W' = lambda_W / K, lambda_H' = lambda_H / N, beta' = beta / N (``toolkit_units``).

Theorem 4.2 (near-collapse regime: H0 a collapsed minimizer plus a small perturbation, beta >>
max(1, lambda_H), lambda_H lambda_W < 1): the minimizer H moves linearly with the perturbation of H0,
H - H_bar = F (H0 - H_bar) + O(||H0 - H_bar||^2), and the blocks of F between the samples of two
classes have the singular values of ``theorem_4_2`` up to O(1/beta^2). ``anchor_response`` computes F
exactly for the toolkit's objective (the implicit function theorem, its Hessian by autograd), so the
two can be compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .losses import MSE, Batch
from .targets import one_hot


def toolkit_units(num_classes: int, per_class: int, *, lam_w: float, lam_h: float, beta: float) -> dict:
    """``train_ufm`` keywords (weight_decay, feature_decay, beta) of the paper's lambda_W, lambda_H, beta."""
    N = num_classes * per_class
    return dict(weight_decay=lam_w / num_classes, feature_decay=lam_h / N, beta=beta / N)


def collapsed_minimizer(num_classes: int, per_class: int, dim: int, *, lam_w: float, lam_h: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """A global minimizer (W (K, d), H (d, N)) of the unperturbed objective (beta = 0), paper units:
    W = s U and h_i = t u_{y_i} for orthonormal rows U, with s t = 1 - sqrt(lambda_W lambda_H) and
    lambda_W s^2 = lambda_H t^2 (the scalar problem (st - 1)^2/2 + lambda_W s^2/2 + lambda_H t^2/2).
    Zero when sqrt(lambda_W lambda_H) >= 1; needs d >= K."""
    K, n = num_classes, per_class
    if dim < K:
        raise ValueError(f"the orthogonal frame needs d >= K, got d={dim}, K={K}")
    p = max(0.0, 1.0 - math.sqrt(lam_w * lam_h))
    s = math.sqrt(p * math.sqrt(lam_h / lam_w))
    t = s * math.sqrt(lam_w / lam_h)
    U = np.eye(K, dim)  # (K, d) orthonormal rows
    return s * U, t * U.T[:, np.repeat(np.arange(K), n)]


@dataclass(frozen=True)
class BlockSingularValues:
    same_max: float  # largest singular value of a same-class block F_kk
    same_min: float  # smallest singular value of F_kk
    cross_max: float  # largest singular value of a cross-class block F_kj (k != j)
    cross_second: float  # its second singular value (0: rank 1)


def theorem_4_2(*, beta: float, lam_w: float, lam_h: float) -> BlockSingularValues:
    """The blocks' singular values Theorem 4.2 predicts (paper units), each up to O(1/beta^2)."""
    return BlockSingularValues(same_max=1.0, same_min=1.0 - math.sqrt(lam_h / lam_w) / beta,
                               cross_max=2.0 * lam_h * (1.0 - math.sqrt(lam_h * lam_w)) / beta, cross_second=0.0)


def anchor_response(num_classes: int, per_class: int, dim: int, *, beta: float, lam_w: float, lam_h: float
                    ) -> np.ndarray:
    """F = dH*/dH0 at H0 = a collapsed minimizer, for the toolkit's objective in its own units.

    At a minimizer z = (W, H) the gradient vanishes; differentiating in H0 gives Hess(z) dz/dH0 =
    beta' [0; I], so F = beta' (Hess^-1)_HH. H is ordered sample by sample (sample i, coordinate a at
    i d + a), so the (n d, n d) block (k, j) maps class j's perturbation to class k's response."""
    K, n, N = num_classes, per_class, num_classes * per_class
    units = toolkit_units(K, n, lam_w=lam_w, lam_h=lam_h, beta=beta)
    W0, H0 = collapsed_minimizer(K, n, dim, lam_w=lam_w, lam_h=lam_h)
    targets = one_hot([n] * K)
    data = Batch(*(torch.as_tensor(a) for a in (targets.pi, targets.tokens, targets.contexts, targets.probs)))
    anchor = torch.as_tensor(H0)

    def objective(z: torch.Tensor) -> torch.Tensor:
        W, H = z[:K * dim].reshape(K, dim), z[K * dim:].reshape(N, dim).T  # (K, d), (d, N)
        return (MSE()(W, H, None, data, chunk_entries=None)
                + 0.5 * units["weight_decay"] * W.square().sum() + 0.5 * units["feature_decay"] * H.square().sum()
                + 0.5 * units["beta"] * (H - anchor).square().sum())

    z = torch.cat([torch.as_tensor(W0).reshape(-1), anchor.T.reshape(-1)])
    hessian = torch.autograd.functional.hessian(objective, z).numpy()
    return units["beta"] * np.linalg.inv(hessian)[K * dim:, K * dim:]


def block_singular_values(F: np.ndarray, num_classes: int) -> BlockSingularValues:
    """Extremes over the blocks of ``anchor_response``: same-class largest and smallest, cross-class
    largest and the largest second singular value."""
    size = F.shape[0] // num_classes
    block = lambda k, j: np.linalg.svd(F[k * size:(k + 1) * size, j * size:(j + 1) * size], compute_uv=False)  # noqa: E731
    same = [block(k, k) for k in range(num_classes)]
    cross = [block(k, j) for k in range(num_classes) for j in range(num_classes) if j != k]
    return BlockSingularValues(same_max=float(max(s[0] for s in same)), same_min=float(min(s[-1] for s in same)),
                               cross_max=float(max(c[0] for c in cross)), cross_second=float(max(c[1] for c in cross)))
