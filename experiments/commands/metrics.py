"""`collapse metrics`: collapse metrics of a saved statistics file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ufm.io import write_json
from experiments.commands.common import add_common, add_metric_flags, describe_options, format_table, metric_options, resolve_device


def add_parser(sub) -> None:
    metrics = sub.add_parser("metrics", help="collapse metrics of a saved statistics file")
    metrics.add_argument("stats", type=Path, help="a stats.safetensors file")
    metrics.add_argument("--classifier", type=Path, default=None,
                         help="safetensors file holding the classifier W (K, D)")
    add_metric_flags(metrics)
    add_common(metrics)
    metrics.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import ufm

    device = resolve_device(args.device)
    stats = ufm.ClassStats.load(args.stats, device=device)
    classifier = None
    if args.classifier is not None:
        from safetensors.torch import load_file

        tensors = load_file(str(args.classifier))
        if len(tensors) != 1:
            raise SystemExit(f"{args.classifier} must hold exactly one tensor (W, shape (K, D))")
        classifier = next(iter(tensors.values())).to(device)
    options = metric_options(args)
    metrics = ufm.collapse_metrics(stats, classifier, **options)
    print(describe_options(args.preset, options))
    print(format_table([(args.stats.name, metrics.to_dict())]))
    if args.out is not None:
        write_json(args.out / "metrics.json", metrics.to_dict())
    return 0
