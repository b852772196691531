"""Threads chosen from the work.

On a small shared CPU, PyTorch's default (one thread per core) makes small element-wise work much
slower: a UFM problem of a few hundred contexts ran ~10x faster on one thread, and 80x slower with
two threads on two busy cores (23 s idle, 1,816 s at load 8). Big GEMMs and forward passes gain
from every core. So: work below ``SMALL_WORK`` multiply-adds per step runs on one thread, larger
work on all cores, unless the user chose (``set_threads``, the command line's ``--threads``, or
``OMP_NUM_THREADS`` in the environment), which always wins.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

SMALL_WORK = 5e7  # multiply-adds per step below which one thread is faster on a small CPU
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


@contextlib.contextmanager
def threads_for(work: float) -> Iterator[int]:
    """Run the block on one thread if ``work`` (multiply-adds per step) is small, on all cores if
    not; leave the count alone when the user chose it. Yields the count in force."""
    if user_chose():
        yield torch.get_num_threads()
        return
    previous = torch.get_num_threads()
    want = 1 if work < SMALL_WORK else (os.cpu_count() or 1)
    torch.set_num_threads(want)
    try:
        yield want
    finally:
        torch.set_num_threads(previous)
