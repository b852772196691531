"""What every experiment shares: an output folder with its config, results JSON and figures."""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # files only: experiments run headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ufm.report import save_figure  # noqa: E402
from ufm.io import write_json  # noqa: E402


def parse_args(name: str, doc: str, argv: list[str] | None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The options every experiment takes, plus its own (``extra`` adds them), all in --help."""
    parser = argparse.ArgumentParser(prog=f"collapse experiment {name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs") / name, help="output directory")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smaller run, for smoke tests")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def experiment(full: Any, quick: Any, *, extra: Callable[[argparse.ArgumentParser], None] | None = None,
               recorded: Callable[[Any, argparse.Namespace], Any] | None = None):
    """An experiment's ``main(argv)`` from its body ``body(config, args, run) -> results``: the shared
    options (the module's docstring as --help, its name from the module: ``seli_code`` -> ``seli-code``),
    the config (``quick`` with --quick, else ``full``; either may be a function of the parsed args), and
    the Run that records ``recorded(config, args)`` (default: the config) in config.json."""

    def wrap(body: Callable[[Any, argparse.Namespace, "Run"], dict]) -> Callable[[list[str] | None], dict]:
        module = sys.modules[body.__module__]
        name = module.__name__.rsplit(".", 1)[-1].replace("_", "-")

        @functools.wraps(body)
        def main(argv: list[str] | None = None) -> dict:
            args = parse_args(name, module.__doc__, argv, extra)
            choice = quick if args.quick else full
            config = choice(args) if callable(choice) and not isinstance(choice, type) else choice
            run = Run(name, args, recorded(config, args) if recorded else config)
            return body(config, args, run)

        return main

    return wrap


class Run:
    """An experiment's output folder: config.json at the start, results.json and PNGs at the end."""

    def __init__(self, name: str, args: argparse.Namespace, config: Any):
        self.name, self.out, self.start = name, Path(args.out), time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        self.config = asdict(config) if is_dataclass(config) else dict(config)
        write_json(self.out / "config.json", dict(experiment=name, seed=args.seed, device=args.device,
                                                  quick=args.quick, config=self.config,
                                                  versions=versions()))
        self.figures: list[str] = []

    def figure(self, fig: plt.Figure, stem: str) -> Path:
        path = save_figure(fig, self.out / f"{stem}.png")
        self.figures.append(path.name)
        return path

    def finish(self, results: dict[str, Any]) -> dict[str, Any]:
        results = dict(results, seconds=time.perf_counter() - self.start, figures=self.figures,
                       config=self.config)
        write_json(self.out / "results.json", results)
        print(f"{self.name}: results in {self.out / 'results.json'}, figures {', '.join(self.figures)}")
        return results


def versions() -> dict[str, str]:
    import ufm

    return dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__,
                collapse_lab=ufm.__version__)


LOG_FLOOR = 1e-16  # log axes draw smaller values (float64 zeros, round-off) at this floor


def floored(values) -> np.ndarray:
    """Values for a log axis: those below LOG_FLOOR (exact zeros included) drawn at it."""
    return np.maximum(np.asarray(values, dtype=np.float64), LOG_FLOOR)


def floored_label(label: str) -> str:
    """A log axis's label that says values are floored, so that a flat line at 1e-16 reads as
    "converged to round-off", not as a measurement."""
    return f"{label} (values < {LOG_FLOOR:g} drawn at {LOG_FLOOR:g})"
