"""`collapse experiment`: run one reproduction from experiments/."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from experiments import REGISTRY

    listing = "\n".join(f"  {name:21s} {what}" for name, what in REGISTRY.items())
    exp = sub.add_parser("experiment", help=f"run a reproduction: {', '.join(REGISTRY)}",
                         description="Run one reproduction (a figure or table of a paper); each writes "
                                     "config.json, results.json and figures to --out.",
                         epilog=f"experiments:\n{listing}\n\n`collapse experiment NAME --help` shows its options "
                                "(--quick, --out, --device, ...).",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    exp.add_argument("name", help="experiment name (collapse experiment NAME --help for its options)")
    exp.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the experiment")
    exp.set_defaults(func=run, seed=0)


def run(args: argparse.Namespace) -> int:
    import importlib

    from experiments import REGISTRY, module_of

    if args.name not in REGISTRY:
        raise ValueError(f"unknown experiment {args.name!r}; known: {', '.join(sorted(REGISTRY))}")
    importlib.import_module(module_of(args.name)).main(args.rest)
    return 0
