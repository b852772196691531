"""The UFM family's losses on the logits l_j = W h_j + b, each pi-weighted over contexts:

    ce     sum_j pi_j [lse(l_j) - p_j . l_j]                     (soft-label cross-entropy)
    ce, label smoothing eps: the CE to (1 - eps) p_j + eps 1/V  (Szegedy et al. 2016)
    mse    sum_j pi_j (1/2) ||l_j - p_j||^2                      (one-hot, uniform pi: (1/2N)||WH - Y||^2)
    mixup  the CE of mixed pairs: features lam h_i + (1 - lam) h_k, target lam p_i + (1 - lam) p_k,
           lam ~ Beta(alpha, alpha) per pair (Zhang et al. 2018; Fisher, Meng & Papyan 2024)

No V x m matrix is formed: the MSE's ||l_j||^2 comes from the d x d Gram of W.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import soft_label_ce, support_logits

LOSSES = ("ce", "mse")


def data_loss(loss: str, W, H, bias, pi, tokens, cols, probs, *, label_smoothing: float = 0.0,
              chunk_entries: int | None) -> torch.Tensor:
    """The loss of the features H (d, B) against the sparse targets (tokens, cols, probs) of the batch."""
    if loss == "mse":
        return mse_loss(W, H, bias, pi, tokens, cols, probs)
    ce = soft_label_ce(W, H, bias, pi, tokens, cols, probs, chunk_entries=chunk_entries)
    if label_smoothing == 0:
        return ce
    # CE to (1-eps) p + eps/V = CE(p) + eps sum_j pi_j (p_j . l_j - mean_z l_zj).
    mean_logit = W.mean(0) @ H + (bias.mean() if bias is not None else 0.0)  # (B,)
    return ce + label_smoothing * ((pi[cols] * probs * support_logits(W, H, bias, tokens, cols)).sum()
                                   - (pi * mean_logit).sum())


def mse_loss(W, H, bias, pi, tokens, cols, probs) -> torch.Tensor:
    """sum_j pi_j (1/2)(||l_j||^2 - 2 p_j . l_j + ||p_j||^2) with ||l_j||^2 from W^T W (d, d)."""
    sq = (H * ((W.T @ W) @ H)).sum(0)  # (B,) ||W h_j||^2
    if bias is not None:
        sq = sq + 2.0 * (bias @ W) @ H + bias.square().sum()
    cross = torch.zeros_like(sq).index_add_(0, cols, probs * support_logits(W, H, bias, tokens, cols))
    p2 = torch.zeros_like(sq).index_add_(0, cols, probs.square())
    return 0.5 * (pi * (sq - 2.0 * cross + p2)).sum()


def mixup(H, pi, tokens, cols, probs, alpha: float, rng: np.random.Generator):
    """Pair each context i of the batch with a random partner k = perm(i) and mix with lam_i ~ Beta(alpha, alpha):
    returns (mixed features (d, B), pi, tokens, cols, probs) of the B mixed samples, weighted pi_i.

    The mixed target lam_i p_i + (1 - lam_i) p_k keeps both supports, so its non-zeros are the batch's
    own entries (weight lam) and the partner's (weight 1 - lam), as separate COO entries."""
    B = H.shape[1]
    perm = torch.as_tensor(rng.permutation(B), device=H.device)
    lam = torch.as_tensor(rng.beta(alpha, alpha, size=B), dtype=H.dtype, device=H.device)  # (B,)
    mixed = H * lam + H[:, perm] * (1 - lam)
    owner = torch.empty_like(perm)
    owner[perm] = torch.arange(B, device=H.device)  # the mixed sample that takes context k as partner
    partner_cols = owner[cols]
    return (mixed, pi, torch.cat([tokens, tokens]), torch.cat([cols, partner_cols]),
            torch.cat([probs * lam[cols], probs * (1 - lam[partner_cols])]))
