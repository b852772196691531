"""`collapse analyze`: each metric of a table of models against its loss (Wu & Papyan's analysis)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ufm.io import write_json


def add_parser(sub) -> None:
    ana = sub.add_parser("analyze", help="each metric of a table of models against its loss (Wu & Papyan's analysis)")
    ana.add_argument("table", type=Path, help="a CSV file with a header, or JSON lines (one model per line)")
    ana.add_argument("--loss", required=True, help="the loss column (e.g. val_loss)")
    ana.add_argument("--metrics", default=None, help="comma-separated metric columns (default: every numeric column)")
    ana.add_argument("--log10", action="append", default=[], metavar="COL", help="analyse COL as log10 (repeatable)")
    ana.add_argument("--ratio", action="append", default=[], metavar="NAME=A/B",
                     help="a derived column A / B, e.g. a CoV from std and mean columns (repeatable)")
    ana.add_argument("--group", default=None, metavar="COL",
                     help="rows sharing COL are not independent (a run's epochs, one architecture's seeds)")
    ana.add_argument("--group-pattern", default=None, metavar="REGEX",
                     help="group by the first capture group of REGEX in the group column")
    ana.add_argument("--draws", type=int, default=10_000, help="permutation draws (default 10,000)")
    ana.add_argument("--dropna", action="store_true", help="skip rows with missing values instead of failing")
    ana.add_argument("--seed", type=int, default=0, help="seed of the permutation draws")
    ana.add_argument("--out", type=Path, required=True, help="directory for analysis.json, analysis.md, figures")
    ana.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ufm.io import atomic_write

    from ufm.analysis import analysis_figures, analyze_table, read_table

    rows = read_table(args.table)
    ratios = {}
    for spec in args.ratio:
        name, _, frac = spec.partition("=")
        num, _, den = frac.partition("/")
        if not (name and num and den):
            raise ValueError(f"--ratio takes NAME=A/B, got {spec!r}")
        if name in ratios:
            raise ValueError(f"--ratio defines {name!r} twice")
        ratios[name] = (num, den)
    metrics = [m for m in args.metrics.split(",") if m] if args.metrics else None
    analysis = analyze_table(rows, args.loss, metrics=metrics, log10=tuple(args.log10), ratios=ratios,
                             group=args.group, group_pattern=args.group_pattern, dropna=args.dropna,
                             draws=args.draws, seed=args.seed)
    table = analysis.markdown()
    figures = analysis_figures(rows, analysis, args.out, ratios)
    write_json(args.out / "analysis.json", dict(analysis.to_dict(), table=str(args.table), figures=figures))
    caption = analysis.caption(args.table.name, draws=args.draws, seed=args.seed)
    atomic_write(args.out / "analysis.md", lambda tmp: tmp.write_text(f"{caption}\n\n{table}\n"))
    print(caption)
    print(table)
    print(f"wrote {args.out}/analysis.json, analysis.md and {len(figures)} figures")
    return 0
