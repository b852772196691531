"""`collapse compare`: a causal LM next to the UFM of the same corpus (Markdown report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.commands.common import add_common, resolve_device


def add_parser(sub) -> None:
    cmp = sub.add_parser("compare", help="a causal LM next to the UFM of the same corpus (Markdown report)")
    cmp.add_argument("--model", type=Path, required=True, help="a Hugging Face model directory (local)")
    cmp.add_argument("--corpus", required=True, help="a corpus name (collapse data list) or a local path")
    cmp.add_argument("--context-length", type=int, default=2, help="n: contexts are the last n tokens")
    cmp.add_argument("--min-count", type=int, default=20, help="contexts seen fewer times are dropped")
    cmp.add_argument("--max-contexts", type=int, default=400)
    cmp.add_argument("--max-tokens", type=int, default=200_000, help="corpus tokens read")
    cmp.add_argument("--dim", type=int, default=None, help="UFM width (must equal the model's)")
    cmp.add_argument("--steps", type=int, default=3000, help="UFM steps")
    cmp.add_argument("--weight-decay", type=float, default=1e-4, help="UFM lambda")
    add_common(cmp, out_required=True)
    cmp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lm_bridge.compare import CompareConfig, compare_model
    from lm_bridge.data import open_corpus
    from lm_bridge.models import load_model

    loaded = load_model(args.model, device=resolve_device(args.device))
    config = CompareConfig(context_length=args.context_length, min_count=args.min_count,
                           max_contexts=args.max_contexts, max_tokens=args.max_tokens, dim=args.dim,
                           steps=args.steps, weight_decay=args.weight_decay, seed=args.seed)
    compare_model(loaded, open_corpus(args.corpus), config, args.out, device=args.device)
    print(f"report: {args.out / 'report.md'}")
    return 0
