"""The unconstrained-features models of next-token prediction and their soft-label cross-entropy.

    CE(W, H) = sum_j pi_j [ logsumexp_z (W h_j + b)_z  -  sum_z p_jz (W h_j + b)_z ]

The target term touches only the non-zeros of P. The logsumexp over the vocabulary is taken in
chunks of rows of W by a custom autograd function that keeps only the (B,) logsumexp between
forward and backward and recomputes each chunk's softmax there, so no m x V logits matrix is ever
held: m = 100,000 contexts and V = 50,000 tokens fit a GPU.
"""

from __future__ import annotations

import torch

from .targets import NTPTargets

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


def layer_norm_columns(H: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters on each column h_j (norm ~ sqrt(d))."""
    return torch.nn.functional.layer_norm(H.T, (H.shape[0],)).T


def sphere_columns(H: torch.Tensor, radius: float) -> torch.Tensor:
    """Each column h_j scaled to norm ``radius`` (a zero column stays 0)."""
    return radius * H / H.norm(dim=0, keepdim=True).clamp_min(1e-300)


# The feature models (train_ufm's ``features``): how the context features meet the word embeddings.
FEATURE_MODELS = ("free", "deep_linear", "perturbed", "normalized", "fixed_h")


class UFMModel(torch.nn.Module):
    """Word embeddings W (V, d) and context features, one module for the whole UFM family:

    - free: H (d, m) a parameter (today's UFM);
    - deep linear (``depth`` = L >= 1): features W_L ... W_1 H, every factor trained (Dang et al. 2023);
    - perturbed (``beta`` > 0): H kept near the anchor ``h0`` by (beta/2)||H - H0||^2 (Tirer et al. 2023);
    - normalized: features and/or words on a sphere of radius ``radius`` (Jiang et al. 2024);
    - fixed H (``fix_h``): H = ``h0`` frozen, only W trained (Thrampoulidis 2024), or, with ``depth``,
      W and the layers on top of the fixed inputs H (a deep linear network on given inputs);
    - ``words`` given: W frozen at it (a fixed classifier, e.g. a simplex ETF).
    ``feature_norm`` / ``word_norm``: None, "layernorm" (Laurent et al. 2024) or "sphere".
    """

    def __init__(self, vocab_size: int, num_contexts: int, dim: int, *, bias: bool = False,
                 feature_norm: str | None = None, word_norm: str | None = None, radius: float = 1.0,
                 depth: int = 0, layer_init: str = "identity", beta: float = 0.0, h0: torch.Tensor | None = None, fix_h: bool = False,
                 words: torch.Tensor | None = None, init_scale: float = 0.1,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64):
        super().__init__()
        # Drawn on the CPU from the generator, so a seed gives the same start on any device.
        W = init_scale * torch.randn(vocab_size, dim, generator=generator, dtype=dtype)
        H = init_scale * torch.randn(dim, num_contexts, generator=generator, dtype=dtype) if h0 is None \
            else h0.to(dtype).clone()
        # Frozen factors are buffers: they move with .to() and get no gradient.
        if words is None:
            self.W = torch.nn.Parameter(W)
        else:
            self.register_buffer("W", words.to(dtype).clone())
        if fix_h:
            self.register_buffer("H", H)
        else:
            self.H = torch.nn.Parameter(H)
        # Deep linear factors start near the identity (a product of L small random matrices vanishes),
        # or, "random", small as a network on fixed inputs does (the sequential learning of Saxe et al.).
        eye = torch.eye(dim, dtype=dtype) if layer_init == "identity" else torch.zeros(dim, dim, dtype=dtype)
        self.layers = torch.nn.ParameterList(
            eye + init_scale * torch.randn(dim, dim, generator=generator, dtype=dtype) / dim ** 0.5 for _ in range(depth))
        self.beta = beta
        if beta > 0:
            self.register_buffer("anchor", H.clone())  # H0
        self.bias = torch.nn.Parameter(torch.zeros(vocab_size, dtype=dtype)) if bias else None
        self.feature_norm, self.word_norm, self.radius, self.depth = feature_norm, word_norm, radius, depth
        self._decay_w = words is None and word_norm is None  # W trained and not normalized: ridge on it
        self._decay_h = not fix_h and feature_norm is None

    def _norm(self, X: torch.Tensor, how: str | None) -> torch.Tensor:
        if how == "layernorm":
            return layer_norm_columns(X)
        return sphere_columns(X, self.radius) if how == "sphere" else X

    def words(self) -> torch.Tensor:
        """The word embeddings that meet the features, (V, d)."""
        return self.W if self.word_norm is None else self._norm(self.W.T, self.word_norm).T

    def layer_features(self, batch: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The features after each layer of the deep linear model: [H, W_1 H, ..., W_L ... W_1 H] (d, B)."""
        out = [self.H if batch is None else self.H[:, batch]]
        for layer in self.layers:
            out.append(layer @ out[-1])
        return out

    def features(self, batch: torch.Tensor | None = None) -> torch.Tensor:
        """The context features that meet W, (d, B)."""
        H = self.H if batch is None else self.H[:, batch]
        if self.depth:
            for layer in self.layers:
                H = layer @ H
        return H if self.feature_norm is None else self._norm(H, self.feature_norm)

    def penalty(self, weight_decay: float, feature_decay: float, batch: torch.Tensor | None = None,
                scale: float = 1.0) -> torch.Tensor | float:
        """(lambda_W/2)(||W||^2 + sum_l ||W_l||^2) + (lambda_H/2)||H||^2 + (beta/2)||H - H0||^2, leaving
        out frozen and normalized factors; the per-context terms of a minibatch are scaled by ``scale``.
        (The step's hot path: flags are read from plain attributes set once.)"""
        total = 0.0
        if self._decay_w:
            total = total + (0.5 * weight_decay) * self.W.square().sum()
        if self.depth:
            for layer in self.layers:
                total = total + (0.5 * weight_decay) * layer.square().sum()
        if self._decay_h or self.beta > 0:
            H = self.H if batch is None else self.H[:, batch]
            if self._decay_h:
                total = total + (0.5 * scale * feature_decay) * H.square().sum()
            if self.beta > 0:
                anchor = self.anchor if batch is None else self.anchor[:, batch]
                total = total + (0.5 * scale * self.beta) * (H - anchor).square().sum()
        return total
