"""Threads chosen from the work.

On a small shared CPU, PyTorch's default (one thread per core) makes small element-wise work much
slower: a UFM problem of a few hundred contexts ran ~10x faster on one thread, and 80x slower with
two threads on two busy cores (23 s idle, 1,816 s at load 8). Big GEMMs and forward passes gain
from the cores, but only from idle ones: a thread that shares a core with another busy process
makes every parallel region wait for it (the demo took 4.3x its idle time beside one CPU-bound job
with two threads). So: work below ``SMALL_WORK`` multiply-adds per step runs on one thread; larger
work on the cores that are idle when it starts (from /proc/stat over 0.1 s), at least one. The
user's choice (``set_threads``, the command line's ``--threads``, or ``OMP_NUM_THREADS``) always
wins.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator

import torch

SMALL_WORK = 5e8  # multiply-adds per step below which one thread is the safer choice on a small CPU
_chosen: int | None = None  # set by set_threads


def set_threads(count: int) -> None:
    """Fix the thread count for the whole process (what ``--threads`` does)."""
    global _chosen
    if not (isinstance(count, int) and count >= 1):
        raise ValueError(f"threads must be a positive integer, got {count!r}")
    torch.set_num_threads(count)
    _chosen = count


def user_chose() -> bool:
    return _chosen is not None or "OMP_NUM_THREADS" in os.environ


def idle_cores(interval: float = 0.1) -> int:
    """Cores not used by other processes now: the machine's busy share over ``interval`` seconds
    (read from /proc/stat while this process sleeps), rounded; every core where that is unknown."""
    cores = os.cpu_count() or 1

    def read() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total and idle (+ iowait) jiffies

    try:
        total0, idle0 = read()
        time.sleep(interval)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return cores
    if total1 <= total0:
        return cores
    busy = (1.0 - (idle1 - idle0) / (total1 - total0)) * cores
    return max(1, cores - round(busy))


@contextlib.contextmanager
def threads_for(work: float = math.inf, *, reproducible: bool = False) -> Iterator[int]:
    """Run the block on one thread if ``work`` (multiply-adds per step) is small, on the idle cores
    if not (the default: a forward pass); leave the count alone when the user chose it. Yields the
    count in force.

    ``reproducible``: one thread, whatever the load. Float32 reductions round differently with
    another thread count (a seeded 1-layer CLM's validation loss moved in the 8th digit between one
    and two threads), and even at a fixed two threads the same seeded 2-layer CLM came out different
    in 1 of 15 runs (0 of 15 on one thread), so seeded training runs on one thread."""
    if user_chose():
        yield torch.get_num_threads()
        return
    previous = torch.get_num_threads()
    want = 1 if reproducible or work < SMALL_WORK else idle_cores()
    torch.set_num_threads(want)
    try:
        yield want
    finally:
        torch.set_num_threads(previous)
