"""Benchmark: the full pairwise metric sweep against the bare tiled Gram GEMM, in one run.

    python -m benchmarks.metrics                      # K = 50,257, D = 768 (GPT-2 vocabulary)
    python -m benchmarks.metrics --classes 8000 --device cuda

Both visit the same upper-triangle tiles of M M^T; the sweep adds every pairwise metric (CDNV,
cosines, log kernel, ETF residual). Prints both times, their ratio, and the peak memory next to
the size of one dense K x K float32 matrix. Target on a 2-core CPU: ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from ufm.validate import resolve_device
from ufm.pairwise import pairwise_sweep


def bare_gram(m: torch.Tensor, tile: int) -> None:
    k = m.shape[0]
    out = torch.empty(tile, tile, dtype=m.dtype, device=m.device)
    for a0 in range(0, k, tile):
        for b0 in range(a0, k, tile):
            a, b = m[a0:a0 + tile], m[b0:b0 + tile]
            torch.mm(a, b.T, out=out[: a.shape[0], : b.shape[0]])


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=50_257)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--tile-size", type=int, default=None, help="default: 1024 CPU, 8192 CUDA")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = resolve_device(args.device)
    tile = args.tile_size or (8192 if device.type == "cuda" else 1024)
    gen = torch.Generator().manual_seed(args.seed)
    means = torch.randn(args.classes, args.dim, generator=gen, dtype=torch.float64).to(device)
    centered = means - means.mean(0)  # (K, D)
    var = torch.rand(args.classes, generator=gen, dtype=torch.float64).to(device)  # (K,)
    rss_before = peak_rss_gib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    bare_gram(centered[: 2 * tile], tile)  # warm-up: BLAS threads, CUDA context
    t_gemm = timed(lambda: bare_gram(centered, tile), device)
    t_sweep = timed(lambda: pairwise_sweep(centered, var, cdnv_power=2.0, tile_size=tile), device)

    dense_gib = args.classes**2 * 4 / 2**30
    print(f"device {device}, K = {args.classes}, D = {args.dim}, tile = {tile}, float64")
    print(f"bare tiled Gram GEMM : {t_gemm:8.2f} s")
    print(f"full pairwise sweep  : {t_sweep:8.2f} s")
    print(f"ratio sweep / GEMM   : {t_sweep / t_gemm:8.3f}")
    if device.type == "cuda":
        print(f"peak GPU memory      : {torch.cuda.max_memory_allocated() / 2**30:8.3f} GiB")
    print(f"peak host RSS        : {peak_rss_gib():8.3f} GiB (before the runs {rss_before:.3f} GiB)")
    print(f"one dense K x K f32  : {dense_gib:8.3f} GiB")


if __name__ == "__main__":
    main()
