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
    # Sparse statistics hold only some classes: row r is class class_ids[r] (strictly increasing)
    # of a label space of num_labels classes (a 128k vocabulary of which a corpus sees a few
    # thousand). None: row r is class r and the label space is the K rows.
    class_ids: torch.Tensor | None = None  # (K,) int64
    num_labels: int | None = None

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
        self._check_class_ids(k)

    def _check_class_ids(self, k: int) -> None:
        if self.class_ids is None:
            if self.num_labels is not None and self.num_labels != k:
                raise ValueError(f"num_labels={self.num_labels} without class_ids must equal the {k} rows")
            return
        ids = self.class_ids
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
            raise ValueError("class_ids must be an int64 tensor")
        check_shape(ids, "class_ids", (k,))
        if not (isinstance(self.num_labels, int) and self.num_labels >= k):
            raise ValueError(f"class_ids need num_labels, an integer >= the {k} rows, got {self.num_labels!r}")
        if k and (int(ids[0]) < 0 or int(ids[-1]) >= self.num_labels or bool((ids[1:] <= ids[:-1]).any())):
            raise ValueError(f"class_ids must be strictly increasing class ids in [0, {self.num_labels})")

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
    def ids(self) -> torch.Tensor:
        """(K,) int64: the class id of each row."""
        if self.class_ids is not None:
            return self.class_ids
        return torch.arange(self.num_classes, device=self.device)

    @property
    def label_space(self) -> int:
        """The number of classes labels range over (the vocabulary); >= num_classes when sparse."""
        return self.num_labels if self.class_ids is not None else self.num_classes

    def compact(self) -> ClassStats:
        """The same statistics holding only the classes with samples (sparse): what a sparse
        accumulator computes, and what every metric sees (they drop empty classes)."""
        rows = torch.nonzero(self.sample_counts > 0).flatten()
        return ClassStats(
            **{name: getattr(self, name)[rows] for name in _TENSOR_NAMES if name != "within_scatter"},
            within_scatter=self.within_scatter, metadata=dict(self.metadata),
            class_ids=self.ids[rows].clone(), num_labels=self.label_space,
        )

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, device: str | torch.device) -> ClassStats:
        return ClassStats(
            **{name: getattr(self, name).to(device) for name in _TENSOR_NAMES},
            metadata=dict(self.metadata),
            class_ids=None if self.class_ids is None else self.class_ids.to(device), num_labels=self.num_labels,
        )

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (tensors + JSON header metadata + a sha256 of the tensors),
        atomically."""
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in _TENSOR_NAMES}
        if self.class_ids is not None:
            tensors |= dict(class_ids=self.class_ids.cpu().contiguous(),
                            num_labels=torch.tensor([self.num_labels], dtype=torch.int64))
        return _save_tensors(path, tensors, FORMAT_NAME, self.metadata)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> ClassStats:
        tensors, metadata = _load_tensors(path, FORMAT_NAME, device)
        missing = [n for n in _TENSOR_NAMES if n not in tensors]
        if missing:
            raise StatsFileError(f"{path} lacks the tensor(s) {', '.join(missing)}")
        sparse = {}
        if "class_ids" in tensors:
            if tensors.get("num_labels") is None or tensors["num_labels"].numel() != 1:
                raise StatsFileError(f"{path} holds class_ids without num_labels")
            sparse = dict(class_ids=tensors["class_ids"], num_labels=int(tensors["num_labels"][0]))
        try:
            return cls(**{n: tensors[n] for n in _TENSOR_NAMES}, metadata=metadata, **sparse)
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
            tensors[f"{name}/{key}"] = value.detach().cpu().clone()  # states share their row ids: one copy each
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


@dataclass(frozen=True)
class BatchClasses:
    """The label side of one batch, computed once and shared by every accumulator over the same
    labels (the layers of one forward pass): the state rows of its classes, which row each sample
    adds to, and the classes' weights and sample counts in the batch."""

    rows: torch.Tensor  # (Kb,) int64 state row of each class in the batch
    inverse: torch.Tensor  # (B,) int64 index into rows of each sample
    weight: torch.Tensor  # (Kb,) float64 n_b of each class
    count: torch.Tensor  # (Kb,) int64 samples of each class
    sample_weights: torch.Tensor | None  # (B,) float64, None for unit weights
    keep: torch.Tensor | None  # (B0,) bool: the samples of positive weight, None when all are


class ClassRows:
    """Which state row holds which class, shared by accumulators that see the same labels.

    Dense: row c is class c for all K classes. Sparse: rows are allocated as classes are first seen,
    so a state holds only the classes that occur (a 10M-token text sees a fraction of a 128k
    vocabulary); ``ids`` maps rows back to class ids."""

    def __init__(self, num_classes: int, *, sparse: bool = False, device: str | torch.device = "cpu"):
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.sparse = bool(sparse)
        self.device = torch.device(device)
        if self.sparse:
            self._row_of = torch.full((num_classes,), -1, dtype=torch.int64, device=self.device)  # (K,)
            self._ids = torch.zeros(0, dtype=torch.int64, device=self.device)  # (R,)

    @property
    def size(self) -> int:
        """Rows in use."""
        return int(self._ids.numel()) if self.sparse else self.num_classes

    @property
    def ids(self) -> torch.Tensor:
        """(R,) class id of each row."""
        return self._ids if self.sparse else torch.arange(self.num_classes, device=self.device)

    def rows_for(self, classes: torch.Tensor) -> torch.Tensor:
        """(n,) the rows of distinct ``classes``, allocating rows for classes not seen before."""
        if not self.sparse:
            return classes
        rows = self._row_of[classes]
        new = classes[rows < 0]
        if new.numel():
            self._row_of[new] = torch.arange(self.size, self.size + new.numel(), device=self.device)
            self._ids = torch.cat([self._ids, new])
            rows = self._row_of[classes]
        return rows

    def batch(self, labels, weights=None) -> BatchClasses:
        """Check a batch's labels (B,) and weights (B,) and group its samples by class."""
        y = as_tensor(labels, "labels", device=self.device)
        if y.dim() != 1:
            raise ValueError(f"labels must have shape (B,), got {tuple(y.shape)}")
        w = None
        if weights is not None:
            w = as_tensor(weights, "weights", device=self.device, dtype=torch.float64)
            check_shape(w, "weights", (y.shape[0],))
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            check_labels(y, self.num_classes)  # raises: labels must be integers
        keep = None
        if y.numel():
            flags = [y.min().double(), y.max().double()]
            if w is not None:
                flags += [torch.isfinite(w).all().double(), w.min()]
            values = torch.stack(flags).tolist()  # one device-to-host transfer: each sync stalls a GPU
            if values[0] < 0 or values[1] >= self.num_classes:
                check_labels(y, self.num_classes)
            if w is not None and not values[2]:
                check_finite(w, "weights")
            if w is not None and values[3] < 0:
                raise ValueError("weights must be non-negative")
            if w is not None and values[3] == 0:
                keep = w > 0  # samples of weight 0 contribute nothing
                y, w = y[keep], w[keep]
        y = y.long()
        if self.device.type == "cuda" and not self.sparse:
            # Over all K classes: no data-dependent shapes, so no device sync (torch.unique needs
            # one), and the GPU never waits for the host between forward passes.
            classes, inverse = torch.arange(self.num_classes, device=self.device), y
        else:
            classes, inverse = torch.unique(y, return_inverse=True)  # (Kb,), (B,)
        kb = classes.shape[0]
        ones = torch.ones_like(inverse)
        count = torch.zeros(kb, dtype=torch.int64, device=self.device).index_add_(0, inverse, ones)
        weight = count.double() if w is None else torch.zeros(kb, dtype=torch.float64, device=self.device).index_add_(0, inverse, w)
        return BatchClasses(self.rows_for(classes), inverse, weight, count, w, keep)


class StatsAccumulator:
    """Streaming, mergeable accumulator of :class:`ClassStats`.

    ``update`` folds in a batch, ``merge`` folds in another accumulator (a shard, a rank); both use
    the same Chan merge, so any split of the samples gives the same statistics to rounding.
    State lives on ``device`` in float64 whatever the features' dtype. ``sparse`` allocates a class's
    rows when it is first seen; ``rows`` shares one row map between accumulators over the same
    labels, which then fold a batch's ``BatchClasses`` (``fold``) and do the label work once.
    """

    def __init__(self, num_classes: int, dim: int, *, device: str | torch.device = "cpu", sparse: bool = False,
                 rows: ClassRows | None = None, capacity: int = 0):
        self.dim = check_positive_int(dim, "dim")
        self.rows = rows if rows is not None else ClassRows(num_classes, sparse=sparse, device=device)
        if self.rows.num_classes != num_classes:
            raise ValueError(f"the shared rows are over {self.rows.num_classes} classes, not {num_classes}")
        self.num_classes = self.rows.num_classes
        self.device = self.rows.device
        # Sparse rows start with room for ``capacity`` classes (a planned pass knows how many it
        # will see, and never grows: growing briefly holds the old and the new arrays).
        self._allocate(self.rows.size if not self.rows.sparse else max(capacity, self.rows.size))

    def _allocate(self, capacity: int) -> None:
        f64 = dict(dtype=torch.float64, device=self.device)
        self._n = torch.zeros(capacity, **f64)  # (R,)
        self._count = torch.zeros(capacity, dtype=torch.int64, device=self.device)  # (R,)
        self._mean = torch.zeros(capacity, self.dim, **f64)  # (R, D)
        self._m2 = torch.zeros(capacity, **f64)  # (R,)
        self._scatter = torch.zeros(self.dim, self.dim, **f64)  # (D, D)

    def _grow(self) -> None:
        """Room for every row of the (shared) row map: capacity doubles, so growth costs O(R)."""
        need = self.rows.size
        have = self._n.shape[0]
        if need <= have:
            return
        extra = min(max(need, 2 * have), self.num_classes) - have
        self._n = torch.cat([self._n, self._n.new_zeros(extra)])
        self._count = torch.cat([self._count, self._count.new_zeros(extra)])
        self._mean = torch.cat([self._mean, self._mean.new_zeros(extra, self.dim)])
        self._m2 = torch.cat([self._m2, self._m2.new_zeros(extra)])

    @classmethod
    def from_stats(cls, stats: ClassStats, *, device: str | torch.device | None = None):
        """The accumulator whose ``compute()`` gives ``stats`` back: resume from a checkpoint."""
        stats = stats.to(device or stats.device)
        acc = cls(stats.label_space, stats.dim, device=stats.device, sparse=stats.class_ids is not None)
        acc.rows.rows_for(stats.ids)
        acc._grow()
        k = stats.num_classes
        acc._n[:k] = stats.counts
        acc._count[:k] = stats.sample_counts
        acc._mean[:k] = stats.means
        acc._m2[:k] = stats.var_traces * stats.counts
        acc._scatter = stats.within_scatter * stats.total
        return acc

    def state(self) -> dict[str, torch.Tensor]:
        """The raw state: weights n (R,), sample counts (R,), means (R, D), M2 (R,), scatter (D, D),
        and for sparse rows the class id of each row (R,) and the number of classes (1,)."""
        if not self.rows.sparse:
            return dict(n=self._n, count=self._count, mean=self._mean, m2=self._m2, scatter=self._scatter)
        self._grow()  # the shared row map may hold classes only other accumulators have seen
        r = self.rows.size  # the rows in use; the capacity beyond them is zeros
        return dict(n=self._n[:r], count=self._count[:r], mean=self._mean[:r], m2=self._m2[:r], scatter=self._scatter,
                    ids=self.rows.ids, num_classes=torch.tensor([self.num_classes], dtype=torch.int64))

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> StatsAccumulator:
        """The accumulator with exactly this raw state (a checkpoint written by ``state()``)."""
        r, d = state["mean"].shape
        dev = state["mean"].device
        if "ids" in state:
            acc = cls(int(state["num_classes"][0]), d, device=dev, sparse=True)
            ids = state["ids"].to(dev)
            if ids.shape != (r,) or ids.dtype != torch.int64 or len(torch.unique(ids)) != r:
                raise ValueError(f"state 'ids' must be {r} distinct int64 class ids")
            if r and (int(ids.min()) < 0 or int(ids.max()) >= acc.num_classes):
                raise ValueError(f"state 'ids' must lie in [0, {acc.num_classes})")
            acc.rows.rows_for(ids)
        else:
            acc = cls(r, d, device=dev)
        acc._allocate(r)
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

        Everything is checked before any state changes, so a bad batch leaves the statistics as
        they were. Samples of weight 0 contribute nothing. An empty batch is a no-op.
        """
        h = self._features(features)
        y = as_tensor(labels, "labels", device=self.device)
        check_shape(y, "labels", (h.shape[0],))
        if weights is not None:
            check_shape(as_tensor(weights, "weights"), "weights", (h.shape[0],))
        if h.shape[0] == 0:
            return self
        self._check_finite(h)
        batch = self.rows.batch(y, weights)
        if weights is not None and not math.isfinite(float(batch.weight.sum()) + self.total):
            raise ValueError("weights overflow: the total weight of the batch and the state is not finite in "
                             f"float64 (largest weight {float(batch.weight.max()):.3g}); rescale the weights")
        return self._fold(h, batch)

    def fold(self, features, batch: BatchClasses) -> StatsAccumulator:
        """Fold in features (B, D) of the samples grouped by ``batch`` (from this accumulator's
        ``rows.batch``, shared with the other accumulators over the same labels)."""
        h = self._features(features)
        check_shape(h, "features", (batch.inverse.shape[0] if batch.keep is None else batch.keep.shape[0], self.dim))
        self._check_finite(h)
        return self._fold(h, batch)

    def _features(self, features) -> torch.Tensor:
        h = as_tensor(features, "features", device=self.device)
        check_shape(h, "features", (None, self.dim))
        if h.dtype == torch.bool or h.is_complex():
            raise TypeError(f"features must be real numbers, got dtype {h.dtype}")
        return h.to(torch.float64)

    @staticmethod
    def _check_finite(h: torch.Tensor) -> None:
        # NaN and Inf reach the float64 sum (an overflow of finite values only sends it to the full check).
        if h.numel() and not math.isfinite(float(h.sum())):
            check_finite(h, "features")

    def _fold(self, h: torch.Tensor, b: BatchClasses) -> StatsAccumulator:
        """Chan's merge of the batch into the state, in Welford's product form: with mu_a the old
        and mu the new mean of a sample's class, M2_c gains sum w (h - mu_a).(h - mu) and S_W gains
        sum w (h - mu_a)(h - mu)^T, which equal the batch's centered sums plus n_a n_b / n delta
        delta^T exactly, in one (D x B)(B x D) product. A class new to the state takes the batch
        mean as mu_a: the two-pass centered sums, no raw moments."""
        if b.keep is not None:
            h = h[b.keep]
        if h.shape[0] == 0:
            return self
        self._grow()
        w = b.sample_weights
        sums = torch.zeros(b.rows.shape[0], self.dim, dtype=torch.float64, device=self.device)
        sums.index_add_(0, b.inverse, h if w is None else h * w[:, None])
        mean_b = sums / b.weight.clamp_min(_TINY)[:, None]  # (Kb, D)
        n_a = self._n[b.rows]  # (Kb,)
        n = n_a + b.weight
        mean_a = torch.where((n_a > 0)[:, None], self._mean[b.rows], mean_b)  # (Kb, D)
        mean = mean_a + (mean_b - mean_a) * (b.weight / n.clamp_min(_TINY))[:, None]
        before = h - mean_a[b.inverse]  # (B, D)
        after = h - mean[b.inverse]  # (B, D)
        if w is not None:
            before = before * w[:, None]
        self._m2.index_add_(0, b.rows[b.inverse], (before * after).sum(1))
        product = before.T @ after  # (D, D), symmetric up to rounding
        self._scatter += (product + product.T) / 2
        self._mean[b.rows] = mean
        self._n[b.rows] = n
        self._count[b.rows] += b.count
        return self

    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        """Fold in another accumulator over the same classes and dimension (a shard, a rank)."""
        if not isinstance(other, StatsAccumulator):
            raise TypeError(f"can only merge a StatsAccumulator, got {type(other).__name__}")
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(
                f"cannot merge statistics of (K={other.num_classes}, D={other.dim}) into "
                f"(K={self.num_classes}, D={self.dim})"
            )
        r = other.rows.size
        present = torch.nonzero(other._n[:r] > 0).flatten()
        o = lambda t: t[present].to(self.device)  # noqa: E731
        rows = self.rows.rows_for(other.rows.ids[present].to(self.device))
        self._grow()
        n_b, mean_b = o(other._n), o(other._mean)
        n_a = self._n[rows]
        n = n_a + n_b
        safe_n = n.clamp_min(_TINY)
        delta = mean_b - self._mean[rows]  # (Kb, D)
        coef = n_a * n_b / safe_n  # (Kb,)
        self._mean[rows] += delta * (n_b / safe_n)[:, None]
        self._m2[rows] += o(other._m2) + coef * delta.square().sum(1)
        self._scatter += other._scatter.to(self.device) + (delta * coef[:, None]).T @ delta
        self._n[rows] = n
        self._count[rows] += o(other._count)
        return self

    def compute(self, metadata: dict[str, Any] | None = None) -> ClassStats:
        """The statistics: all K classes when dense; when sparse, the classes seen, in class-id order."""
        self._grow()  # the shared row map may hold classes only other accumulators have seen
        r = self.rows.size
        n, count, mean, m2 = self._n[:r], self._count[:r], self._mean[:r], self._m2[:r]
        total = n.sum()
        if not bool(total > 0):
            raise ValueError("no samples were accumulated: statistics of an empty input")
        sparse = {}
        if self.rows.sparse:
            order = torch.argsort(self.rows.ids)
            order = order[n[order] > 0]  # rows allocated for a batch that failed its checks hold nothing
            n, count, mean, m2 = n[order], count[order], mean[order], m2[order]
            sparse = dict(class_ids=self.rows.ids[order].clone(), num_labels=self.num_classes)
        var = torch.where(n > 0, m2 / n.clamp_min(_TINY), torch.zeros_like(m2))
        return ClassStats(
            counts=n.clone(),
            sample_counts=count.clone(),
            means=mean.clone(),
            var_traces=var,
            within_scatter=self._scatter / total,
            metadata=dict(metadata or {}),
            **sparse,
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
