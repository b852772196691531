"""`collapse demo`: the main job: two CLMs on Shakespeare, measured, next to the UFM."""

from __future__ import annotations

import argparse

from experiments.commands.common import add_common


def add_parser(sub) -> None:
    demo = sub.add_parser("demo", help="the main job: two CLMs on Shakespeare, measured, next to the UFM (~2 min)")
    add_common(demo)
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from experiments.demo import run_demo

    return run_demo(args)
