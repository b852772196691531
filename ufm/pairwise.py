"""Tiled sweep over all pairs of classes: K x K quantities reduced as they are made.

One GEMM per tile, G = M_a M_b^T, feeds every pairwise quantity (distances from
||a||^2 + ||b||^2 - 2 a.b, cosines from G / (||a|| ||b||)); only tiles with a <= b are visited, and
each quantity is folded into streaming moments (Chan merge of per-tile centered moments) before the
next tile, so memory is a few T x T buffers whatever K is. Every elementwise step writes into those
preallocated buffers: on a CPU, allocating a fresh T x T tensor per step costs as much as the GEMM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class Moments:
    """Streaming count, mean and centered second moment (population variance) of a stream of values.

    State stays on the values' device as 0-d float64 tensors, so a GPU sweep never synchronizes.
    """

    def __init__(self, device: torch.device):
        self.n = 0
        self.mean = torch.zeros((), dtype=torch.float64, device=device)
        self.m2 = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, values: torch.Tensor, scratch: torch.Tensor | None = None) -> None:
        """Fold in a block of values (two passes over the block, then a Chan merge)."""
        n_b = values.numel()
        if n_b == 0:
            return
        mean_b = values.sum() / n_b
        centered = torch.sub(values, mean_b, out=scratch) if scratch is not None else values - mean_b
        flat = centered.reshape(-1)
        m2_b = torch.dot(flat, flat)
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta * delta * (self.n * n_b / n)
        self.n = n

    def result(self, scale: float = 1.0, shift: float = 0.0) -> tuple[float, float]:
        """(mean, std) of ``scale * x + shift`` over everything added."""
        if self.n == 0:
            return math.nan, math.nan
        mean = float(self.mean) * scale + shift
        std = math.sqrt(max(float(self.m2) / self.n, 0.0)) * abs(scale)
        return mean, std


def _inverse_or_nan(norm: float) -> float:
    """1 / norm; NaN when the norm is 0 (all means equal, or W M^T = 0): the error is undefined."""
    return 1.0 / norm if norm > 0 else math.nan


def _upper_flat_index(t: int, device: torch.device, cache: dict[int, torch.Tensor]) -> torch.Tensor:
    """Flat indices of the strict upper triangle of a t x t tile (a gather, cheaper than a mask)."""
    if t not in cache:
        rows, cols = torch.triu_indices(t, t, 1, device=device)
        cache[t] = rows * t + cols
    return cache[t]


@dataclass(frozen=True)
class PairwiseResult:
    num_pairs: int
    cdnv: tuple[float, float]  # (mean, std) of CDNV over pairs
    cos: tuple[float, float]  # (mean, std) of cos(m_a, m_b)
    log_kernel: tuple[float, float]  # (mean, std) of log(1 / ||m^_a - m^_b||)
    riesz: tuple[float, float] | None  # (mean, std) of ||m^_a - m^_b||^-s, when asked
    etf_error: float  # || M M^T / ||M M^T||_F - E ||_F
    dual_error: float | None  # || W M^T / ||W M^T||_F - E ||_F, with a classifier
    per_class: PerClassPairs | None = None  # with per_class=True


@dataclass(frozen=True)
class PerClassPairs:
    """Each class against every other, reduced per row in the same sweep."""

    cdnv_sum: torch.Tensor  # (K,) sum over c' != c of (s_c + s_c') / ||mu_c - mu_c'||^p (twice the CDNV)
    nearest: torch.Tensor  # (K,) int64: row index of the nearest other class mean
    nearest_d2: torch.Tensor  # (K,) its squared distance ||mu_c - mu_nearest||^2


def pairwise_sweep(
    centered: torch.Tensor,  # (K, D) float64: class means minus the global mean
    var_traces: torch.Tensor,  # (K,) float64
    *,
    cdnv_power: float,
    tile_size: int,
    riesz_s: float | None = None,
    classifier: torch.Tensor | None = None,  # (K, D) rows w_c matching ``centered``
    per_class: bool = False,
) -> PairwiseResult:
    """All-pairs statistics of class means in one tiled sweep (see SCIENCE.md section 2).

    E = (I - 11^T/K) / sqrt(K-1) is the normalized simplex-ETF Gram. The Frobenius norms that
    normalize M M^T and W M^T come from D x D Grams (||M M^T||_F^2 = ||M^T M||_F^2), so the
    residuals are summed directly, tile by tile, without the cancellation of 2 - 2 <G, E> / ||G||.
    ``per_class`` also reduces each tile per row and per column (PerClassPairs): what ufm.class_table
    reports, at no second pass over the pairs.
    """
    k, _ = centered.shape
    dev = centered.device
    sq = centered.square().sum(1)  # (K,) ||m_c||^2
    inv_norm = sq.rsqrt()  # (K,); a zero-norm mean gives inf, hence NaN cosines (documented)
    gram = centered.T @ centered  # (D, D)
    etf_scale = _inverse_or_nan(float(torch.linalg.matrix_norm(gram)))
    e_off = -1.0 / (k * math.sqrt(k - 1))  # off-diagonal entry of E
    e_diag_shift = 1.0 / math.sqrt(k - 1)  # E_cc - E_off
    if classifier is not None:
        dual_scale = _inverse_or_nan(math.sqrt(max(float((classifier.T @ classifier * gram).sum()), 0.0)))

    t = min(tile_size, k)
    bufs = [torch.empty(t, t, dtype=torch.float64, device=dev) for _ in range(4)]
    triu_cache: dict[int, torch.Tensor] = {}
    m_cdnv, m_cos, m_log = Moments(dev), Moments(dev), Moments(dev)
    m_riesz = Moments(dev) if riesz_s is not None else None
    etf_sq = torch.zeros((), dtype=torch.float64, device=dev)
    dual_sq = torch.zeros((), dtype=torch.float64, device=dev)
    if per_class:
        cdnv_sum = torch.zeros(k, dtype=torch.float64, device=dev)
        nearest = torch.zeros(k, dtype=torch.long, device=dev)
        nearest_d2 = torch.full((k,), math.inf, dtype=torch.float64, device=dev)

    def residual_sq(a: torch.Tensor, scale: float, diagonal: bool, out: torch.Tensor) -> torch.Tensor:
        """sum over the tile of (scale * a - E)^2; E's diagonal sits on the tile's diagonal."""
        r = torch.mul(a, scale, out=out).sub_(e_off)
        if diagonal:
            r.diagonal().sub_(e_diag_shift)
        flat = r.reshape(-1)
        return torch.dot(flat, flat)

    starts = range(0, k, t)
    for a0 in starts:
        a = slice(a0, min(a0 + t, k))
        for b0 in starts:
            if b0 < a0:
                continue
            b = slice(b0, min(b0 + t, k))
            ta, tb = a.stop - a.start, b.stop - b.start
            g, x, y, scratch = (buf[:ta, :tb] for buf in bufs)
            diagonal = a0 == b0

            def fold(moments: Moments, values: torch.Tensor) -> None:
                # Diagonal tiles hold each pair twice and the class with itself: keep a < b only.
                if diagonal:
                    moments.add(values.reshape(-1).take(_upper_flat_index(ta, dev, triu_cache)))
                else:
                    moments.add(values, scratch)

            torch.mm(centered[a], centered[b].T, out=g)  # (ta, tb) m_a . m_b
            etf_sq += residual_sq(g, etf_scale, diagonal, x) * (1 if diagonal else 2)
            if classifier is not None:
                dual_sq += residual_sq(torch.mm(classifier[a], centered[b].T, out=y), dual_scale, diagonal, x)
                if not diagonal:
                    yt = bufs[2][:tb, :ta]
                    dual_sq += residual_sq(torch.mm(classifier[b], centered[a].T, out=yt), dual_scale, False, bufs[1][:tb, :ta])

            # Cosines, then log(2 - 2 cos) = 2 log ||m^_a - m^_b|| (the log kernel, up to -1/2).
            torch.mul(g, inv_norm[a, None], out=x).mul_(inv_norm[None, b])
            fold(m_cos, x)
            torch.mul(x, -2.0, out=y).add_(2.0).clamp_min_(0.0).log_()
            fold(m_log, y)
            if m_riesz is not None:
                fold(m_riesz, torch.mul(y, -0.5 * riesz_s, out=x).exp_())

            # CDNV: (sigma2_a + sigma2_b) / (2 ||mu_a - mu_b||^p), with squared distances from G.
            d2 = g.mul_(-2.0).add_(sq[a, None]).add_(sq[None, b]).clamp_min_(0.0)
            if per_class:  # nearest other class, before d2 becomes a power of the distance
                _nearest_in_tile(y.copy_(d2), a, b, diagonal, nearest, nearest_d2)
            if cdnv_power != 2.0:
                d2.pow_(cdnv_power / 2.0)
            cdnv = torch.add(var_traces[a, None], var_traces[None, b], out=x).div_(d2)
            fold(m_cdnv, cdnv)
            if per_class:
                if diagonal:
                    cdnv.diagonal().zero_()  # a class with itself is no pair
                cdnv_sum[a] += cdnv.sum(1)
                if not diagonal:
                    cdnv_sum[b] += cdnv.sum(0)

    return PairwiseResult(
        num_pairs=m_cos.n,
        cdnv=m_cdnv.result(scale=0.5),
        cos=m_cos.result(),
        log_kernel=m_log.result(scale=-0.5),
        riesz=m_riesz.result() if m_riesz is not None else None,
        etf_error=math.sqrt(float(etf_sq)),
        dual_error=math.sqrt(float(dual_sq)) if classifier is not None else None,
        per_class=PerClassPairs(cdnv_sum, nearest, nearest_d2) if per_class else None,
    )


def _nearest_in_tile(d2: torch.Tensor, a: slice, b: slice, diagonal: bool, nearest: torch.Tensor,
                     nearest_d2: torch.Tensor) -> None:
    """Fold one tile of squared distances (rows a, columns b; overwritten) into the running nearest
    other class of every row and, off the diagonal, of every column."""
    if diagonal:
        d2.diagonal().fill_(math.inf)
    for rows, axis, offset in ((a, 1, b.start), (b, 0, a.start)) if not diagonal else ((a, 1, b.start),):
        best = d2.min(axis)
        closer = best.values < nearest_d2[rows]
        nearest_d2[rows] = torch.where(closer, best.values, nearest_d2[rows])
        nearest[rows] = torch.where(closer, best.indices + offset, nearest[rows])
