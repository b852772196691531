"""Neural-collapse metrics as pure functions of ClassStats (and a classifier W).

Definitions follow SCIENCE.md section 2:
- NC1 trace ratio Tr(S_W S_B^+) / K (Papyan, Han, Donoho, PNAS 2020) and the class-distance
  normalized variance, CDNV (Galanti, Gyorgy, Hutter, ICLR 2022; power 4 in Wu & Papyan's code);
- NC2 equinorm (CoV of ||m_c|| and of log ||m_c||), equiangularity (cosines of centered means) and
  the ETF error (Papyan et al. 2020; Wu & Papyan, NeurIPS 2024);
- GNC2 hyperspherical uniformity, the log / Riesz kernel of normalized means (Liu et al. 2023);
- NC3 self-duality cos(w_c, m_c) and the dual error, UNC3 its spread (Wu & Papyan 2024).

Only kept classes (sample count >= min_count) take part. "CoV" is std / |mean|. Pair statistics
(cosines, kernels, CDNV) use the population std (ddof 0); the spreads over classes (norms, log norms,
squared norms, NC3 cosines) use ``spread_ddof``: 0 by default, 1 (Bessel) in Wu & Papyan's code and
so in the ``lc2024`` preset. Pairwise quantities come from one tiled sweep (ufm.pairwise).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from .validate import as_tensor, check_finite, check_positive_int, check_shape
from .pairwise import PairwiseResult, pairwise_sweep
from .presets import PRESETS
from .stats import ClassStats

# Eigenvalues of S_B below this fraction of the largest count as zero in the pseudo-inverse: S_B
# has rank <= K-1, and its null eigenvalues come out of eigh at ~D eps relative, not exactly 0.
PINV_RTOL = 1e-10


@dataclass(frozen=True)
class MetricOptions:
    cdnv_power: float = 2.0  # p in (s_c + s_c') / (2 ||mu_c - mu_c'||^p); 2 Galanti, 4 LC code
    center: Literal["uniform", "weighted"] = "uniform"  # global mean: of class means, or of samples
    min_count: int = 1  # classes with fewer samples are left out
    tile_size: int | None = None  # pairwise tile edge; None: 1024 on CPU, 8192 on CUDA
    riesz_s: float | None = None  # also report the Riesz s-kernel ||m^_c - m^_c'||^-s
    spread_ddof: int = 0  # std over classes (norms, NC3 cosines): 0 population, 1 Bessel (LC code)
    max_count: int | None = None  # classes with more samples are left out too (LC's -Mpc): the commonest tokens

    def __post_init__(self) -> None:
        if self.center not in ("uniform", "weighted"):
            raise ValueError(f"center must be 'uniform' or 'weighted', got {self.center!r}")
        if not (isinstance(self.cdnv_power, (int, float)) and self.cdnv_power > 0):
            raise ValueError(f"cdnv_power must be a positive number, got {self.cdnv_power!r}")
        check_positive_int(self.min_count, "min_count")
        if self.tile_size is not None:
            check_positive_int(self.tile_size, "tile_size")
        if self.riesz_s is not None and not self.riesz_s > 0:
            raise ValueError(f"riesz_s must be positive, got {self.riesz_s!r}")
        if self.spread_ddof not in (0, 1):
            raise ValueError(f"spread_ddof must be 0 or 1, got {self.spread_ddof!r}")
        if self.max_count is not None:
            check_positive_int(self.max_count, "max_count")
            if self.max_count < self.min_count:
                raise ValueError(f"max_count={self.max_count} is below min_count={self.min_count}: no class is kept")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MetricOptions:
        if name not in PRESETS:
            raise ValueError(f"unknown metric preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


@dataclass(frozen=True)
class CollapseMetrics:
    num_classes_kept: int
    num_pairs: int
    nc1_trace_ratio: float  # Tr(S_W S_B^+) / K
    nc1_quotient: float  # Tr S_W / Tr S_B (the scalar quotient; Tirer et al.'s within-class variability)
    nc1_svd: float  # Tr(S_W S_B^+) over the top min(K-1, D) eigenpairs of S_B, not divided by K (Han et al.)
    cdnv_mean: float  # mean CDNV over pairs of kept classes
    cdnv_std: float
    norm_mean: float  # mean ||m_c||
    norm_cov: float  # std / mean of ||m_c||
    log_norm_cov: float  # std / |mean| of log ||m_c||
    norm_sq_cov: float  # std / mean of ||m_c||^2 (the "norms" CoV of Wu & Papyan's 2024-05-18 table)
    cos_mean: float  # mean cos(m_c, m_c') over pairs; simplex ETF: -1/(K-1)
    cos_std: float
    etf_error: float  # || M M^T / ||M M^T||_F - (I - 11^T/K) / sqrt(K-1) ||_F
    gnc_log_mean: float  # mean log(1 / ||m^_c - m^_c'||) over pairs
    gnc_log_std: float
    riesz_mean: float | None = None  # mean ||m^_c - m^_c'||^-s, with options.riesz_s
    riesz_std: float | None = None
    dual_cos_mean: float | None = None  # mean over classes of cos(w_c, m_c), with a classifier
    dual_cos_std: float | None = None
    unc_cov: float | None = None  # dual_cos_std / |dual_cos_mean|
    dual_error: float | None = None  # || W M^T / ||W M^T||_F - (I - 11^T/K) / sqrt(K-1) ||_F
    dot_mean: float | None = None  # mean over classes of w_c . m_c (the dot-product similarity)
    dot_std: float | None = None
    unc_dot_cov: float | None = None  # dot_std / |dot_mean| (UNC of the dot products)
    dual_dist_mean: float | None = None  # mean over classes of ||w_c/|w_c| - m_c/|m_c|||
    dual_dist_std: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def etf_cos_target(self) -> float:
        """-1/(K-1): the pairwise cosine of a simplex ETF with the kept number of classes."""
        return -1.0 / (self.num_classes_kept - 1)

    def undefined(self) -> dict[str, str]:
        """Why each metric that is not a finite number is undefined (JSON writes them as null)."""
        reasons = {}
        for key, value in asdict(self).items():
            if key == "options" or (isinstance(value, (int, float)) and math.isfinite(value)):
                continue
            if value is None:
                reasons[key] = ("no classifier was given" if key.startswith(("dual", "unc", "dot"))
                                else "riesz_s was not set" if key.startswith("riesz") else "not computed")
            elif key.startswith("cdnv"):
                reasons[key] = ("two kept classes have the same mean (distance 0): infinite CDNV" if value == math.inf
                                else "two kept classes have the same mean and both variance 0 (0/0), or an "
                                     "infinite CDNV entered the mean")
            elif key in ("etf_error",):
                reasons[key] = "every class mean equals the global mean: M M^T is zero"
            elif key == "dual_error":
                reasons[key] = "W M^T is zero: nothing to normalize"
            elif key.startswith(("gnc", "riesz")):
                reasons[key] = ("two kept classes have the same mean direction (an infinite kernel), or a mean "
                                "equals the global mean")
            elif value == math.inf:
                reasons[key] = "the mean it is divided by is 0 (a coefficient of variation of a zero mean)"
            else:
                reasons[key] = "a kept class mean equals the global mean (no direction), or all do (no spread)"
        return reasons

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), undefined=self.undefined())


def collapse_metrics(
    stats: ClassStats,
    classifier=None,
    *,
    cdnv_power: float = 2.0,
    center: Literal["uniform", "weighted"] = "uniform",
    min_count: int = 1,
    tile_size: int | None = None,
    riesz_s: float | None = None,
    spread_ddof: int = 0,
    max_count: int | None = None,
) -> CollapseMetrics:
    """Every neural-collapse metric of ``stats`` (and of the classifier ``W`` (K, D), if given).

    Presets: ``collapse_metrics(stats, W, **PRESETS["lc2024"])`` reproduces Linguistic Collapse.
    Runs on the device of ``stats`` (use ``stats.to("cuda")`` for a GPU sweep).

    The NC1 trace ratio uses the pooled S_W of all samples; when ``min_count`` > 1 drops classes,
    their within-class scatter still counts there (per-class covariances are never kept).
    Two kept classes with identical means make the CDNV infinite; a kept class whose mean equals
    the global mean has no direction, and the cosine metrics become NaN.
    """
    opts = MetricOptions(cdnv_power, center, min_count, tile_size, riesz_s, spread_ddof, max_count)
    return collapse_sweep(stats, classifier, opts)[0]


@dataclass(frozen=True)
class KeptClasses:
    """The kept classes of a set of statistics, centered, with the classifier's rows for them."""

    ids: torch.Tensor  # (K',) int64 rows of the statistics with min_count (to max_count) samples
    labels: torch.Tensor  # (K',) int64 their class ids (the token ids; = ids unless the statistics are sparse)
    means: torch.Tensor  # (K', D) mu_c
    counts: torch.Tensor  # (K',) n_c
    var_traces: torch.Tensor  # (K',) sigma2_c
    centered: torch.Tensor  # (K', D) m_c = mu_c - mu_G
    norms: torch.Tensor  # (K',) ||m_c||
    classifier: torch.Tensor | None  # (K', D) w_c, float64

    def dual_vectors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per class: w_c . m_c, cos(w_c, m_c) and ||w_c/|w_c| - m_c/|m_c|||, each (K',)."""
        w, m = self.classifier, self.centered
        dots = (w * m).sum(1)
        w_norms = w.norm(dim=1)
        return dots, dots / (w_norms * self.norms), (w / w_norms[:, None] - m / self.norms[:, None]).norm(dim=1)


def kept_classes(stats: ClassStats, classifier, opts: MetricOptions) -> KeptClasses:
    """The classes the metrics use (``min_count``), centered as ``opts.center`` says; refuses fewer
    than two, and a classifier of the wrong shape or with NaN/Inf."""
    if not isinstance(stats, ClassStats):
        raise TypeError(f"stats must be ClassStats, got {type(stats).__name__}")
    dev = stats.device
    kept = kept_rows(stats, opts.min_count, opts.max_count)  # (K',)
    k = int(kept.numel())
    if k < 2:
        span = f"at least min_count={opts.min_count}" + ("" if opts.max_count is None else f" and at most max_count={opts.max_count}")
        raise ValueError(f"only {k} class(es) have {span} samples; collapse metrics need at least 2")
    labels = stats.ids[kept]
    w = None
    if classifier is not None:
        # The classifier has a row per class of the label space (the model's vocabulary), also
        # when the statistics hold only the classes seen.
        w = as_tensor(classifier, "classifier", device=dev, dtype=torch.float64)
        check_shape(w, "classifier", (stats.label_space, stats.dim))
        w = w[labels]  # (K', D)
        check_finite(w, "classifier")
    means = stats.means[kept]  # (K', D)
    counts = stats.counts[kept]
    if opts.center == "uniform":
        global_mean = means.mean(0)
    else:
        global_mean = (counts[:, None] * means).sum(0) / counts.sum()
    centered = means - global_mean  # (K', D)
    return KeptClasses(kept, labels, means, counts, stats.var_traces[kept], centered, centered.norm(dim=1), w)


def kept_rows(stats: ClassStats, min_count: int = 1, max_count: int | None = None) -> torch.Tensor:
    """(K',) the rows of the classes the metrics keep: min_count <= samples (<= max_count)."""
    keep = stats.sample_counts >= min_count
    if max_count is not None:
        keep &= stats.sample_counts <= max_count
    return torch.nonzero(keep).flatten()


def collapse_sweep(stats: ClassStats, classifier, opts: MetricOptions, per_class: bool = False
              ) -> tuple[CollapseMetrics, KeptClasses, PairwiseResult]:
    """The metrics, the kept classes and the pairwise sweep they came from (with its per-class rows
    when ``per_class``): ufm.class_table reads the same sweep instead of running a second one."""
    c = kept_classes(stats, classifier, opts)
    k, dev = int(c.ids.numel()), stats.device
    _warn_if_long(k, stats.dim, dev)
    log_norms = c.norms.log()
    tile = opts.tile_size or (8192 if dev.type == "cuda" else 1024)
    pairs = pairwise_sweep(
        c.centered, c.var_traces, cdnv_power=float(opts.cdnv_power), tile_size=tile,
        riesz_s=opts.riesz_s, classifier=c.classifier, per_class=per_class,
    )
    dual = {}
    if c.classifier is not None:  # NC3 and its variants: cosines, dot products, distances of the normalized vectors
        dots, dual_cos, dists = c.dual_vectors()
        mean, std = _mean_std(dual_cos, opts.spread_ddof)
        dot_mean, dot_std = _mean_std(dots, opts.spread_ddof)
        dist_mean, dist_std = _mean_std(dists, opts.spread_ddof)
        dual = dict(dual_cos_mean=mean, dual_cos_std=std, unc_cov=_ratio(std, abs(mean)),
                    dual_error=pairs.dual_error, dot_mean=dot_mean, dot_std=dot_std,
                    unc_dot_cov=_ratio(dot_std, abs(dot_mean)), dual_dist_mean=dist_mean, dual_dist_std=dist_std)
    riesz = dict(riesz_mean=pairs.riesz[0], riesz_std=pairs.riesz[1]) if pairs.riesz else {}
    norm_mean, norm_std = _mean_std(c.norms, opts.spread_ddof)
    log_mean, log_std = _mean_std(log_norms, opts.spread_ddof)
    sq_mean, sq_std = _mean_std(c.norms.square(), opts.spread_ddof)
    spectrum = between_spectrum(stats.within_scatter, c.centered)  # one eigh for both NC1 forms
    metrics = CollapseMetrics(
        num_classes_kept=k,
        num_pairs=pairs.num_pairs,
        nc1_trace_ratio=nc1_trace_ratio(stats.within_scatter, c.centered, spectrum),
        nc1_quotient=_ratio(float(torch.trace(stats.within_scatter)), float(c.centered.square().sum()) / k),
        nc1_svd=nc1_svd(stats.within_scatter, c.centered, spectrum),
        cdnv_mean=pairs.cdnv[0],
        cdnv_std=pairs.cdnv[1],
        norm_mean=norm_mean,
        norm_cov=_ratio(norm_std, norm_mean),
        log_norm_cov=_ratio(log_std, abs(log_mean)),
        norm_sq_cov=_ratio(sq_std, sq_mean),
        cos_mean=pairs.cos[0],
        cos_std=pairs.cos[1],
        etf_error=pairs.etf_error,
        gnc_log_mean=pairs.log_kernel[0],
        gnc_log_std=pairs.log_kernel[1],
        options=asdict(opts),
        **riesz,
        **dual,
    )
    return metrics, c, pairs


# Seconds per (pair x dimension) of the full sweep on a 2-core CPU, from benchmarks/metrics.py
# (K = 50,257, D = 768: 31.5 s for K^2/2 pairs), and on an H100 (0.41 s).
_SWEEP_SECONDS = {"cpu": 31.5 / (50_257**2 / 2 * 768), "cuda": 0.41 / (50_257**2 / 2 * 768)}
LONG_SWEEP_SECONDS = 600.0  # a sweep expected to take longer is announced


def expected_sweep_seconds(num_classes: int, dim: int, device: torch.device) -> float:
    """The pairwise sweep's expected time: it visits K^2/2 pairs of D-dimensional means."""
    return _SWEEP_SECONDS.get(device.type, _SWEEP_SECONDS["cpu"]) * num_classes**2 / 2 * dim


def _warn_if_long(num_classes: int, dim: int, device: torch.device) -> None:
    seconds = expected_sweep_seconds(num_classes, dim, device)
    if seconds > LONG_SWEEP_SECONDS:
        warnings.warn(f"the all-pairs sweep over {num_classes:,} kept classes (D = {dim}) is expected to take "
                      f"~{seconds / 3600:.1f} h on {device.type}; raise min_count to keep fewer classes, or "
                      "run it where the statistics are on a GPU (stats.to('cuda'))", stacklevel=3)


def between_spectrum(within_scatter: torch.Tensor, centered_means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenvalues (D,) of S_B = M^T M / K, ascending, and v_i^T S_W v_i along each of its
    eigenvectors (D,): both forms of NC1 are sums of their ratios, from one eigendecomposition."""
    between = centered_means.T @ centered_means / centered_means.shape[0]  # (D, D)
    evals, evecs = torch.linalg.eigh(between)
    return evals, (evecs * (within_scatter @ evecs)).sum(0)


def nc1_trace_ratio(within_scatter: torch.Tensor, centered_means: torch.Tensor, spectrum=None) -> float:
    """Tr(S_W S_B^+) / K with S_B = M^T M / K, M the (K, D) centered means (Papyan et al. 2020);
    ``spectrum``: ``between_spectrum``'s result, when already computed."""
    evals, projected = spectrum or between_spectrum(within_scatter, centered_means)
    keep = evals > PINV_RTOL * evals.max()
    return float((projected[keep] / evals[keep]).sum()) / centered_means.shape[0]


def nc1_svd(within_scatter: torch.Tensor, centered_means: torch.Tensor, spectrum=None) -> float:
    """Tr(S_W S_B^+) with the pseudo-inverse built from the top r = min(K-1, D) eigenpairs of
    S_B = M^T M / K, not divided by K: the SVD form of NC1 (Han, Papyan & Donoho, ICLR 2022; the
    peer library's ``variability_pinv(svd=True)``). It equals K x nc1_trace_ratio when S_B has full
    rank r; a fixed r (no threshold) makes it blow up, rather than drop a direction, where the class
    means lose rank."""
    evals, projected = spectrum or between_spectrum(within_scatter, centered_means)
    k, d = centered_means.shape
    r = min(k - 1, d)
    return float((projected[d - r:] / evals[d - r:]).sum())  # the r largest, eigh's order being ascending


def ood_orthogonality(stats: ClassStats, ood_mean, *, center: Literal["uniform", "weighted"] = "uniform",
                      min_count: int = 1, max_count: int | None = None) -> float:
    """NC5 (Ammar et al., "NECO", ICLR 2024): the mean over kept classes of |cos(m_c, m_OOD)|, with
    m_c = mu_c - mu_G the centered class means and m_OOD = mu_OOD - mu_G the global mean of
    out-of-distribution features (D,), both around the in-distribution global mean mu_G. 0 when the
    OOD mean is orthogonal to every class direction; NECO's detector relies on it being small."""
    c = kept_classes(stats, None, MetricOptions(center=center, min_count=min_count, max_count=max_count))
    mean = as_tensor(ood_mean, "ood_mean", device=stats.device, dtype=torch.float64)
    check_shape(mean, "ood_mean", (stats.dim,))
    check_finite(mean, "ood_mean")
    ood = mean - (c.means[0] - c.centered[0])  # (D,) around mu_G
    cos = (c.centered @ ood) / (c.norms * ood.norm())  # (K',)
    return float(cos.abs().mean())


def variability_ratio(stats: ClassStats) -> float:
    """Tr S_W / Tr S_B, S_B over the classes present around the mean of their means: the scalar
    within-class variability of Tirer, Huang & Niles-Weed (2023); 0 at NC1."""
    means = stats.means[stats.sample_counts > 0]  # (K', D)
    between = float((means - means.mean(0)).square().sum()) / len(means)
    return _ratio(float(torch.trace(stats.within_scatter)), between)


def _ratio(num: float, den: float) -> float:
    """num / den as IEEE defines it, without Python's ZeroDivisionError: a spread over a zero mean is
    infinite, and 0 / 0 (every class mean at the global mean) is NaN."""
    if den != 0:
        return num / den
    return math.inf if num > 0 else math.nan


def _mean_std(x: torch.Tensor, ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation over classes, with ``ddof`` 0 (population) or 1 (Bessel)."""
    mean = x.mean()
    return float(mean), float(((x - mean).square().sum() / (x.numel() - ddof)).sqrt())

