"""More classes than dimensions (Jiang et al., ICML 2024): the normalized UFM reaches the softmax code.

One context per class (K), features and classifiers on a sphere of radius 2, soft-label CE, no
weight decay, full-batch GD with a line search. The softmax code maximizes rho(W) = min_k dist(w_k,
conv{w_j : j != k}) over unit rows; rho of the trained (unit) classifier, measured by cvxpy, is
compared with the closed forms (ufm.theory.softmax_code_rho): the regular K-gon for d = 2, rho = 1 -
cos(2 pi / K); the simplex for K <= d + 1, K/(K-1); the cross-polytope for K = 2d, 1. Baseline: rho of
random unit vectors (the mean over 20 draws, 3 with --quick). Runtime ~80 s on one thread (--quick: 3 cases, ~12 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Run, experiment
from ufm import theory
from ufm.convex import hull_distances
from ufm.targets import one_hot
from ufm.train import train_ufm


@dataclass(frozen=True)
class Config:
    cases: tuple[tuple[int, int], ...] = ((3, 2), (4, 2), (5, 2), (6, 2), (8, 2), (12, 2), (4, 3), (6, 3), (8, 4), (10, 3))
    radius: float = 2.0
    steps: int = 3000
    random_draws: int = 20


@experiment(Config(), Config(cases=((5, 2), (4, 3), (6, 3)), random_draws=3))
def main(config: Config, args, run: Run) -> dict:
    rng = np.random.default_rng(args.seed)
    rows, shapes = [], {}
    for K, d in config.cases:
        r = train_ufm(one_hot([1] * K), d, weight_decay=0.0, features="normalized", radius=config.radius,
                      steps=config.steps, optimizer="gd", device=args.device, seed=args.seed, snapshots=[])
        W = r.words().numpy() / config.radius  # (K, d) unit rows
        rho = float(hull_distances(W).min())
        try:
            predicted = theory.softmax_code_rho(K, d)
        except ValueError:
            predicted = None  # no closed form for this (K, d)
        random = float(np.mean([hull_distances(_unit(rng.standard_normal((K, d)))).min() for _ in range(config.random_draws)]))
        rows.append(dict(K=K, d=d, rho=rho, rho_theory=predicted, rho_random=random, ce=r.history[-1]["ce"]))
        shapes[(K, d)] = W
        print(f"K={K:2d} d={d}: rho trained {rho:.6f}, closed form {'-' if predicted is None else f'{predicted:.6f}'}, "
              f"random unit vectors {random:.4f}")
    known = [r for r in rows if r["rho_theory"] is not None]
    worst = max(abs(r["rho"] - r["rho_theory"]) for r in known)
    print(f"largest |rho - closed form| over {len(known)} cases with one: {worst:.2e}")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    planar = [(K, d) for K, d in shapes if d == 2]
    for K, _ in planar:
        W = shapes[(K, 2)]
        order = np.argsort(np.arctan2(W[:, 1], W[:, 0]))
        ring = W[np.r_[order, order[:1]]]
        axes[0].plot(ring[:, 0] * (1 + K / 40), ring[:, 1] * (1 + K / 40), "o-", ms=3, label=f"K = {K}")
    axes[0].set_aspect("equal", adjustable="datalim")
    axes[0].set_xlabel("w_k, coordinate 1")
    axes[0].set_ylabel("w_k, coordinate 2")
    axes[0].set_title("d = 2: trained classifiers (scaled apart) are regular K-gons")
    axes[0].legend(fontsize=8)
    Ks = np.arange(3, 13)
    axes[1].plot(Ks, 1 - np.cos(2 * np.pi / Ks), "-", color="C0", label="d = 2 closed form 1 - cos(2 pi/K)")
    for dim, marker in ((2, "o"), (3, "s"), (4, "^")):
        sel = [r for r in rows if r["d"] == dim]
        if sel:
            axes[1].plot([r["K"] for r in sel], [r["rho"] for r in sel], marker, label=f"trained, d = {dim}")
            axes[1].plot([r["K"] for r in sel], [r["rho_random"] for r in sel], marker, mfc="none", color="gray",
                         label=f"random unit vectors, d = {dim}")
    axes[1].set_xlabel("K")
    axes[1].set_ylabel("rho(W) = min_k dist(w_k, conv(others))")
    axes[1].set_title("the softmax code's margin")
    axes[1].legend(fontsize=7)
    run.figure(fig, "softmax_code")
    return run.finish(dict(rows=rows, max_abs_error_rho=worst))


def _unit(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


if __name__ == "__main__":
    main()
