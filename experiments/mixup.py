"""Mixup in the unconstrained-features model (Fisher, Meng & Papyan, 2024).

One free feature per mixed example of classes i <= k with target lam e_i + (1 - lam) e_k, a fixed
simplex-ETF classifier (K = 4, d = 5), soft-label CE with an L2 penalty on the features (lambda_H =
1e-2), full-batch GD with a line search. Prediction: every mixed feature lies in span{w_i, w_k},
h_ik(lam) = g(lam) w_i + g(1 - lam) w_k with one g for every pair, and same-class mixes do not
depend on lam. Runtime ~10 s on one thread (--quick: 4 mixing weights, ~5 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Run, experiment
from ufm import theory
from ufm.targets import mixup_pairs
from ufm.train import train_ufm


@dataclass(frozen=True)
class Config:
    num_classes: int = 4
    dim: int = 5
    lambdas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    feature_decay: float = 1e-2
    steps: int = 3000


@experiment(Config(), Config(lambdas=(0.1, 0.4, 0.6, 0.9)))
def main(config: Config, args, run: Run) -> dict:
    targets, rows = mixup_pairs(config.num_classes, config.lambdas)
    r = train_ufm(targets, config.dim, weight_decay=0.0, feature_decay=config.feature_decay, classifier="etf",
                  steps=config.steps, optimizer="gd", device=args.device, seed=args.seed, snapshots=[])
    W, H = r.W.numpy(), r.H.numpy()
    residuals, g = [], {}
    for j, (i, k, lam) in enumerate(rows):
        i, k = int(i), int(k)
        coef, resid = theory.span_residual(H[:, j], W[[i, k]] if i != k else W[[i]])
        residuals.append(resid)
        if i != k:
            g.setdefault(float(lam), []).append(coef)
    lams = sorted(g)
    g_mean = [float(np.mean([c[0] for c in g[lam]])) for lam in lams]
    g_spread = max(float(np.ptp([c[0] for c in g[lam]])) for lam in lams)
    g_symmetry = max(abs(float(np.mean([c[1] for c in g[lam]])) - g_mean[lams.index(round(1 - lam, 12))])
                     for lam in lams if round(1 - lam, 12) in lams)
    same_spread = max(float(np.abs(same - same[:, :1]).max() / np.linalg.norm(same[:, 0]))
                      for same in (H[:, (rows[:, 0] == c) & (rows[:, 1] == c)] for c in range(config.num_classes)))
    print(f"largest distance of a mixed feature to span{{w_i, w_k}} (relative): {max(residuals):.2e}; g(lam) spread "
          f"over pairs {g_spread:.1e}; |coef of w_k - g(1 - lam)| {g_symmetry:.1e}; same-class spread over lam {same_spread:.1e}")
    print("g(lam): " + ", ".join(f"{lam:g}: {v:.4f}" for lam, v in zip(lams, g_mean)))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for lam in lams:
        coefs = np.array(g[lam])
        axes[0].plot([lam] * len(coefs), coefs[:, 0], "o", color="C0", alpha=0.5)
        axes[0].plot([lam] * len(coefs), coefs[:, 1], "x", color="C1", alpha=0.5)
    axes[0].plot(lams, g_mean, "-", color="C0", label="g(lam): coefficient of w_i")
    axes[0].plot(lams, g_mean[::-1], "--", color="C1", label="g(1 - lam): coefficient of w_k")
    axes[0].set_xlabel("lam (target lam e_i + (1 - lam) e_k)")
    axes[0].set_ylabel("coefficient")
    axes[0].set_title("h_ik(lam) = g(lam) w_i + g(1-lam) w_k, every pair (markers)")
    axes[0].legend(fontsize=8)
    basis = np.linalg.qr(W[[0, 1]].T)[0]  # (d, 2) the plane of w_0, w_1
    pair = (rows[:, 0] == 0) & (rows[:, 1] == 1)
    pts = basis.T @ H[:, pair]
    axes[1].plot(*pts, "o-", label="h_01(lam)")
    for c in (0, 1):
        w = basis.T @ W[c] * max(np.linalg.norm(pts, axis=0))
        axes[1].plot([0, w[0]], [0, w[1]], "k-", lw=0.8)
        axes[1].text(*w, f"w_{c}")
    axes[1].set_aspect("equal")
    axes[1].set_xlabel("coordinate 1 in span{w_0, w_1}")
    axes[1].set_ylabel("coordinate 2 in span{w_0, w_1}")
    axes[1].set_title("class 0/1 mixes in the plane of w_0, w_1")
    axes[1].legend(fontsize=8)
    run.figure(fig, "mixup")
    return run.finish(dict(max_span_residual=max(residuals), g_spread_over_pairs=g_spread, g_symmetry_error=g_symmetry,
                           same_class_spread=same_spread, lambdas=lams, g=g_mean))


if __name__ == "__main__":
    main()
