"""A study's figures: each metric against the loss (coloured by architecture), against the step
(one line per run) and against depth (the layers of each run's last checkpoint)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt

from experiments import _common  # its save_figure (the tests check every figure it saves)


def _num(value):
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x


def _panels(metrics: list[str], path: Path, title: str, xlabel: str, what: str, draw) -> str:
    """One panel per metric, ``draw(ax, key)`` filling it; returns the file name."""
    cols = min(5, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows + 0.4), squeeze=False)
    for ax, key in zip(axes.flat, metrics):
        draw(ax, key)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(key, fontsize=8)
        ax.set_title(f"{key} {what}", fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    axes[0][0].legend(fontsize=5)
    fig.suptitle(title, fontsize=10)
    return _common.save_figure(fig, path).name


def study_figures(rows: list[dict], metrics: list[str], out: Path, loss: str) -> list[str]:
    ufm = [r for r in rows if r.get("source") == "ufm"]  # the idealized limit on the same text, a reference
    final = [r for r in rows if str(r["layer"]) == "final" and r.get("source") != "ufm"]
    runs = sorted({r["run"] for r in final})
    archs = sorted({r["arch"] for r in final})
    colours = {a: plt.cm.viridis(i / max(1, len(archs) - 1)) for i, a in enumerate(archs)}

    def by_arch(ax, key):
        for arch in archs:
            sel = [r for r in final if r["arch"] == arch]
            ax.scatter([_num(r[loss]) for r in sel], [_num(r[key]) for r in sel], color=colours[arch], s=18, label=arch)
        for r in ufm:
            if math.isfinite(_num(r[key])):
                ax.axhline(_num(r[key]), color="crimson", ls="--", lw=1, label="UFM, same contexts")

    def by_step(ax, key):
        for run in runs:
            sel = sorted((r for r in final if r["run"] == run), key=lambda r: _num(r["step"]))
            ax.plot([_num(r["step"]) for r in sel], [_num(r[key]) for r in sel], "o-", ms=3, lw=1, label=run)

    layered = [r for r in rows if str(r["layer"]) != "final"]

    def by_depth(ax, key):
        for run in runs:
            mine = [r for r in layered if r["run"] == run]
            if mine:
                last = max(_num(r["step"]) for r in mine)
                sel = sorted((r for r in mine if _num(r["step"]) == last), key=lambda r: _num(r["layer"]))
                ax.plot([_num(r["layer"]) for r in sel], [_num(r[key]) for r in sel], "o-", ms=3, lw=1, label=run)

    names = [_panels(metrics, out / "metrics_vs_loss.png", f"each metric against {loss}, by architecture (every "
                     "checkpoint)", loss, f"vs {loss}", by_arch),
             _panels(metrics, out / "metrics_vs_step.png", "each metric against the step, one line per run",
                     "training step", "over training", by_step)]
    # The classifier meets the last state only: NC3's metrics have no value in the inner layers.
    inner = [k for k in metrics if any(math.isfinite(_num(r[k])) for r in layered)]
    if inner:
        names.append(_panels(inner, out / "metrics_vs_depth.png", "each metric against depth, each run's last "
                             "checkpoint", "hidden state (0 = embeddings)", "by depth", by_depth))
    return names
