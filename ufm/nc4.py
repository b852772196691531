"""NC4: does the model act as a nearest-class-mean classifier? (Papyan et al. 2020; Wu & Papyan 2024)

Agreement is the fraction of held-out samples whose nearest class mean (Euclidean, over kept
classes only) is the class the model predicts (its argmax). Given the true labels, samples whose
label is not a kept class are left out (Wu & Papyan's code counts only those positions). The
accumulator streams over batches and merges across shards like the statistics do.
"""

from __future__ import annotations

import torch

from .validate import as_tensor, check_finite, check_labels, check_positive_int, check_shape
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
    """Streaming NC4 agreement against the class means of ``stats`` (kept classes only)."""

    def __init__(self, stats: ClassStats, *, min_count: int = 1, device=None):
        check_positive_int(min_count, "min_count")
        self.device = torch.device(device) if device is not None else stats.device
        self.num_classes = stats.num_classes
        self.dim = stats.dim
        kept = torch.nonzero(stats.sample_counts >= min_count).flatten()
        if kept.numel() < 1:
            raise ValueError(f"no class has at least min_count={min_count} samples")
        self._class_ids = kept.to(self.device)  # (K',) class id of each kept mean
        self._is_kept = torch.zeros(stats.num_classes, dtype=torch.bool, device=self.device)  # (K,)
        self._is_kept[self._class_ids] = True
        self._means = stats.means[kept].to(self.device)  # (K', D)
        self.agree = 0
        self.total = 0

    def update(self, features, predictions, labels=None) -> NC4Accumulator:
        """features (B, D) held-out hidden states; predictions (B,) the model's argmax classes;
        labels (B,) the true next classes, optional: with them, samples of classes that are not
        kept are left out."""
        h = as_tensor(features, "features", device=self.device)
        check_shape(h, "features", (None, self.dim))
        check_finite(h, "features")
        pred = as_tensor(predictions, "predictions", device=self.device)
        check_shape(pred, "predictions", (h.shape[0],))
        check_labels(pred, self.num_classes, "predictions")
        if labels is not None:
            y = as_tensor(labels, "labels", device=self.device)
            check_shape(y, "labels", (h.shape[0],))
            check_labels(y, self.num_classes, "labels")
            keep = self._is_kept[y.long()]  # (B,)
            h, pred = h[keep], pred[keep]
        if h.shape[0] == 0:
            return self
        ncc = self._class_ids[nearest_class_mean(h.to(torch.float64), self._means)]
        self.agree += int((ncc == pred.long()).sum())
        self.total += h.shape[0]
        return self

    def merge(self, other: NC4Accumulator) -> NC4Accumulator:
        self.agree += other.agree
        self.total += other.total
        return self

    def compute(self) -> float:
        if self.total == 0:
            raise ValueError("NC4 agreement of an empty input: no held-out samples were seen")
        return self.agree / self.total


def nc4_agreement(features, predictions, stats: ClassStats, *, labels=None, min_count: int = 1) -> float:
    """Fraction of samples whose nearest kept class mean equals the model's prediction; with
    ``labels``, over the samples whose true class is kept (Wu & Papyan 2024)."""
    return NC4Accumulator(stats, min_count=min_count).update(features, predictions, labels).compute()
