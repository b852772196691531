"""The unconstrained-features models of next-token prediction and their soft-label cross-entropy.

    CE(W, H) = sum_j pi_j [ logsumexp_z (W h_j + b)_z  -  sum_z p_jz (W h_j + b)_z ]

The target term touches only the non-zeros of P. The logsumexp over the vocabulary is taken in
chunks of rows of W by a custom autograd function that keeps only the (B,) logsumexp between
forward and backward and recomputes each chunk's softmax there, so no m x V logits matrix is ever
held: m = 100,000 contexts and V = 50,000 tokens fit a GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .targets import NTPTargets

if TYPE_CHECKING:
    from .features import FeatureModel

# A logits chunk holds at most this many entries (2^25 float64 = 256 MiB).
CHUNK_ENTRIES = 1 << 25


class TargetTensors:
    """NTPTargets on a device: pi and the COO non-zeros of P, sorted by context."""

    def __init__(self, targets: NTPTargets, device: torch.device, dtype: torch.dtype):
        self.targets = targets
        self.pi = torch.as_tensor(targets.pi, dtype=dtype, device=device)  # (m,)
        self.tokens = torch.as_tensor(targets.tokens, device=device)  # (nnz,)
        self.contexts = torch.as_tensor(targets.contexts, device=device)  # (nnz,)
        self.probs = torch.as_tensor(targets.probs, dtype=dtype, device=device)  # (nnz,)
        self.entropy = targets.entropy

    def select(self, batch: torch.Tensor | None):
        """(pi_b (B,), tokens, columns into the batch, probs) for contexts ``batch`` (None: all)."""
        if batch is None:
            return self.pi, self.tokens, self.contexts, self.probs
        pos = torch.full_like(self.pi, -1, dtype=torch.int64)
        pos[batch] = torch.arange(len(batch), device=batch.device)
        col = pos[self.contexts]
        sel = col >= 0
        return self.pi[batch], self.tokens[sel], col[sel], self.probs[sel]


def _chunk_rows(vocab: int, batch: int, chunk_entries: int) -> int:
    return max(1, min(vocab, chunk_entries // max(batch, 1)))


class _WeightedLogSumExp(torch.autograd.Function):
    """sum_j weights_j logsumexp_z (W H + b)_{z j}, chunked over z; nothing V x B kept.

    When the whole vocabulary fits one chunk, the softmax is kept for backward instead of being
    recomputed: the same memory as dense autograd, one GEMM fewer."""

    @staticmethod
    def forward(ctx, W, H, bias, weights, rows):  # W (V, d), H (d, B), bias (V,) | None, weights (B,)
        if rows >= W.shape[0]:
            logits = W @ H if bias is None else torch.addmm(bias[:, None], W, H)  # (V, B)
            lse = torch.logsumexp(logits, 0)
            soft = logits.sub_(lse).exp_()  # (V, B)
        else:
            lse, soft = _chunked_lse(W, H, bias, rows), None
        ctx.save_for_backward(W, H, bias, weights, lse, soft)
        ctx.rows = rows
        return (weights * lse).sum()

    @staticmethod
    def backward(ctx, grad):
        W, H, bias, weights, lse, kept_soft = ctx.saved_tensors
        scale = weights * grad  # (B,)
        grad_w = torch.empty_like(W) if ctx.needs_input_grad[0] else None
        grad_h = torch.zeros_like(H) if ctx.needs_input_grad[1] else None
        grad_b = torch.empty_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        for v0 in range(0, W.shape[0], ctx.rows):
            w = W[v0:v0 + ctx.rows]  # (Vc, d)
            if kept_soft is not None:
                soft = kept_soft * scale  # (V, B)
            else:
                logits = w @ H if bias is None else torch.addmm(bias[v0:v0 + ctx.rows, None], w, H)
                soft = logits.sub_(lse).exp_().mul_(scale)  # (Vc, B): d/dlogits
            if grad_w is not None:
                torch.mm(soft, H.T, out=grad_w[v0:v0 + ctx.rows])
            if grad_h is not None:
                grad_h.addmm_(w.T, soft)
            if grad_b is not None:
                grad_b[v0:v0 + ctx.rows] = soft.sum(1)
        return grad_w, grad_h, grad_b, None, None


def _chunked_lse(W, H, bias, rows) -> torch.Tensor:
    """logsumexp over z of (W H + b)_{z j}, a running (max, sum) over row chunks: (B,)."""
    run_max = torch.full((H.shape[1],), -torch.inf, dtype=H.dtype, device=H.device)
    run_sum = torch.zeros_like(run_max)
    for v0 in range(0, W.shape[0], rows):
        w = W[v0:v0 + rows]
        logits = w @ H if bias is None else torch.addmm(bias[v0:v0 + rows, None], w, H)  # (Vc, B)
        new_max = torch.maximum(run_max, logits.max(0).values)
        run_sum = run_sum * (run_max - new_max).exp() + logits.sub_(new_max).exp_().sum(0)
        run_max = new_max
    return run_max + run_sum.log()


def support_logits(W, H, bias, tokens, cols) -> torch.Tensor:
    """l_zj = w_z . h_j (+ b_z) on the targets' non-zeros only, (nnz,): nothing V x m."""
    out = (W[tokens] * H[:, cols].T).sum(1)
    return out + bias[tokens] if bias is not None else out


def soft_label_ce(W, H, bias, pi, tokens, cols, probs, *, chunk_entries: int | None = CHUNK_ENTRIES):
    """CE = sum_j pi_j [lse(l_j) - p_j . l_j] for l_j = W h_j + b; H (d, B) holds the batch's columns.

    chunk_entries None computes dense logits with plain autograd (the reference path)."""
    target = (pi[cols] * probs * support_logits(W, H, bias, tokens, cols)).sum()
    if chunk_entries is None:
        logits = W @ H + (bias[:, None] if bias is not None else 0.0)  # (V, B)
        return (pi * torch.logsumexp(logits, 0)).sum() - target
    rows = _chunk_rows(W.shape[0], H.shape[1], chunk_entries)
    return _WeightedLogSumExp.apply(W, H, bias, pi, rows) - target


class UFMModel(torch.nn.Module):
    """A classifier (ufm.classifiers.Words: W (V, d), bias) and a feature model (ufm.features.Features:
    H (d, m), layers, anchor) built for one problem: the logits are words() @ features(batch) + bias."""

    def __init__(self, words, features):
        super().__init__()
        self.word_module, self.feature_module = words, features

    @property
    def W(self) -> torch.Tensor:
        return self.word_module.W

    @property
    def H(self) -> torch.Tensor:
        return self.feature_module.H

    @property
    def bias(self) -> torch.Tensor | None:
        return self.word_module.bias

    def words(self) -> torch.Tensor:
        """The word embeddings that meet the features, (V, d)."""
        return self.word_module.words()

    def features(self, batch: torch.Tensor | None = None) -> torch.Tensor:
        """The context features that meet W, (d, B)."""
        return self.feature_module.features(batch)

    def layer_features(self, batch: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.feature_module.layer_features(batch)

    def trained(self) -> list[torch.Tensor]:
        """The trained tensors in a fixed order: W, H, the layers, the bias (those that train)."""
        head = [p for p in (self.W,) if isinstance(p, torch.nn.Parameter)]
        return head + self.feature_module.trained() + ([self.bias] if self.bias is not None else [])

    def penalty(self, weight_decay: float, feature_decay: float, batch: torch.Tensor | None = None,
                scale: float = 1.0) -> torch.Tensor | float:
        """The classifier's ridge, then the feature model's terms (per-context ones scaled by ``scale``
        for a minibatch), added in that order."""
        total = 0.0
        for term in self.word_module.penalty_terms(weight_decay) + \
                self.feature_module.penalty_terms(weight_decay, feature_decay, batch, scale):
            total = total + term
        return total


def hold(module: torch.nn.Module, name: str, tensor: torch.Tensor, *, trains: bool) -> None:
    """``tensor`` as a trained parameter of ``module``, or as a frozen buffer (moved by .to(), no gradient)."""
    if trains:
        setattr(module, name, torch.nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


class Features(torch.nn.Module):
    """A feature model built for a problem: H (d, m) (a parameter, or a buffer when frozen), the model's
    trained layers and its anchor, with the features and the ridge of a batch of columns."""

    def __init__(self, model: FeatureModel, H: torch.Tensor, layers: list[torch.Tensor]):
        super().__init__()
        self.model = model
        hold(self, "H", H, trains=model.trains_h)
        self.layers = torch.nn.ParameterList(layers)
        for name, tensor in model.buffers(H).items():
            self.register_buffer(name, tensor)

    def features(self, batch: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.transform(self, self.H if batch is None else self.H[:, batch])

    def trained(self) -> list[torch.Tensor]:
        """H (unless frozen) and the layers, in that order."""
        return [p for p in (self.H, *self.layers) if isinstance(p, torch.nn.Parameter)]

    def initial_words(self, drawn: torch.Tensor) -> torch.Tensor:
        """The classifier's start: fit's draw (a model with its own head gives that instead)."""
        return drawn

    def layer_features(self, batch: torch.Tensor | None = None) -> list[torch.Tensor]:
        """H and every layer's output (d, B) (one entry without layers)."""
        return self.model.layer_outputs(self, self.H if batch is None else self.H[:, batch])

    def penalty_terms(self, weight_decay: float, feature_decay: float, batch, scale: float) -> list:
        H = self.H if batch is None else self.H[:, batch]
        return self.model.penalty_terms(self, weight_decay, feature_decay, H, batch, scale)
