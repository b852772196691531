"""Figures of a measured geometry: per-class duality, norms against frequency, a CDNV sample."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ufm import ClassStats  # noqa: E402
from ufm.io import atomic_write  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def heatmap(ax, matrix: np.ndarray, title: str) -> None:
    """A cosine map on [-1, 1], without ticks."""
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    plt.colorbar(im, ax=ax, fraction=0.046)


def class_geometry(stats: ClassStats, classifier: torch.Tensor | None, *, center: str = "uniform",
                   min_count: int = 1) -> dict[str, np.ndarray]:
    """Per kept class: id, count, ||m_c|| and cos(w_c, m_c) (NaN without a classifier), as arrays."""
    kept = torch.nonzero(stats.sample_counts >= min_count).flatten()
    means, counts = stats.means[kept], stats.counts[kept]
    mu = means.mean(0) if center == "uniform" else (counts[:, None] * means).sum(0) / counts.sum()
    m = means - mu
    norms = m.norm(dim=1)
    if classifier is not None:
        w = classifier.to(m)[kept]
        dual = (w * m).sum(1) / (w.norm(dim=1) * norms)
    else:
        dual = torch.full_like(norms, float("nan"))
    return dict(ids=kept.cpu().numpy(), counts=counts.cpu().numpy(), norms=norms.cpu().numpy(),
                dual_cos=dual.cpu().numpy())


def cdnv_matrix(stats: ClassStats, ids: np.ndarray, power: float = 2.0) -> np.ndarray:
    """CDNV between the classes ``ids`` (a small sample; the diagonal is 0)."""
    idx = torch.as_tensor(ids, device=stats.device)
    mu, var = stats.means[idx], stats.var_traces[idx]
    d2 = torch.cdist(mu, mu).square()
    out = (var[:, None] + var[None, :]) / (2 * d2.pow(power / 2))
    return out.fill_diagonal_(0.0).cpu().numpy()


def metric_panels(x, rows: list[dict], panels: list[tuple[str, str, bool]], path: Path, *, xlabel: str, title: str,
                  extra: tuple[str, list] | None = None) -> str:
    """One panel per (metric key, label, log scale) of ``rows`` against ``x`` (depth, or step),
    plus an ``extra`` (label, values) panel; returns the file name."""
    n = len(panels) + (extra is not None)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.3))
    series = [(label, [r.get(key) for r in rows], log) for key, label, log in panels]
    if extra is not None:
        series.append((extra[0], extra[1], False))
    for ax, (label, values, log) in zip(np.atleast_1d(axes), series):
        y = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        ax.plot(x, y, "o-", ms=4)
        if log and np.all(y[np.isfinite(y)] > 0):
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
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
    plt.colorbar(im, ax=ax, label="log10 CDNV")
    ax.set_title(f"{prefix}CDNV of the {len(top)} most frequent classes", fontsize=9)
    names.append(save_figure(fig, out / "cdnv_sample.png").name)
    return names
