"""What the commands share: argparse types, the common and metric flags, tables."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from ufm.presets import PRESETS

# Every module that needs torch, transformers, scipy or matplotlib is imported inside the command
# that uses it: `collapse --help` and argument errors answer without loading any of them.


def resolve_device(device: str):
    from ufm.validate import resolve_device as resolve

    return resolve(device)


def format_table(rows):
    from ufm.report import format_table as fmt

    return fmt(rows)


def int_at_least(minimum: int):
    """An argparse type: an integer >= minimum, or a usage error naming the flag's rule."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def support_range(text: str) -> tuple[int, int]:
    """--support: k or k_min,k_max, positive integers."""
    lo, _, hi = text.partition(",")
    try:
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes k or k_min,k_max (integers), got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"needs 1 <= k_min <= k_max, got {text!r}")
    return low, high


def add_common(parser: argparse.ArgumentParser, *, out_required: bool = False) -> None:
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, default=None, required=out_required, help="directory for outputs")


def metric_options(args: argparse.Namespace) -> dict:
    """The preset's options with the explicit flags on top; every option named, defaults included."""
    from ufm.metrics import MetricOptions

    base = asdict(MetricOptions.preset(args.preset) if args.preset else MetricOptions())
    for key in ("cdnv_power", "min_count", "max_count", "center", "spread_ddof"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    return base


def describe_options(preset: str | None, options: dict) -> str:
    """One line saying which metric choices a run used (the default's CDNV power differs from LC's)."""
    name = f"preset {preset}" if preset else "no preset (defaults; --preset lc2024 for Wu & Papyan's choices)"
    return (f"metric options, {name}: CDNV power {options['cdnv_power']:g}, global mean {options['center']}, "
            f"min_count {options['min_count']}, spread ddof {options['spread_ddof']}"
            + ("" if options.get("max_count") is None else f", max_count {options['max_count']}"))


def add_metric_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="metric choices of a paper (lc2024: Wu & Papyan's code, CDNV power 4, "
                             "Bessel spreads, NC4 on kept next tokens; papyan2020)")
    parser.add_argument("--cdnv-power", type=float, default=None,
                        help="CDNV distance power (default 2, Galanti et al.; lc2024: 4)")
    parser.add_argument("--min-count", type=int, default=None, help="smallest class kept (default 1)")
    parser.add_argument("--max-count", type=int, default=None,
                        help="largest class kept (default: no limit; LC's -Mpc): leaves out the commonest tokens")
    parser.add_argument("--center", choices=["uniform", "weighted"], default=None,
                        help="global mean: of class means (default, LC) or of samples (papyan2020)")
    parser.add_argument("--spread-ddof", type=int, choices=[0, 1], default=None,
                        help="std over classes of norms and NC3 cosines: 0 population (default), 1 Bessel (lc2024)")
