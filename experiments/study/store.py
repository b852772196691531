"""A study's folder: one folder per unit (its configuration, status, log and result), the trained
runs and measurements, and the table.

    STUDY/units/<kind>-<name>-<id>/unit.json     what the job runs
                                  /status.json   running (pid, host, SLURM job) / failed / done
                                  /log.txt       the job's output, a traceback when it failed
                                  /result.json   written last, atomically: the unit is done
    STUDY/runs/<run>/epochN/                    trained checkpoints (collapse train's layout)
    STUDY/measure/<run>/epochN/                 collapse measure's folder for each checkpoint
    STUDY/results.csv                           one row per measured (run, checkpoint, layer)

A unit's state is read from its files and its lock (held by the process running it, released by
the kernel when that process dies), never from a scheduler's accounting: done (result.json),
running (the lock is held), failed (it raised: status.json and log.txt say why), interrupted (it
started but its process died: killed, cancelled, out of time) or pending.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from ufm.io import FolderBusyError, atomic_write, folder_lock, write_json

from .spec import Unit

STATES = ("done", "running", "failed", "interrupted", "pending")
# results.csv: who and when first, then how well it predicts, the metrics, and the identities last
LEAD = ("run", "source", "arch", "depth", "width", "heads", "weight_decay", "seed", "lr", "epochs", "epoch", "step", "tokens_seen",
        "layer", "val_loss", "nc4_agreement")
TAIL = ("model_identity", "corpus_identity", "options_identity", "unit")


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def unit_dir(self, unit: Unit) -> Path:
        return self.root / "units" / unit.folder_name

    def write_unit(self, unit: Unit) -> None:
        d = self.unit_dir(unit)
        if not (d / "unit.json").is_file():
            write_json(d / "unit.json", dict(kind=unit.kind, name=unit.name, identity=unit.identity,
                                             config=unit.config, needs=list(unit.needs)))

    def read_unit(self, folder: Path) -> Unit:
        info = json.loads((folder / "unit.json").read_text())
        return Unit(info["kind"], info["name"], info["identity"], info["config"], tuple(info["needs"]))

    def result(self, unit: Unit) -> dict | None:
        f = self.unit_dir(unit) / "result.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def status(self, unit: Unit) -> dict:
        f = self.unit_dir(unit) / "status.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    def state(self, unit: Unit) -> str:
        d = self.unit_dir(unit)
        if (d / "result.json").is_file():
            return "done"
        if not (d / "status.json").is_file():
            return "pending"
        if is_locked(d):
            return "running"
        return "failed" if self.status(unit).get("state") == "failed" else "interrupted"

    def slurm_job(self, unit: Unit) -> str | None:
        """The SLURM job id the unit was last submitted as, if any."""
        f = self.unit_dir(unit) / "slurm_job"
        return f.read_text().strip() if f.is_file() else None

    def log(self, unit: Unit) -> Path:
        return self.unit_dir(unit) / "log.txt"

    @contextmanager
    def running(self, unit: Unit):
        """Hold the unit's lock while it runs; status.json says who runs it."""
        d = self.unit_dir(unit)
        with folder_lock(d, f"job of unit {unit.name}"):
            if not (d / "result.json").is_file():
                write_json(d / "status.json", dict(state="running", pid=os.getpid(), host=socket.gethostname(),
                                                   slurm_job=os.environ.get("SLURM_JOB_ID"),
                                                   slurm_array_task=os.environ.get("SLURM_ARRAY_TASK_ID"),
                                                   gpus=os.environ.get("CUDA_VISIBLE_DEVICES")))
            yield d

    def finish(self, unit: Unit, result: dict) -> None:
        write_json(self.unit_dir(unit) / "result.json", result)
        write_json(self.unit_dir(unit) / "status.json", dict(self.status(unit), state="done"))

    def fail(self, unit: Unit, error: str) -> None:
        write_json(self.unit_dir(unit) / "status.json", dict(self.status(unit), state="failed", error=error))

    def write_table(self, units: list[Unit]) -> Path | None:
        """results.csv from every finished measure unit, in the study's unit order, atomically and
        under a lock (jobs on several nodes finish at once): a table that depends only on what is
        done, not on the order in which it finished."""
        rows = [row for u in units if u.kind != "train" for row in (self.result(u) or {}).get("rows", [])]
        if not rows:
            return None
        seen = list(dict.fromkeys(k for r in rows for k in r))
        columns = [k for k in LEAD if k in seen] + [k for k in seen if k not in LEAD and k not in TAIL]
        columns += [k for k in TAIL if k in seen]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: ("" if r.get(k) is None else r[k]) for k in columns} for r in rows])
        with table_lock(self.root):
            return atomic_write(self.root / "results.csv", lambda tmp: tmp.write_text(buf.getvalue()))


def is_locked(folder: Path) -> bool:
    """Whether a live process holds ``folder``'s lock (a probe that takes and releases it)."""
    if not (folder / ".lock").exists():
        return False
    try:
        with folder_lock(folder):
            return False
    except FolderBusyError:
        return True


@contextmanager
def table_lock(root: Path):
    """A blocking lock for writers of results.csv (short critical sections; waiting is right)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".table.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
