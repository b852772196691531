"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd started with a
temporary slurm.conf (one node, localhost, this machine's CPUs), stopped by their PIDs afterwards.

Debian's slurm-wlm and munge (installed by .ci/run) run it as root in a few seconds. There is no
accounting database: the study reads its units' state from their folders and squeue, not sacct."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

CONF = """ClusterName=collapse-test
SlurmctldHost=localhost
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
ReturnToService=2
MpiDefault=none
KillWait=2
MinJobAge=2
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SlurmctldPort={port}
SlurmdPort={slurmd_port}
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmdSpoolDir={root}/spool
StateSaveLocation={root}/state
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
NodeName=localhost CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    for tool in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo"):
        if shutil.which(tool) is None:
            return f"SLURM is not installed here ({tool} is not on PATH; .ci/run installs slurm-wlm and munge)"
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root"
    return None


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def slurm_cluster(root: Path, *, port: int = 6917):
    root.mkdir(parents=True, exist_ok=True)
    (root / "spool").mkdir(exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    conf = root / "slurm.conf"
    conf.write_text(CONF.format(root=root, cpus=os.cpu_count(), memory=memory, port=port, slurmd_port=port + 1))
    env = dict(os.environ, SLURM_CONF=str(conf))
    started: list[int] = []
    munge_pid = root / "munged.pid"
    socket = root / "munge.socket"
    old_conf = os.environ.get("SLURM_CONF")
    try:
        # munged on its own socket and pid file: an existing munged is left alone.
        subprocess.run(["munged", "--force", f"--socket={socket}", f"--pid-file={munge_pid}",
                        f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'munged.seed'}"],
                       check=True, capture_output=True, env=env)
        started.append(_pid(munge_pid))
        env["MUNGE_SOCKET"] = str(socket)
        conf.write_text(conf.read_text() + f"AuthInfo=socket={socket}\n")
        subprocess.run(["slurmctld", "-c"], check=True, capture_output=True, env=env)
        subprocess.run(["slurmd", "-N", "localhost"], check=True, capture_output=True, env=env)
        for name in ("slurmctld.pid", "slurmd.pid"):
            for _ in range(50):
                if _pid(root / name):
                    break
                time.sleep(0.1)
            started.append(_pid(root / name))
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the test SLURM node never came up idle (sinfo: {state!r}); see {root}/*.log")
        os.environ["SLURM_CONF"] = str(conf)
        yield env
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        for pid in reversed([p for p in started if p]):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in [p for p in started if p]:
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
