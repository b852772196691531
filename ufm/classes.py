"""Per-class figures of one set of statistics: what the scalar metrics average over.

``class_table(stats, W)`` gives, for every kept class c (centered means m_c = mu_c - mu_G): its
count and frequency rank, ||m_c||, the NC3 cosine cos(w_c, m_c), the dot product w_c . m_c, the
distance ||w_c/|w_c| - m_c/|m_c|||, the mean CDNV of c against every other kept class, and its
nearest other class with the distance ||mu_c - mu_c'||. The pairwise columns come from a tiled
sweep (rows of ``tile_size`` classes against all others): no K x K matrix is held.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, fields

import numpy as np
import torch

from ._validate import as_tensor, check_finite, check_shape
from .stats import ClassStats


@dataclass(frozen=True)
class ClassTable:
    """One entry per kept class, in class-id order; NaN where a column needs the classifier."""

    class_id: np.ndarray  # (K',) int64
    count: np.ndarray  # (K',) float64: n_c
    frequency_rank: np.ndarray  # (K',) int64: 1 = the most frequent kept class
    norm: np.ndarray  # (K',) ||m_c||
    nc3_cos: np.ndarray  # (K',) cos(w_c, m_c)
    dot: np.ndarray  # (K',) w_c . m_c
    dual_distance: np.ndarray  # (K',) ||w_c/|w_c| - m_c/|m_c|||
    cdnv_row_mean: np.ndarray  # (K',) mean over c' != c of (s_c + s_c') / (2 ||mu_c - mu_c'||^p)
    nearest_class: np.ndarray  # (K',) int64: the class id of the nearest other class mean
    nearest_distance: np.ndarray  # (K',) ||mu_c - mu_nearest||

    def to_csv(self) -> str:
        names = [f.name for f in fields(self)]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(names)
        for row in zip(*(getattr(self, n).tolist() for n in names)):
            writer.writerow(row)
        return buf.getvalue()


def class_table(stats: ClassStats, classifier=None, *, cdnv_power: float = 2.0, center: str = "uniform",
                min_count: int = 1, tile_size: int = 512) -> ClassTable:
    """The per-class table of ``stats`` (options as in ``collapse_metrics``)."""
    kept = torch.nonzero(stats.sample_counts >= min_count).flatten()  # (K',)
    k = int(kept.numel())
    if k < 2:
        raise ValueError(f"only {k} class(es) have at least min_count={min_count} samples; a table needs 2")
    means, counts, var = stats.means[kept], stats.counts[kept], stats.var_traces[kept]  # (K', D), (K',), (K',)
    g = means.mean(0) if center == "uniform" else (counts[:, None] * means).sum(0) / counts.sum()
    centered = means - g
    norms = centered.norm(dim=1)
    nan = torch.full_like(norms, float("nan"))
    cos, dot, dist = nan, nan, nan
    if classifier is not None:
        w = as_tensor(classifier, "classifier", device=stats.device, dtype=torch.float64)
        check_shape(w, "classifier", (stats.num_classes, stats.dim))
        check_finite(w, "classifier")
        w = w[kept]
        dot = (w * centered).sum(1)
        cos = dot / (w.norm(dim=1) * norms)
        dist = (w / w.norm(dim=1, keepdim=True) - centered / norms[:, None]).norm(dim=1)
    cdnv_mean, nearest, nearest_d = _row_sweep(means, var, cdnv_power, tile_size)
    order = torch.argsort(-counts, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, k + 1, device=order.device)
    as_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
    return ClassTable(class_id=as_np(kept), count=as_np(counts), frequency_rank=as_np(rank), norm=as_np(norms),
                      nc3_cos=as_np(cos), dot=as_np(dot), dual_distance=as_np(dist), cdnv_row_mean=as_np(cdnv_mean),
                      nearest_class=as_np(kept[nearest]), nearest_distance=as_np(nearest_d))


def _row_sweep(means: torch.Tensor, var: torch.Tensor, power: float, tile: int):
    """Per class: the mean CDNV against the others, and the nearest other mean (index, distance);
    ``tile`` rows at a time against all classes."""
    k = means.shape[0]
    sq = means.square().sum(1)  # (K,)
    cdnv_mean = torch.empty(k, dtype=torch.float64, device=means.device)
    nearest = torch.empty(k, dtype=torch.long, device=means.device)
    nearest_d = torch.empty(k, dtype=torch.float64, device=means.device)
    for start in range(0, k, tile):
        rows = slice(start, min(start + tile, k))
        d2 = (sq[rows, None] + sq[None, :] - 2.0 * means[rows] @ means.T).clamp_min(0.0)  # (t, K)
        self_mask = torch.zeros_like(d2, dtype=torch.bool)
        self_mask[torch.arange(d2.shape[0]), torch.arange(rows.start, rows.stop)] = True
        cdnv = (var[rows, None] + var[None, :]) / (2.0 * d2.pow(power / 2))
        cdnv_mean[rows] = cdnv.masked_fill(self_mask, 0.0).sum(1) / (k - 1)
        best = d2.masked_fill(self_mask, float("inf")).min(1)
        nearest[rows], nearest_d[rows] = best.indices, best.values.sqrt()
    return cdnv_mean, nearest, nearest_d
