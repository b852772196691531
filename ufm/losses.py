"""The UFM family's losses: small objects on the logits l_j = W h_j + b of a batch, each pi-weighted
over contexts. ``fit`` (ufm.fit) trains any feature model against any of them.

    CrossEntropy(label_smoothing=eps)  sum_j pi_j CE((1 - eps) p_j + eps 1/V, l_j)   (Szegedy et al. 2016)
    MSE()                              sum_j pi_j (1/2) ||l_j - p_j||^2  (one-hot, uniform pi: (1/2N)||WH - Y||^2)
    Mixup(alpha, base)                 the base CE of mixed pairs: features lam h_i + (1 - lam) h_k, target
                                       lam p_i + (1 - lam) p_k, lam ~ Beta(alpha, alpha) per pair
                                       (Zhang et al. 2018; Fisher, Meng & Papyan 2024)

A loss is written ``loss(W, F, bias, batch, chunk_entries=...)`` with W (V, d), F (d, B) and the batch's
sparse targets; ``prepare`` lets a loss change the batch before it is scored (mixup mixes it). Add a loss
as one class here and one entry in ``LOSSES``. No V x m matrix is formed by CE or MSE: the CE's
logsumexp is chunked over the vocabulary, the MSE's ||l_j||^2 comes from the d x d Gram of W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import torch

# torch (and ufm.model) are imported where a loss is computed, so that the command line can read the
# registry (its names and parameters) without loading them.


class Batch(NamedTuple):
    """A batch's targets: pi_b (B,) and the COO non-zeros (tokens, columns into the batch, probs) (nnz_b,)."""

    pi: torch.Tensor
    tokens: torch.Tensor
    cols: torch.Tensor
    probs: torch.Tensor


class Loss:
    """The base of the family's losses (see the module docstring)."""

    name: ClassVar[str]

    def __call__(self, W, F, bias, batch: Batch, *, chunk_entries: int | None) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, F: torch.Tensor, batch: Batch, rng: np.random.Generator) -> tuple[torch.Tensor, Batch]:
        """The features and targets the loss scores: unchanged, except for a loss that augments them."""
        return F, batch

    def describe(self) -> dict:
        return dict(name=self.name, **{k: v.describe() if isinstance(v, Loss) else v for k, v in vars(self).items()})


@dataclass(frozen=True)
class CrossEntropy(Loss):
    """Soft-label CE, sum_j pi_j [lse(l_j) - q_j . l_j], to the target q_j = (1 - eps) p_j + eps 1/V.
    Checked against: the simplex ETF (Papyan et al. 2020), SELI, L_in + L_mm (Zhao et al. 2024);
    with smoothing, the closed-form minimizer of ufm.smoothing (Guo et al. 2025)."""

    label_smoothing: float = 0.0
    name: ClassVar[str] = "ce"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def __call__(self, W, F, bias, batch: Batch, *, chunk_entries: int | None) -> torch.Tensor:
        from .model import soft_label_ce, support_logits

        ce = soft_label_ce(W, F, bias, *batch, chunk_entries=chunk_entries)
        if self.label_smoothing == 0:
            return ce
        # CE to (1-eps) p + eps/V = CE(p) + eps sum_j pi_j (p_j . l_j - mean_z l_zj).
        mean_logit = W.mean(0) @ F + (bias.mean() if bias is not None else 0.0)  # (B,)
        return ce + self.label_smoothing * ((batch.pi[batch.cols] * batch.probs
                                             * support_logits(W, F, bias, batch.tokens, batch.cols)).sum()
                                            - (batch.pi * mean_logit).sum())


@dataclass(frozen=True)
class MSE(Loss):
    """sum_j pi_j (1/2)(||l_j||^2 - 2 p_j . l_j + ||p_j||^2), ||l_j||^2 from W^T W (d, d). Checked against:
    Dang et al.'s imbalanced frame at any depth; Tirer et al.'s perturbed optimum (ufm.perturbation)."""

    name: ClassVar[str] = "mse"

    def __call__(self, W, F, bias, batch: Batch, *, chunk_entries: int | None) -> torch.Tensor:
        import torch

        from .model import support_logits

        pi, tokens, cols, probs = batch
        sq = (F * ((W.T @ W) @ F)).sum(0)  # (B,) ||W h_j||^2
        if bias is not None:
            sq = sq + 2.0 * (bias @ W) @ F + bias.square().sum()
        cross = torch.zeros_like(sq).index_add_(0, cols, probs * support_logits(W, F, bias, tokens, cols))
        p2 = torch.zeros_like(sq).index_add_(0, cols, probs.square())
        return 0.5 * (pi * (sq - 2.0 * cross + p2)).sum()


@dataclass(frozen=True)
class Mixup(Loss):
    """The ``base`` CE of mixed pairs, lam ~ Beta(alpha, alpha) (module docstring). Checked against: the
    features' span g(lam) w_i + g(1 - lam) w_k with a fixed ETF classifier (Fisher et al. 2024).

    The objective recorded in a history is the base loss of the unmixed contexts."""

    alpha: float
    base: Loss = field(default_factory=CrossEntropy)
    name: ClassVar[str] = "mixup"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"mixup_alpha must be positive (Beta(alpha, alpha)), got {self.alpha}")
        if not isinstance(self.base, CrossEntropy):
            raise ValueError("undefined combination: mixup is defined here for the soft-label CE (Fisher et al. "
                             f"2024), not loss {getattr(self.base, 'name', self.base)!r}")

    def __call__(self, W, F, bias, batch: Batch, *, chunk_entries: int | None) -> torch.Tensor:
        return self.base(W, F, bias, batch, chunk_entries=chunk_entries)

    def prepare(self, F: torch.Tensor, batch: Batch, rng: np.random.Generator) -> tuple[torch.Tensor, Batch]:
        return mixup(F, batch, self.alpha, rng)


def mixup(H: torch.Tensor, batch: Batch, alpha: float, rng: np.random.Generator) -> tuple[torch.Tensor, Batch]:
    """Pair each context i of the batch with a random partner k = perm(i) and mix with lam_i ~ Beta(alpha, alpha):
    returns the mixed features (d, B) and the B mixed samples' targets, weighted pi_i.

    The mixed target lam_i p_i + (1 - lam_i) p_k keeps both supports, so its non-zeros are the batch's
    own entries (weight lam) and the partner's (weight 1 - lam), as separate COO entries."""
    import torch

    pi, tokens, cols, probs = batch
    B = H.shape[1]
    perm = torch.as_tensor(rng.permutation(B), device=H.device)
    lam = torch.as_tensor(rng.beta(alpha, alpha, size=B), dtype=H.dtype, device=H.device)  # (B,)
    mixed = H * lam + H[:, perm] * (1 - lam)
    owner = torch.empty_like(perm)
    owner[perm] = torch.arange(B, device=H.device)  # the mixed sample that takes context k as partner
    partner_cols = owner[cols]
    return mixed, Batch(pi, torch.cat([tokens, tokens]), torch.cat([cols, partner_cols]),
                        torch.cat([probs * lam[cols], probs * (1 - lam[partner_cols])]))


@dataclass(frozen=True)
class Focal(Loss):
    """Focal loss (Lin et al. 2017) to the soft target: sum_j pi_j sum_z p_jz (1 - s_jz)^gamma (-log s_jz),
    s_j = softmax(l_j); gamma = 0 is the CE. Dense logits (V, B): for small problems. Checked against
    Zhou et al. 2022 ("Are All Losses Created Equal"): with weight decay on balanced one-hot targets the
    global minimizer is a simplex ETF whose margin minimizes the focal loss of one sample plus the
    cheapest norms' ridge (``etf_optimum``)."""

    gamma: float = 2.0
    name: ClassVar[str] = "focal"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")

    def __call__(self, W, F, bias, batch: Batch, *, chunk_entries: int | None) -> torch.Tensor:
        import torch

        pi, tokens, cols, probs = batch
        logits = W @ F + (bias[:, None] if bias is not None else 0.0)  # (V, B)
        log_s = torch.log_softmax(logits, 0)[tokens, cols]  # (nnz,) on the support
        weight = (1 - log_s.exp()).clamp_min(0) ** self.gamma
        return -(pi[cols] * probs * weight * log_s).sum()

    def margin_loss(self, num_classes: int, margin: float) -> float:
        """One sample's focal loss at an ETF with own-minus-other logit ``margin``."""
        p = 1.0 / (1.0 + (num_classes - 1) * math.exp(-margin))
        return -((1 - p) ** self.gamma) * math.log(p)

    def etf_optimum(self, num_classes: int, per_class: int, weight_decay: float, feature_decay: float | None = None):
        """The ETF global minimizer's margin, norms and objective (ufm.smoothing.etf_minimizer)."""
        from .smoothing import etf_minimizer

        return etf_minimizer(num_classes, per_class, weight_decay, feature_decay,
                             lambda margin: self.margin_loss(num_classes, margin))


# name -> the loss's class (``train_ufm(loss=NAME)``, ``collapse simulate --loss NAME``)
LOSSES: dict[str, type[Loss]] = {"ce": CrossEntropy, "mse": MSE, "focal": Focal}
