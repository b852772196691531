"""Per-class figures of one set of statistics: what the scalar metrics average over.

``class_table(stats, W)`` gives, for every kept class c (centered means m_c = mu_c - mu_G): its
count and frequency rank, ||m_c||, the NC3 cosine cos(w_c, m_c), the dot product w_c . m_c, the
distance ||w_c/|w_c| - m_c/|m_c|||, the mean CDNV of c against every other kept class, and its
nearest other class with the distance ||mu_c - mu_c'||. The pairwise columns are reduced per row
inside the metrics' own tiled sweep (ufm.pairwise, ``per_class``): no K x K matrix is held, and
``metrics_and_classes`` gives both from one pass.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from .metrics import CollapseMetrics, MetricOptions, collapse_sweep
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
    # NC4 on held-out text, by true next token: positions where the nearest class mean is (hits)
    # or is not (misses) the model's own prediction; None when no held-out text was measured.
    nc4_hits: np.ndarray | None = None  # (K',) int64
    nc4_misses: np.ndarray | None = None  # (K',) int64

    def with_nc4(self, class_ids: np.ndarray, hits: np.ndarray, misses: np.ndarray) -> ClassTable:
        """The table with NC4 hits and misses per class, given for the classes ``class_ids``
        (a class of the table without held-out positions gets 0 and 0)."""
        index = {int(c): i for i, c in enumerate(np.asarray(class_ids).tolist())}
        pick = lambda v: np.array([v[index[c]] if c in index else 0 for c in self.class_id.tolist()], dtype=np.int64)  # noqa: E731
        return replace(self, nc4_hits=pick(np.asarray(hits)), nc4_misses=pick(np.asarray(misses)))

    def to_csv(self) -> str:
        names = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(names)
        for row in zip(*(getattr(self, n).tolist() for n in names)):
            writer.writerow(row)
        return buf.getvalue()


def class_table(stats: ClassStats, classifier=None, *, cdnv_power: float = 2.0, center: str = "uniform",
                min_count: int = 1, tile_size: int | None = None) -> ClassTable:
    """The per-class table of ``stats`` (options as in ``collapse_metrics``)."""
    return metrics_and_classes(stats, classifier, cdnv_power=cdnv_power, center=center, min_count=min_count,
                               tile_size=tile_size)[1]


def metrics_and_classes(stats: ClassStats, classifier=None, **options) -> tuple[CollapseMetrics, ClassTable]:
    """``collapse_metrics(stats, classifier, **options)`` and the per-class table, from one sweep over
    the pairs (a second sweep would double the cost of measuring a 50k-class state)."""
    metrics, c, pairs = collapse_sweep(stats, classifier, MetricOptions(**options), per_class=True)
    k = int(c.ids.numel())
    nan = torch.full_like(c.norms, float("nan"))
    dot, cos, dist = c.dual_vectors() if c.classifier is not None else (nan, nan, nan)
    rows = pairs.per_class
    order = torch.argsort(-c.counts, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, k + 1, device=order.device)
    as_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
    table = ClassTable(class_id=as_np(c.labels), count=as_np(c.counts), frequency_rank=as_np(rank), norm=as_np(c.norms),
                       nc3_cos=as_np(cos), dot=as_np(dot), dual_distance=as_np(dist),
                       cdnv_row_mean=as_np(rows.cdnv_sum / (2 * (k - 1))), nearest_class=as_np(c.labels[rows.nearest]),
                       nearest_distance=as_np(rows.nearest_d2.sqrt()))
    return metrics, table
