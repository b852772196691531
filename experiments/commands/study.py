"""`collapse study run|status NAME|SPEC --out DIR`: a grid of training runs and measurements (a study
spec, TOML) on this machine or on SLURM, resumable, into DIR/results.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.commands.common import int_at_least


def add_parser(sub) -> None:
    study = sub.add_parser("study", help="a grid of training runs and measurements, local or on SLURM, into one table")
    actions = study.add_subparsers(dest="action", required=True, metavar="run|status")
    run = actions.add_parser("run", help="run what is not done yet (a shipped spec by name, or a TOML file)")
    run.add_argument("spec", help="a shipped study (lc-small, linguistic-collapse) or a path to a TOML spec")
    run.add_argument("--out", type=Path, required=True, help="the study's folder (results.csv, units/, runs/)")
    run.add_argument("--launcher", choices=["local", "slurm"], default="local",
                     help="local: worker processes on this machine; slurm: jobs through submitit")
    run.add_argument("--workers", type=int_at_least(1), default=None, help="local worker processes (default: the spec's)")
    run.add_argument("--retry-failed", action="store_true", help="also rerun units that failed")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda, for every job (default: auto)")
    for flag, kind, what in (("--partition", str, "SLURM partition"), ("--gpus-per-task", int, "GPUs per job"),
                             ("--cpus-per-task", int, "CPUs per job"), ("--mem-gb", float, "memory per job (GB)"),
                             ("--timeout-min", int, "time limit per job (minutes)"),
                             ("--array-parallelism", int, "most array tasks running at once")):
        run.add_argument(flag, type=kind, default=None, help=f"{what} (default: the spec's [slurm])")
    run.set_defaults(func=run_cmd)
    status = actions.add_parser("status", help="done / running / failed / interrupted / pending, unit by unit")
    status.add_argument("spec")
    status.add_argument("--out", type=Path, required=True)
    status.set_defaults(func=status_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    from experiments.study import run_study

    overrides = {k: getattr(args, k) for k in ("partition", "gpus_per_task", "cpus_per_task", "mem_gb", "timeout_min",
                                                "array_parallelism") if getattr(args, k) is not None}
    report = run_study(args.spec, args.out, launcher=args.launcher, workers=args.workers,
                       retry_failed=args.retry_failed, device=args.device, slurm_overrides=overrides)
    print(report.format())
    if report.table is not None:
        print(f"table: {report.table}" + (f"; analysis: {report.analysis}" if report.analysis else "")
              + (f" ({report.note})" if report.note else ""))
    return 0 if report.counts["done"] == len(report.units) else 1


def status_cmd(args: argparse.Namespace) -> int:
    from experiments.study import study_status

    print(study_status(args.spec, args.out).format())
    return 0
