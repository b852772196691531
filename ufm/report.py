"""Figures of a measured geometry: per-class duality, norms against frequency, a CDNV sample."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .stats import ClassStats  # noqa: E402
from .io import atomic_write  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def heatmap(ax, matrix: np.ndarray, title: str, items: str = "item") -> None:
    """A cosine map on [-1, 1], without ticks; ``items`` names what the rows and columns are."""
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(items, fontsize=8)
    ax.set_ylabel(items, fontsize=8)
    plt.colorbar(im, ax=ax, fraction=0.046, label="cosine")


def class_geometry(stats: ClassStats, classifier: torch.Tensor | None, *, center: str = "uniform",
                   min_count: int = 1) -> dict[str, np.ndarray]:
    """Per kept class: id, count, ||m_c|| and cos(w_c, m_c) (NaN without a classifier), as arrays."""
    from .metrics import MetricOptions, kept_classes

    c = kept_classes(stats, classifier, MetricOptions(center=center, min_count=min_count))
    dual = c.dual_vectors()[1] if c.classifier is not None else torch.full_like(c.norms, float("nan"))
    return dict(ids=c.ids.cpu().numpy(), counts=c.counts.cpu().numpy(), norms=c.norms.cpu().numpy(),
                dual_cos=dual.cpu().numpy())


def cdnv_matrix(stats: ClassStats, ids: np.ndarray, power: float = 2.0) -> np.ndarray:
    """CDNV between the classes ``ids`` (a small sample; the diagonal is 0)."""
    idx = torch.as_tensor(ids, device=stats.device)
    mu, var = stats.means[idx], stats.var_traces[idx]
    d2 = torch.cdist(mu, mu).square()
    out = (var[:, None] + var[None, :]) / (2 * d2.pow(power / 2))
    return out.fill_diagonal_(0.0).cpu().numpy()


def random_means_etf_error(num_classes: int, dim: int, seed: int = 0) -> float:
    """The ETF error of K Gaussian class means in R^D: what no collapse at all looks like (~sqrt(2)
    when K is large), the baseline next to a measured ETF error."""
    from . import collapse_metrics, stats_from_features

    means = np.random.default_rng(seed).normal(size=(num_classes, dim))
    return collapse_metrics(stats_from_features(means, np.arange(num_classes), num_classes)).etf_error


# What the NC1 trace ratio can and cannot be compared with (Papyan, Han & Donoho 2020's NC1).
NC1_TRACE_NOTE = ("The NC1 trace ratio Tr(S_W S_B^+)/K sums a within- over between-class variance ratio over the "
                  "rank(S_B) = min(D, K-1) directions of the class means and divides by K: it is 0 at full "
                  "collapse, has no upper bound (features without class structure give values far above 1), and "
                  "carries a factor min(D, K-1)/K, so compare it between models of one width and class set.")


def etf_error_reading(value: float, num_classes: int, dim: int, random: float) -> str:
    """Where a measured ETF error sits between the best any D-dimensional arrangement of K means can
    do (``theory.etf_error_floor``) and random means (``random``): a fraction from 0 (the floor) to 1
    (random) when it lies between them, else by how much it is worse than random."""
    from .theory import etf_error_floor

    floor = etf_error_floor(num_classes, dim)
    scale = (f"floor {floor:.3f} (the best {num_classes} means can do in D = {dim}), random means "
             f"{random:.3f}")
    if not math.isfinite(value):
        return scale
    if value > random:
        return f"{scale}: {value - random:.3f} above random means, worse than no collapse at all"
    place = (value - floor) / (random - floor) if random > floor else 0.0
    return f"{scale}: {place:.2f} of the way from the floor (0) to random (1)"


def shuffled_correlation(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """The off-diagonal correlation of two (n, n) maps after relabelling the items of ``b`` at
    random: the control that a structural correlation must beat."""
    from .theory import offdiag_correlation

    perm = np.random.default_rng(seed).permutation(len(b))
    return offdiag_correlation(a, b[np.ix_(perm, perm)])


def restrict_classes(stats: ClassStats, classes: np.ndarray) -> ClassStats:
    """The same statistics with every class outside ``classes`` emptied (so the metrics drop them);
    the pooled S_W, which has no per-class parts, is kept as is."""
    keep = torch.isin(stats.ids, torch.as_tensor(classes, device=stats.device))  # (K,) by class id
    zero = lambda t: torch.where(keep.view(-1, *[1] * (t.dim() - 1)), t, torch.zeros_like(t))  # noqa: E731
    return ClassStats(zero(stats.counts), zero(stats.sample_counts), zero(stats.means), zero(stats.var_traces),
                      stats.within_scatter, dict(stats.metadata, restricted_to=len(classes)),
                      class_ids=stats.class_ids, num_labels=stats.num_labels)


def metric_panels(x, rows: list[dict], panels: list[tuple[str, str, bool]], path: Path, *, xlabel: str, title: str,
                  extra: tuple[str, list] | None = None) -> str:
    """One panel per (metric key, label, log scale) of ``rows`` against ``x`` (depth, or step),
    plus an ``extra`` (label, values) panel; returns the file name."""
    n = len(panels) + (extra is not None)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.3))
    series = [(label, [r.get(key) for r in rows], log) for key, label, log in panels]
    if extra is not None:
        series.append((extra[0], extra[1], False))
    whole = all(float(v).is_integer() for v in x)
    for ax, (label, values, log) in zip(np.atleast_1d(axes), series):
        y = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        ax.plot(x, y, "o-", ms=4)
        if log and np.all(y[np.isfinite(y)] > 0):
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        if whole:  # layers, epochs and steps are whole numbers: no 1.5-th layer on the axis
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path).name


def measure_figures(stats: ClassStats, classifier, out: Path, *, cdnv_power: float = 2.0,
                    center: str = "uniform", min_count: int = 1, sample: int = 64, title: str = "") -> list[str]:
    """Write the three figures of `collapse measure`; return their file names."""
    prefix = f"{title}: " if title else ""
    g = class_geometry(stats, classifier, center=center, min_count=min_count)
    names = []
    if classifier is not None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(g["dual_cos"][np.isfinite(g["dual_cos"])], bins=50)
        ax.set_xlabel("cos(w_c, m_c)")
        ax.set_ylabel("classes")
        ax.set_title(f"{prefix}NC3 self-duality per class", fontsize=9)
        names.append(save_figure(fig, out / "dual_cos_hist.png").name)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog(g["counts"], g["norms"], ".", ms=3, alpha=0.5)
    ax.set_xlabel("class frequency (tokens)")
    ax.set_ylabel("||mu_c - mu_G||")
    ax.set_title(f"{prefix}class-mean norms against frequency", fontsize=9)
    names.append(save_figure(fig, out / "norms_vs_frequency.png").name)
    top = g["ids"][np.argsort(-g["counts"], kind="stable")[:sample]]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    matrix = cdnv_matrix(stats, np.sort(top), cdnv_power)
    np.fill_diagonal(matrix, np.nan)  # a class with itself has no CDNV: the diagonal must not set the scale
    with np.errstate(divide="ignore"):
        im = ax.imshow(np.log10(matrix), cmap="viridis")
    plt.colorbar(im, ax=ax, label=f"log10 CDNV (distance power {cdnv_power:g})")
    ax.set_xlabel("class c' (token id order)", fontsize=8)
    ax.set_ylabel("class c (token id order)", fontsize=8)
    ax.set_title(f"{prefix}CDNV of the {len(top)} most frequent classes", fontsize=9)
    names.append(save_figure(fig, out / "cdnv_sample.png").name)
    return names


# Columns of the printed metrics table: (key in CollapseMetrics.to_dict(), header).
TABLE_COLUMNS = [
    ("nc1_trace_ratio", "NC1 tr"),
    ("cdnv_mean", "CDNV"),
    ("norm_cov", "CoV|m|"),
    ("log_norm_cov", "CoVlog|m|"),
    ("cos_mean", "cos"),
    ("cos_std", "std cos"),
    ("etf_error", "ETF err"),
    ("gnc_log_std", "std logK"),
    ("dual_cos_mean", "cos(w,m)"),
    ("dual_error", "dual err"),
]


def format_table(rows: list[tuple[str, dict]]) -> str:
    """A fixed-width table, one row per (label, metrics dict); missing metrics print as '-'."""
    width = max(len(label) for label, _ in rows)
    head = f"{'':<{width}} " + " ".join(f"{h:>10}" for _, h in TABLE_COLUMNS)
    lines = [head]
    for label, metrics in rows:
        cells = []
        for key, _ in TABLE_COLUMNS:
            value = metrics.get(key)
            cells.append(f"{'-':>10}" if value is None else f"{value:>10.4g}")
        lines.append(f"{label:<{width}} " + " ".join(cells))
    return "\n".join(lines)
