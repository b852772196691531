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


def study_figures(rows: list[dict], metrics: list[str], out: Path, loss: str) -> list[str]:
    final = [r for r in rows if str(r["layer"]) == "final"]
    runs = sorted({r["run"] for r in final})
    archs = sorted({r["arch"] for r in final})
    colours = {a: plt.cm.viridis(i / max(1, len(archs) - 1)) for i, a in enumerate(archs)}
    n = len(metrics)
    names = []

    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, key in zip(axes[0], metrics):
        for arch in archs:
            sel = [r for r in final if r["arch"] == arch]
            ax.scatter([_num(r[loss]) for r in sel], [_num(r[key]) for r in sel], color=colours[arch], s=18, label=arch)
        ax.set_xlabel(loss)
        ax.set_ylabel(key, fontsize=8)
        ax.set_title(f"{key} vs {loss}", fontsize=9)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"each metric against {loss}, by architecture (every checkpoint)", fontsize=10)
    names.append(_common.save_figure(fig, out / "metrics_vs_loss.png").name)

    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, key in zip(axes[0], metrics):
        for run in runs:
            sel = sorted((r for r in final if r["run"] == run), key=lambda r: _num(r["step"]))
            ax.plot([_num(r["step"]) for r in sel], [_num(r[key]) for r in sel], "o-", ms=3, lw=1, label=run)
        ax.set_xlabel("training step")
        ax.set_ylabel(key, fontsize=8)
        ax.set_title(f"{key} over training", fontsize=9)
    axes[0][0].legend(fontsize=5)
    fig.suptitle("each metric against the step, one line per run", fontsize=10)
    names.append(_common.save_figure(fig, out / "metrics_vs_step.png").name)

    layered = [r for r in rows if str(r["layer"]) != "final"]
    if layered:
        fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
        for ax, key in zip(axes[0], metrics):
            for run in runs:
                mine = [r for r in layered if r["run"] == run]
                if not mine:
                    continue
                last = max(_num(r["step"]) for r in mine)
                sel = sorted((r for r in mine if _num(r["step"]) == last), key=lambda r: _num(r["layer"]))
                ax.plot([_num(r["layer"]) for r in sel], [_num(r[key]) for r in sel], "o-", ms=3, lw=1, label=run)
            ax.set_xlabel("hidden state (0 = embeddings)")
            ax.set_ylabel(key, fontsize=8)
            ax.set_title(f"{key} by depth", fontsize=9)
        axes[0][0].legend(fontsize=5)
        fig.suptitle("each metric against depth, each run's last checkpoint", fontsize=10)
        names.append(_common.save_figure(fig, out / "metrics_vs_depth.png").name)
    return names
