"""``collapse demo``: the built-in default job.

For now: class features drawn around a simplex ETF with shrinking within-class noise, measured
with every collapse metric, so the table shows NC1-NC3 going to their collapsed values.
"""

from __future__ import annotations

import argparse

import torch

import ufm
from ufm._validate import resolve_device


def noisy_simplex(k: int, d: int, n: int, noise: float, gen: torch.Generator):
    """n samples per class around the k vertices of a simplex ETF in R^d (d >= k)."""
    etf = torch.eye(k, d, dtype=torch.float64) - torch.eye(k, d, dtype=torch.float64)[:k].mean(0)
    etf = etf / etf.norm(dim=1, keepdim=True)  # (k, d)
    labels = torch.arange(k).repeat_interleave(n)  # (k n,)
    features = etf[labels] + noise * torch.randn(k * n, d, generator=gen, dtype=torch.float64)
    return features, labels, etf


def run_demo(args: argparse.Namespace) -> int:
    from .cli import format_table

    device = resolve_device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    k, d, n = 10, 16, 50
    rows = []
    for noise in (1.0, 0.3, 0.1, 0.01):
        features, labels, etf = noisy_simplex(k, d, n, noise, gen)
        stats = ufm.stats_from_features(features.to(device), labels.to(device), k)
        metrics = ufm.collapse_metrics(stats, etf.to(device))
        rows.append((f"noise {noise:g}", metrics.to_dict()))
    print(f"Collapse metrics of {k} classes x {n} samples around a simplex ETF in R^{d} ({device}):")
    print(format_table(rows))
    print(f"Simplex ETF targets: NC1 -> 0, CDNV -> 0, cos -> {-1 / (k - 1):.4f}, ETF error -> 0.")
    return 0
