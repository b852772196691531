"""Launchers are existing engines: a pool of worker processes on this machine, or SLURM through
submitit (arrays with a parallelism cap, the study's dependencies as afterok). Both run
``units.run_unit`` and wait until every submitted unit has ended; what each unit did is read back
from the study's folder, not from the engine."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context

from ufm.io import atomic_write

from .spec import SlurmSpec, SpecError, Unit
from .store import Store
from .units import run_unit


class LauncherError(SpecError):
    """A launcher that is not available here."""


def check_launcher(kind: str) -> None:
    if kind == "local":
        return
    if kind != "slurm":
        raise LauncherError(f"unknown launcher {kind!r}: local or slurm")
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise LauncherError("--launcher slurm needs SLURM's sbatch and squeue on PATH; none is here "
                            "(use --launcher local on this machine)")
    if importlib.util.find_spec("submitit") is None:
        raise LauncherError("--launcher slurm needs the submitit package (pip install submitit)")


def gpu_count(device: str) -> int:
    """GPUs the local pool spreads its workers over: none when the study runs on the CPU."""
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count()


def _pin_gpu(gpus) -> None:
    """A worker's initializer: one GPU of its own, before anything initializes CUDA."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def run_local(store: Store, units: list[Unit], todo: list[Unit], workers: int, *, device: str = "auto",
              poll: float = 0.5) -> None:
    """A pool of ``workers`` processes (spawned: a clean interpreter each, like a cluster job), one
    GPU each when there are GPUs (at most one worker a GPU); a unit starts when the units it needs
    are done. Units another process is running (an earlier run killed while its workers went on)
    are waited for, not started twice."""
    done = {u.identity for u in units if store.state(u) == "done"}
    waiting = list(todo)
    futures = {}
    context = get_context("spawn")
    pin = {}
    if gpus := gpu_count(device):
        workers = min(workers, gpus)
        queue = context.Queue()
        for i in range(workers):
            queue.put(i)
        pin = dict(initializer=_pin_gpu, initargs=(queue,))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, **pin) as pool:
        while waiting or futures:
            alive = done | {u.identity for u in waiting} | {u.identity for u in futures.values()}
            waiting = [u for u in waiting if all(n in alive for n in u.needs)]  # drop those a failure blocks
            for unit in [u for u in waiting if all(n in done for n in u.needs)]:
                waiting.remove(unit)
                # run_unit waits while another process (an orphan of a killed run) holds the unit
                futures[pool.submit(run_unit, str(store.root), unit.folder_name, poll)] = unit
            if not futures:
                break
            finished, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            for f in finished:
                unit = futures.pop(f)
                if store.state(unit) == "done":
                    done.add(unit.identity)


def run_slurm(store: Store, todo: list[Unit], slurm: SlurmSpec, *,
              live: dict[str, str] | None = None, poll: float = 1.0) -> dict[str, str]:
    """Submit through submitit: the training units as one job array, each run's measure units as an
    array that starts after its training job succeeded (afterok; kill_on_invalid_dep cancels it
    when that job failed). ``live`` (unit identity -> job id) are the jobs an earlier, killed run
    submitted that SLURM still holds: they are not submitted again, dependencies name them, and
    they are waited for too. Returns unit identity -> SLURM job id; waits until no job is left."""
    import submitit

    executor = submitit.AutoExecutor(folder=store.root / "slurm" / "%j", cluster="slurm")
    base = dict(timeout_min=slurm.timeout_min, cpus_per_task=slurm.cpus_per_task, mem_gb=slurm.mem_gb,
                slurm_array_parallelism=slurm.array_parallelism, name=f"study-{store.root.name}")
    if slurm.partition:
        base["slurm_partition"] = slurm.partition
    if slurm.gpus_per_task:
        base["gpus_per_node"] = slurm.gpus_per_task
    jobs: dict[str, str] = dict(live or {})
    trains = [u for u in todo if u.kind == "train"]
    executor.update_parameters(**base, slurm_additional_parameters={})
    if trains:
        with executor.batch():
            handles = [executor.submit(run_unit, str(store.root), u.folder_name) for u in trains]
        jobs |= {u.identity: h.job_id for u, h in zip(trains, handles)}
    groups: dict[tuple, list[Unit]] = {}
    for u in todo:
        if u.kind != "train":
            groups.setdefault(u.needs, []).append(u)  # measurements of one run; a simulation alone
    for needs, group in groups.items():
        after = [jobs[n] for n in needs if n in jobs]
        extra = dict(dependency="afterok:" + ":".join(after), kill_on_invalid_dep="yes") if after else {}
        executor.update_parameters(**base, slurm_additional_parameters=extra)
        with executor.batch():
            handles = [executor.submit(run_unit, str(store.root), u.folder_name) for u in group]
        jobs |= {u.identity: h.job_id for u, h in zip(group, handles)}
    for u in todo:
        atomic_write(store.unit_dir(u) / "slurm_job", lambda tmp, job=jobs[u.identity]: tmp.write_text(job))
    while queued(list(jobs.values())):
        time.sleep(poll)
    return jobs


def queued(job_ids: list[str]) -> set[str]:
    """The jobs among ``job_ids`` that SLURM still holds (pending or running), from squeue: this
    needs no accounting database."""
    if not job_ids:
        return set()
    out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True)
    listed = set(out.stdout.split())
    # squeue prints array tasks as 123_4 (or 123_[5-7] while pending); match on the job ids asked for
    return {j for j in job_ids if j in listed or j.split("_")[0] in {x.split("_")[0] for x in listed if "[" in x}}
