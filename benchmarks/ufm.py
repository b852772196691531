"""Benchmark: UFM training steps per second, chunked soft-label CE against a dense reference step.

    python -m benchmarks.ufm            # CPU: m = 404, V = 104, d = 128, full batch (float64)
                                        # CUDA, when present: also m = 100,000, V = 50,000, d = 512,
                                        # minibatches of 1,024 contexts (float32)

Per-step time is the difference of two runs of different lengths (so start-up and the history's
first and last records cancel). Prints steps/s, the chunked / dense step-time ratio where the
dense logits fit, and peak memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from ufm.validate import resolve_device
from ufm.targets import random_supports
from ufm.train import train_ufm


def seconds_per_step(targets, dim, *, device, steps, **kwargs) -> float:
    def run(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_ufm(targets, dim, weight_decay=1e-4, steps=n, device=device, snapshots=[], **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(2)  # warm-up
    return (run(steps + 10) - run(10)) / steps


def report(name, targets, dim, device, steps, **kwargs) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    chunked = seconds_per_step(targets, dim, device=device, steps=steps, **kwargs)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    dense = seconds_per_step(targets, dim, device=device, steps=steps, chunk_entries=None, **kwargs)
    print(f"{name} on {device}: chunked {1 / chunked:9.1f} steps/s, dense {1 / dense:9.1f} steps/s, "
          f"ratio chunked/dense step time {chunked / dense:.3f}")
    if peak is not None:
        print(f"    peak GPU memory of the chunked run: {peak:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    device = resolve_device(args.device)

    torch.set_num_threads(1)  # fastest for this small problem on a 2-core CPU
    small = random_supports(404, 104, (1, 6), probs="zipf", seed=0)  # the simplified-TinyStories size
    report("m=404, V=104, d=128, full batch, float64", small, 128, torch.device("cpu"), args.steps)
    if device.type == "cuda":
        large = random_supports(100_000, 50_000, (1, 6), probs="zipf", num_patterns=5000, seed=0)
        report("m=100,000, V=50,000, d=512, batch 1,024, float32", large, 512, device, args.steps // 4,
               batch_size=1024, dtype="float32")
    print(f"peak host RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
