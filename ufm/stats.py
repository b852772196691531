"""Sufficient statistics of a classification geometry, accumulated in one pass and merged exactly.

Samples are features h_i in R^D with labels y_i in {0..K-1} and weights w_i >= 0. Per class c the
accumulator keeps the weight n_c, the mean mu_c and M2_c = sum_i w_i ||h_i - mu_c||^2; for all
classes together the pooled within-class scatter sum_i w_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T.
Everything is float64 (counts of samples int64), and batches, shards and processes all meet in one
code path, Chan's pairwise merge (Chan, Golub, LeVeque 1979):

    n = n_a + n_b;  delta = mu_b - mu_a;  mu = mu_a + delta n_b / n
    M2 = M2_a + M2_b + ||delta||^2 n_a n_b / n
    S  = S_a + S_b + sum_c (n_a,c n_b,c / n_c) delta_c delta_c^T

so the result does not depend on how the samples were split or in which order parts were merged,
and no large raw sums are ever subtracted. No per-class D x D covariance is kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .validate import as_tensor, check_finite, check_labels, check_positive_int, check_shape
from .io import atomic_write

FORMAT_NAME = "collapse-lab/class-stats"
FORMAT_VERSION = 2  # 2: a sha256 of the tensors in the header; 1 (no checksum) is still read
_READABLE_VERSIONS = ("1", "2")
CHECKPOINT_FORMAT = "collapse-lab/accumulators"  # exact accumulator states, one or more
_TENSOR_NAMES = ("counts", "sample_counts", "means", "var_traces", "within_scatter")
_TINY = 1e-300  # guards divisions by a class weight that is exactly 0


class StatsFileError(ValueError):
    """A statistics file that is truncated, corrupt, of another format version, or not one at all."""


@dataclass(frozen=True, eq=False)
class ClassStats:
    """Per-class sufficient statistics of features (see SCIENCE.md section 1).

    A class with no samples has count 0, a zero mean and a zero variance; the metrics drop it.
    A class with a single sample has variance 0 and is kept (min_count=1), as in Wu & Papyan.
    """

    counts: torch.Tensor  # (K,) float64: n_c, total weight of class c
    sample_counts: torch.Tensor  # (K,) int64: samples of class c with positive weight
    means: torch.Tensor  # (K, D) float64: mu_c
    var_traces: torch.Tensor  # (K,) float64: sigma2_c = (1/n_c) sum w ||h - mu_c||^2
    within_scatter: torch.Tensor  # (D, D) float64: S_W = (1/N) sum w (h - mu_y)(h - mu_y)^T
    metadata: dict[str, Any] = field(default_factory=dict)  # provenance: model, corpus, options

    def __post_init__(self) -> None:
        # Statistics are float64 with int64 counts; tensors of a narrower type (a float32 file, a
        # caller's tensors) are widened exactly, so every metric computes in float64.
        for name in _TENSOR_NAMES:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch tensor, got {type(value).__name__}")
            want = torch.int64 if name == "sample_counts" else torch.float64
            if value.dtype != want:
                if value.is_complex() or (name == "sample_counts" and value.is_floating_point()):
                    raise ValueError(f"{name} must be {want}, got {value.dtype}")
                object.__setattr__(self, name, value.to(want))
        if self.means.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(self.means.shape)}")
        k, d = self.means.shape
        check_shape(self.counts, "counts", (k,))
        check_shape(self.sample_counts, "sample_counts", (k,))
        check_shape(self.var_traces, "var_traces", (k,))
        check_shape(self.within_scatter, "within_scatter", (d, d))
        for name in ("counts", "means", "var_traces", "within_scatter"):
            check_finite(getattr(self, name), name)
        if bool((self.counts < 0).any()) or bool((self.sample_counts < 0).any()):
            raise ValueError("counts must be non-negative")
        if bool((self.var_traces < 0).any()):
            bad = int((self.var_traces < 0).sum())
            raise ValueError(f"var_traces must be non-negative (variances); {bad} class(es) are negative")

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def total(self) -> float:
        """N, the total weight of all samples."""
        return float(self.counts.sum())

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, device: str | torch.device) -> ClassStats:
        return ClassStats(
            **{name: getattr(self, name).to(device) for name in _TENSOR_NAMES},
            metadata=dict(self.metadata),
        )

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (tensors + JSON header metadata + a sha256 of the tensors),
        atomically."""
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in _TENSOR_NAMES}
        return _save_tensors(path, tensors, FORMAT_NAME, self.metadata)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> ClassStats:
        tensors, metadata = _load_tensors(path, FORMAT_NAME, device)
        missing = [n for n in _TENSOR_NAMES if n not in tensors]
        if missing:
            raise StatsFileError(f"{path} lacks the tensor(s) {', '.join(missing)}")
        try:
            return cls(**{n: tensors[n] for n in _TENSOR_NAMES}, metadata=metadata)
        except ValueError as err:
            raise StatsFileError(f"{path} holds inconsistent statistics: {err}") from err


def _checksum(tensors: dict[str, torch.Tensor], metadata_json: str) -> str:
    """sha256 over the metadata and every tensor's name, dtype, shape and bytes (in name order)."""
    h = hashlib.sha256(metadata_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], fmt: str, metadata: dict) -> Path:
    meta = json.dumps(metadata, sort_keys=True, default=str)
    header = {"format": fmt, "version": str(FORMAT_VERSION), "metadata": meta,
              "sha256": _checksum(tensors, meta)}

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=header)
        except SafetensorError as err:  # a full disk reaches us as safetensors' own error, errno in its text
            code = re.search(r"os error (\d+)", str(err))
            raise OSError(int(code.group(1)) if code else None, f"cannot write {path}: {err}") from err

    return atomic_write(path, write)


def _load_tensors(path: str | Path, fmt: str, device) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a Collapse Lab file of format ``fmt``, checksum verified."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no statistics file at {path}")
    header = _read_header(path)
    if header.get("format") != fmt:
        kind = "statistics" if fmt == FORMAT_NAME else "checkpoint"
        raise StatsFileError(f"{path} is not a Collapse Lab {kind} file")
    if header.get("version") not in _READABLE_VERSIONS:
        raise StatsFileError(
            f"{path} has statistics format version {header.get('version')}; "
            f"this version of Collapse Lab reads version {FORMAT_VERSION}"
        )
    try:
        tensors = load_file(str(path), device="cpu")
        metadata = json.loads(header.get("metadata", "{}"))
    except (SafetensorError, OSError, ValueError) as err:
        raise StatsFileError(f"{path} is truncated or corrupt: {err}") from err
    # Version 1 wrote no checksum. A file that says version 1 but carries one is checked all the
    # same (editing the version must not switch the check off); one without is read with a warning.
    if header.get("version") != "1" or "sha256" in header:
        if _checksum(tensors, header.get("metadata", "{}")) != header.get("sha256"):
            raise StatsFileError(f"{path} is corrupt: its tensors do not match the checksum written with them")
    else:
        warnings.warn(f"{path} is a version-1 statistics file, which has no checksum: its integrity cannot be "
                      "verified; save it again to add one", UserWarning, stacklevel=3)
    return {k: v.to(device) for k, v in tensors.items()}, metadata


def save_accumulators(path: str | Path, accumulators: dict[str, StatsAccumulator], metadata: dict) -> Path:
    """A checkpoint: the exact state of one or more accumulators (by name) in one file, atomically.

    The raw state (n, count, mean, M2, scatter) is stored, not ClassStats: a resumed run then does
    exactly the arithmetic of an uninterrupted one and ends bit-identical."""
    tensors = {}
    for name, acc in accumulators.items():
        for key, value in acc.state().items():
            tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
    return _save_tensors(path, tensors, CHECKPOINT_FORMAT, metadata)


def load_accumulators(path: str | Path, *, device: str | torch.device = "cpu"
                      ) -> tuple[dict[str, StatsAccumulator], dict]:
    """The accumulators and metadata of a checkpoint written by ``save_accumulators``."""
    tensors, metadata = _load_tensors(path, CHECKPOINT_FORMAT, device)
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, field_name = key.rpartition("/")
        grouped.setdefault(name, {})[field_name] = value
    try:
        return {name: StatsAccumulator.from_state(state) for name, state in grouped.items()}, metadata
    except (KeyError, ValueError) as err:
        raise StatsFileError(f"{path} holds an inconsistent accumulator state: {err}") from err


def _read_header(path: Path) -> dict[str, str]:
    """The safetensors header metadata, without reading the tensors."""
    # Layout: 8-byte little-endian header length, then a JSON header, then the tensor bytes.
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        size = path.stat().st_size
        if len(prefix) < 8:
            raise StatsFileError(f"{path} is not a statistics file (too short: {size} bytes)")
        n = int.from_bytes(prefix, "little")
        if n <= 0 or n > size - 8:
            raise StatsFileError(f"{path} is not a statistics file, or it is truncated")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StatsFileError(f"{path} is not a statistics file (unreadable header)") from err
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


class StatsAccumulator:
    """Streaming, mergeable accumulator of :class:`ClassStats`.

    ``update`` folds in a batch, ``merge`` folds in another accumulator (a shard, a rank); both use
    the same Chan merge, so any split of the samples gives the same statistics to rounding.
    State lives on ``device`` in float64 whatever the features' dtype.
    """

    def __init__(self, num_classes: int, dim: int, *, device: str | torch.device = "cpu"):
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.dim = check_positive_int(dim, "dim")
        self.device = torch.device(device)
        f64 = dict(dtype=torch.float64, device=self.device)
        self._n = torch.zeros(num_classes, **f64)  # (K,)
        self._count = torch.zeros(num_classes, dtype=torch.int64, device=self.device)  # (K,)
        self._mean = torch.zeros(num_classes, dim, **f64)  # (K, D)
        self._m2 = torch.zeros(num_classes, **f64)  # (K,)
        self._scatter = torch.zeros(dim, dim, **f64)  # (D, D)

    @classmethod
    def from_stats(cls, stats: ClassStats, *, device: str | torch.device | None = None):
        """The accumulator whose ``compute()`` gives ``stats`` back: resume from a checkpoint."""
        acc = cls(stats.num_classes, stats.dim, device=device or stats.device)
        stats = stats.to(acc.device)
        acc._n = stats.counts.clone()
        acc._count = stats.sample_counts.clone()
        acc._mean = stats.means.clone()
        acc._m2 = stats.var_traces * stats.counts
        acc._scatter = stats.within_scatter * stats.total
        return acc

    def state(self) -> dict[str, torch.Tensor]:
        """The raw state: weights n (K,), sample counts (K,), means (K, D), M2 (K,), scatter (D, D)."""
        return dict(n=self._n, count=self._count, mean=self._mean, m2=self._m2, scatter=self._scatter)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> StatsAccumulator:
        """The accumulator with exactly this raw state (a checkpoint written by ``state()``)."""
        k, d = state["mean"].shape
        acc = cls(k, d, device=state["mean"].device)
        for key, attr in (("n", "_n"), ("count", "_count"), ("mean", "_mean"), ("m2", "_m2"), ("scatter", "_scatter")):
            value = state[key]
            if value.shape != getattr(acc, attr).shape or value.dtype != getattr(acc, attr).dtype:
                raise ValueError(f"state {key!r} has shape {tuple(value.shape)} / {value.dtype}, expected "
                                 f"{tuple(getattr(acc, attr).shape)} / {getattr(acc, attr).dtype}")
            setattr(acc, attr, value.clone())
        return acc

    @property
    def total(self) -> float:
        return float(self._n.sum())

    def update(self, features, labels, weights=None) -> StatsAccumulator:
        """Fold in a batch: features (B, D), labels (B,) in [0, K), weights (B,) >= 0 or None.

        Everything is checked before any state changes, so a bad batch leaves the accumulator as
        it was. Samples of weight 0 contribute nothing. An empty batch is a no-op.
        """
        h = as_tensor(features, "features", device=self.device)
        check_shape(h, "features", (None, self.dim))
        y = as_tensor(labels, "labels", device=self.device)
        check_shape(y, "labels", (h.shape[0],))
        w = None
        if weights is not None:
            w = as_tensor(weights, "weights", device=self.device, dtype=torch.float64)
            check_shape(w, "weights", (h.shape[0],))
        if h.dtype == torch.bool or h.is_complex():
            raise TypeError(f"features must be real numbers, got dtype {h.dtype}")
        if h.shape[0] == 0:
            return self
        self._check_values(h, y, w)
        h = h.to(torch.float64)
        if w is None:
            w = torch.ones(h.shape[0], dtype=torch.float64, device=self.device)
        elif (w == 0).any():
            keep = w > 0
            h, y, w = h[keep], y[keep], w[keep]
        if h.shape[0] == 0:
            return self

        if self.device.type == "cuda":
            # Over all K classes: no data-dependent shapes, so no device sync (torch.unique needs
            # one), and the GPU never waits for the host between forward passes.
            classes, inv, kb = slice(None), y.long(), self.num_classes
        else:
            classes, inv = torch.unique(y.long(), return_inverse=True)  # (Kb,), (B,)
            kb = classes.shape[0]
        n_b = torch.zeros(kb, dtype=torch.float64, device=self.device).index_add_(0, inv, w)
        count_b = torch.zeros(kb, dtype=torch.int64, device=self.device).index_add_(0, inv, torch.ones_like(inv))
        sums = torch.zeros(kb, self.dim, dtype=torch.float64, device=self.device)
        mean_b = sums.index_add_(0, inv, h * w[:, None]) / n_b.clamp_min(_TINY)[:, None]  # (Kb, D)
        centered = h - mean_b[inv]  # (B, D): two-pass within the batch, exact enough
        m2_b = torch.zeros(kb, dtype=torch.float64, device=self.device)
        m2_b.index_add_(0, inv, w * centered.square().sum(1))
        scatter_b = (centered * w[:, None]).T @ centered  # (D, D)
        self._merge_classes(classes, n_b, count_b, mean_b, m2_b, scatter_b)
        return self

    def _check_values(self, h: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> None:
        """Range and finiteness of a batch, read back in one transfer: each device-to-host sync
        stalls a GPU pipeline. The detailed messages are computed only on failure."""
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            check_labels(y, self.num_classes)  # raises: labels must be integers
        flags = [y.min().double(), y.max().double(), torch.isfinite(h).all().double()]
        if w is not None:
            flags += [torch.isfinite(w).all().double(), w.min()]
        values = torch.stack(flags).tolist()
        if values[0] < 0 or values[1] >= self.num_classes:
            check_labels(y, self.num_classes)
        if not values[2]:
            check_finite(h, "features")
        if w is not None and not values[3]:
            check_finite(w, "weights")
        if w is not None and values[4] < 0:
            raise ValueError("weights must be non-negative")
        if w is not None and not math.isfinite(float(w.sum()) + self.total):
            raise ValueError("weights overflow: the total weight of the batch and the state is not finite "
                             f"in float64 (largest weight {float(w.max()):.3g}); rescale the weights")

    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        """Fold in another accumulator over the same classes and dimension (a shard, a rank)."""
        if not isinstance(other, StatsAccumulator):
            raise TypeError(f"can only merge a StatsAccumulator, got {type(other).__name__}")
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(
                f"cannot merge statistics of (K={other.num_classes}, D={other.dim}) into "
                f"(K={self.num_classes}, D={self.dim})"
            )
        idx = torch.nonzero(other._n > 0).flatten().to(self.device)
        o = lambda t: t.to(self.device)  # noqa: E731
        self._merge_classes(
            idx, o(other._n)[idx], o(other._count)[idx], o(other._mean)[idx], o(other._m2)[idx],
            o(other._scatter),
        )
        return self

    def _merge_classes(self, idx, n_b, count_b, mean_b, m2_b, scatter_b) -> None:
        """Chan's merge of part b (classes ``idx``; a class with n_b = 0 changes nothing) into this state."""
        n_a = self._n[idx]  # (Kb,)
        n = n_a + n_b
        safe_n = n.clamp_min(_TINY)  # classes empty on both sides: 0 / 0 would be NaN
        delta = mean_b - self._mean[idx]  # (Kb, D)
        coef = n_a * n_b / safe_n  # (Kb,)
        self._mean[idx] += delta * (n_b / safe_n)[:, None]
        self._m2[idx] += m2_b + coef * delta.square().sum(1)
        self._scatter += scatter_b + (delta * coef[:, None]).T @ delta
        self._n[idx] = n
        self._count[idx] += count_b

    def compute(self, metadata: dict[str, Any] | None = None) -> ClassStats:
        total = self._n.sum()
        if not bool(total > 0):
            raise ValueError("no samples were accumulated: statistics of an empty input")
        var = torch.where(self._n > 0, self._m2 / self._n.clamp_min(_TINY), torch.zeros_like(self._m2))
        return ClassStats(
            counts=self._n.clone(),
            sample_counts=self._count.clone(),
            means=self._mean.clone(),
            var_traces=var,
            within_scatter=self._scatter / total,
            metadata=dict(metadata or {}),
        )


def stats_from_features(features, labels, num_classes: int, weights=None) -> ClassStats:
    """ClassStats of one set of samples: features (N, D), labels (N,), optional weights (N,)."""
    h = as_tensor(features, "features")
    if h.dim() != 2:
        raise ValueError(f"features must have shape (N, D), got {tuple(h.shape)}")
    if h.shape[0] == 0:
        raise ValueError("features is empty: statistics need at least one sample")
    acc = StatsAccumulator(num_classes, h.shape[1], device=h.device)
    return acc.update(h, labels, weights).compute()
