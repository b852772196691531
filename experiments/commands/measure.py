"""`collapse measure`: collapse statistics of a causal LM on a corpus, in one pass (a series of checkpoints too)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from experiments.commands.common import (add_common, add_metric_flags, describe_options, format_table, metric_options,
                                         resolve_device)


def add_parser(sub) -> None:
    measure = sub.add_parser("measure", help="collapse statistics of a causal LM on a corpus, in one pass")
    measure.add_argument("--model", type=Path, nargs="+", required=True,
                         help="a Hugging Face model directory (local); several, or a folder of checkpoints, "
                              "for a series (series.csv, ordered by step)")
    measure.add_argument("--corpus", required=True,
                         help="a corpus name (collapse data list), a text file, a folder of them, or a saved dataset")
    measure.add_argument("--heldout", default=None, help="held-out text (name or path) for NC4 and the validation loss")
    measure.add_argument("--ood", default=None,
                         help="out-of-distribution text (name or path): NC5, the orthogonality of its mean to the "
                              "class means (Ammar et al., NECO)")
    measure.add_argument("--layers", default=None,
                         help="also every hidden state ('all') or some ('0,3,6'; 0 = embeddings), in the same pass")
    measure.add_argument("--block-size", type=int, default=None, help="tokens per block (default: the model's maximum)")
    measure.add_argument("--batch-size", type=int, default=8, help="blocks per forward pass")
    measure.add_argument("--max-tokens", type=int, default=None, help="stop after this many corpus tokens")
    measure.add_argument("--checkpoint-every", type=int, default=1000, help="blocks between checkpoints (0: none)")
    add_metric_flags(measure)
    measure.add_argument("--errors", choices=["strict", "replace"], default="strict",
                         help="bytes that are not UTF-8: an error (default), or read as U+FFFD")
    measure.add_argument("--overwrite", action="store_true", help="replace a finished run of another model in --out")
    measure.add_argument("--allow-mixed", action="store_true",
                         help="measure a series whose checkpoints have different tokenizers or architectures")
    measure.add_argument("--nc4-positions", choices=["all", "kept"], default=None,
                         help="held-out positions NC4 counts: all, or those whose next token is a kept class "
                              "(default: kept with --preset lc2024, else all)")
    add_common(measure, out_required=True)
    measure.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lm_bridge.collect import NC4_POSITIONS, CollectConfig, init_distributed
    from lm_bridge.data import open_corpus
    from lm_bridge.measure import MeasureOptions, expand_checkpoints, measure_folder, measure_series, parse_layers
    from lm_bridge.models import load_model, require_model_dirs

    paths = expand_checkpoints(args.model)
    require_model_dirs(paths)  # every input is checked before any pass
    heldout = open_corpus(args.heldout, errors=args.errors) if args.heldout is not None else None
    ood = open_corpus(args.ood, errors=args.errors) if args.ood is not None else None
    corpus = open_corpus(args.corpus, errors=args.errors)
    rank, world, device = init_distributed(args.device)
    options = metric_options(args)
    positions = args.nc4_positions or NC4_POSITIONS.get(args.preset, "all")
    mopts = MeasureOptions(options, args.preset, positions, args.overwrite)
    print(describe_options(args.preset, options))
    config = CollectConfig(block_size=args.block_size, batch_size=args.batch_size, max_tokens=args.max_tokens,
                           checkpoint_every=args.checkpoint_every)
    if len(paths) > 1:
        rows = measure_series(paths, corpus, args.out, config, mopts, layers=args.layers, heldout=heldout, ood=ood,
                              device=resolve_device(device), allow_mixed=args.allow_mixed)
        if rank == 0:
            print(format_table([(f"{r['name']} (step {r['step']})", r) for r in rows]))
            print(f"wrote {args.out}/series.csv ({len(rows)} checkpoints) and metrics_vs_step.png")
        return 0
    if len(args.model) == 1 and paths[0] != args.model[0]:
        print(f"{args.model[0]} holds one checkpoint ({paths[0].name}): measured as a single model into {args.out} "
              "(a series needs two or more; no series.csv)")
    loaded = load_model(paths[0], device=resolve_device(device))
    config = replace(config, layers=parse_layers(args.layers, loaded))
    summary = measure_folder(loaded, corpus, args.out, config, mopts, heldout=heldout, ood=ood)
    if summary is None:
        return 0
    if summary["resumed_blocks"]:
        print(f"resumed from {args.out}/checkpoint.safetensors: {summary['resumed_blocks']} of {summary['blocks']} "
              "blocks were measured by an earlier, interrupted run")
    print(f"model {loaded.path} (identity {loaded.identity}, hashed in {loaded.identity_seconds:.2f} s); "
          f"statistics state {summary['state_gib']:.3f} GiB for the {summary['classes_seen']:,} classes seen (of "
          f"{loaded.vocab_size:,}) in {summary['passes']} pass(es)")
    print(format_table([(summary["model"]["name"], summary["metrics"]),
                        *((f"  hidden state {i}", v["metrics"]) for i, v in summary["layers"].items())]))
    if summary["nc4_agreement"] is not None:
        which = "whose next token is a kept class" if positions == "kept" else "all labelled positions"
        print(f"NC4 agreement on held-out text: {summary['nc4_agreement']:.4f} ({summary['nc4_tokens']} tokens, "
              f"{which}); held-out loss {summary['val_loss']:.4f} nats")
    if summary["nc5_ood"] is not None:
        print(f"NC5 against {args.ood}: mean |cos(class mean, OOD mean)| = {summary['nc5_ood']:.4f} (0: the OOD mean "
              "is orthogonal to every class direction, as NECO expects)")
    print(f"{summary['tokens']} tokens in {summary['seconds']:.1f} s; wrote {args.out}/stats.safetensors, metrics.json, "
          + ", ".join(summary["figures"]))
    return 0
