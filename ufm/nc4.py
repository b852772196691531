"""NC4: does the model act as a nearest-class-mean classifier? (Papyan et al. 2020; Wu & Papyan 2024)

Agreement is the fraction of held-out samples whose nearest class mean (Euclidean, over kept
classes only) is the class the model predicts (its argmax). Given the true labels, samples whose
label is not a kept class are left out (Wu & Papyan's code counts only those positions). The
accumulator streams over batches and merges across shards like the statistics do.
"""

from __future__ import annotations

import torch

from .validate import as_tensor, check_finite, check_labels, check_positive_int, check_shape
from .metrics import kept_rows
from .stats import ClassStats

# Scores are computed for (batch x class-tile) blocks of at most this many float64 entries.
_BLOCK_ENTRIES = 1 << 24


def nearest_class_mean(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Index (into ``means``) of the nearest mean of each row: features (B, D), means (K, D) -> (B,).

    argmin_c ||h - mu_c||^2 = argmin_c (||mu_c||^2 - 2 h . mu_c), over class tiles with a running
    minimum, so a vocabulary-sized K needs no B x K matrix.
    """
    b = features.shape[0]
    sq = means.square().sum(1)  # (K,)
    best = torch.full((b,), float("inf"), dtype=torch.float64, device=features.device)
    best_idx = torch.zeros(b, dtype=torch.int64, device=features.device)
    tile = max(1, _BLOCK_ENTRIES // max(b, 1))
    for c0 in range(0, means.shape[0], tile):
        scores = torch.addmm(sq[None, c0:c0 + tile], features, means[c0:c0 + tile].T, alpha=-2.0)
        value, idx = scores.min(1)  # first index on ties, as argmin
        better = value < best
        best = torch.where(better, value, best)
        best_idx = torch.where(better, idx + c0, best_idx)
    return best_idx


class NC4Accumulator:
    """Streaming NC4 agreement against the class means of ``stats`` (kept classes only), with its
    hits and misses per kept class (by true label, when labels are given)."""

    def __init__(self, stats: ClassStats, *, min_count: int = 1, max_count: int | None = None, device=None):
        check_positive_int(min_count, "min_count")
        self.device = torch.device(device) if device is not None else stats.device
        self.num_classes = stats.label_space  # predictions and labels are class ids of the label space
        self.dim = stats.dim
        kept = kept_rows(stats, min_count, max_count)
        if kept.numel() < 1:
            raise ValueError(f"no class has at least min_count={min_count}"
                             + ("" if max_count is None else f" and at most max_count={max_count}") + " samples")
        self._class_ids = stats.ids[kept].to(self.device)  # (K',) class id of each kept mean
        self._slot = torch.full((self.num_classes,), -1, dtype=torch.int64, device=self.device)  # (K,)
        self._slot[self._class_ids] = torch.arange(kept.numel(), device=self.device)
        self._means = stats.means[kept].to(self.device)  # (K', D)
        self.hits = torch.zeros(kept.numel(), dtype=torch.int64, device=self.device)  # (K',) by true label
        self.seen = torch.zeros(kept.numel(), dtype=torch.int64, device=self.device)  # (K',)
        self.agree = 0
        self.total = 0

    def update(self, features, predictions, labels=None, *, only_kept: bool = True) -> NC4Accumulator:
        """features (B, D) held-out hidden states; predictions (B,) the model's argmax classes;
        labels (B,) the true next classes, optional: with them, the per-class hits are tallied and
        (``only_kept``) samples of classes that are not kept are left out of the agreement."""
        h = as_tensor(features, "features", device=self.device)
        check_shape(h, "features", (None, self.dim))
        check_finite(h, "features")
        pred = as_tensor(predictions, "predictions", device=self.device)
        check_shape(pred, "predictions", (h.shape[0],))
        check_labels(pred, self.num_classes, "predictions")
        slot = None
        if labels is not None:
            y = as_tensor(labels, "labels", device=self.device)
            check_shape(y, "labels", (h.shape[0],))
            check_labels(y, self.num_classes, "labels")
            slot = self._slot[y.long()]  # (B,) kept index of the true class, -1 if not kept
            if only_kept:
                keep = slot >= 0
                h, pred, slot = h[keep], pred[keep], slot[keep]
        if h.shape[0] == 0:
            return self
        ncc = self._class_ids[nearest_class_mean(h.to(torch.float64), self._means)]
        agrees = ncc == pred.long()  # (B,)
        self.agree += int(agrees.sum())
        self.total += h.shape[0]
        if slot is not None:
            counted = slot >= 0
            self.hits.index_add_(0, slot[counted], agrees[counted].long())
            self.seen.index_add_(0, slot[counted], torch.ones_like(slot[counted]))
        return self

    def per_class(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class ids, hits, misses), each (K',): NC4 by true next token over the kept classes."""
        return self._class_ids, self.hits, self.seen - self.hits

    def merge(self, other: NC4Accumulator) -> NC4Accumulator:
        if not torch.equal(self._class_ids, other._class_ids.to(self.device)):
            raise ValueError("cannot merge NC4 tallies against different kept classes")
        self.hits += other.hits.to(self.device)
        self.seen += other.seen.to(self.device)
        self.agree += other.agree
        self.total += other.total
        return self

    def compute(self) -> float:
        if self.total == 0:
            raise ValueError("NC4 agreement of an empty input: no held-out samples were seen")
        return self.agree / self.total


def nc4_agreement(features, predictions, stats: ClassStats, *, labels=None, min_count: int = 1,
                  max_count: int | None = None) -> float:
    """Fraction of samples whose nearest kept class mean equals the model's prediction; with
    ``labels``, over the samples whose true class is kept (Wu & Papyan 2024)."""
    acc = NC4Accumulator(stats, min_count=min_count, max_count=max_count)
    return acc.update(features, predictions, labels).compute()
