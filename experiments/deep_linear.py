"""Deep linear UFM, imbalanced MSE (Dang et al., ICML 2023): the same orthogonal frame in every layer.

Bias-free MSE, one-hot labels with class sizes (40, 40, 10, 10, 3), d = 8, lambda = 1e-3 on every
factor, features W_L ... W_1 H for depth L = 0 (the free UFM) to 3, full-batch GD with a line search.
Prediction (ufm.theory.imbalanced_mse_frame): W W^T and every layer's class-mean Gram are diagonal
(an orthogonal frame, NC1 in every layer); depth 0 has the closed form s_k^2 = sqrt(n_k lambda_H /
lambda_W) - N lambda_H (6.221555 / 3.059278 / 1.629051), depth L a per-class scalar problem; a class
with n_k <= N^2 lambda_W lambda_H (the n = 3 class at lambda = 2e-2) collapses to 0. Runtime ~40 s on
one thread (--quick: depths 0-1, ~10 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np

from experiments._common import Run, experiment
from ufm import theory
from ufm.metrics import variability_ratio
from ufm.stats import stats_from_features
from ufm.targets import one_hot
from ufm.train import train_ufm


@dataclass(frozen=True)
class Config:
    counts: tuple[int, ...] = (40, 40, 10, 10, 3)
    dim: int = 8
    weight_decay: float = 1e-3
    depths: tuple[int, ...] = (0, 1, 2, 3)
    lambdas: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 2e-2, 3e-2)  # the depth-0 sweep through collapse
    steps: int = 3000


@experiment(Config(), Config(depths=(0, 1), lambdas=(2e-2,)))
def main(config: Config, args, run: Run) -> dict:
    targets, labels, K = one_hot(list(config.counts)), np.repeat(np.arange(len(config.counts)), config.counts), len(config.counts)

    def fit(depth: int, lam: float):
        return train_ufm(targets, config.dim, loss="mse", weight_decay=lam, features="deep_linear" if depth else "free",
                         depth=depth, steps=config.steps, optimizer="gd", device=args.device, seed=args.seed, snapshots=[])

    rows = []
    for depth in config.depths:
        r, frame = fit(depth, config.weight_decay), theory.imbalanced_mse_frame(config.counts, config.weight_decay, depth=depth)
        G = (r.W @ r.W.T).numpy()
        layers = []
        for layer, predicted in zip(r.layer_features(), frame.layer_means):
            stats = stats_from_features(layer.T, labels, K)
            means = stats.means.numpy()
            cos = theory.cosine_matrix(means)
            layers.append(dict(variability_ratio=variability_ratio(stats), max_offdiag_cos=float(np.abs(cos - np.diag(np.diag(cos))).max()),
                               mean_norm2=np.diag(means @ means.T).tolist(), predicted_mean_norm2=predicted.tolist()))
        rows.append(dict(depth=depth, s2=np.diag(G).tolist(), predicted_s2=frame.s2.tolist(),
                         max_rel_error_s2=float(np.max(np.abs(np.diag(G) - frame.s2)[~frame.collapsed] / frame.s2[~frame.collapsed])),
                         max_offdiag_wwt=float(np.abs(G - np.diag(np.diag(G))).max()), layers=layers))
        print(f"depth {depth}: diag(W W^T) {np.round(np.diag(G), 6).tolist()} (predicted {np.round(frame.s2, 6).tolist()}); "
              "per layer Tr S_W/Tr S_B " + ", ".join(f"{x['variability_ratio']:.1e}" for x in layers)
              + "; max |cos| between class means " + ", ".join(f"{x['max_offdiag_cos']:.1e}" for x in layers))
    sweep = []
    for lam in config.lambdas:
        frame = theory.imbalanced_mse_frame(config.counts, lam)
        W = fit(0, lam).W.numpy()
        s2 = np.diag(W @ W.T)
        sweep.append(dict(weight_decay=lam, s2=s2.tolist(), predicted_s2=frame.s2.tolist(),
                          collapsed=frame.collapsed.tolist()))
        print(f"lambda {lam:g}: diag(W W^T) {np.round(s2, 6).tolist()}, predicted {np.round(frame.s2, 6).tolist()}")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    classes = np.arange(K)
    for row in rows:
        line, = axes[0].plot(classes, row["predicted_s2"], "-", label=f"depth {row['depth']}: theory")
        axes[0].plot(classes, row["s2"], "o", color=line.get_color(), label=f"depth {row['depth']}: trained")
    axes[0].set_xticks(classes, [f"n={n}" for n in config.counts])
    axes[0].set_ylabel("(W W^T)_kk")
    axes[0].set_xlabel("class (its count)")
    axes[0].set_title("the frame's lengths, trained (dots) vs predicted (lines)")
    axes[0].legend(fontsize=7)
    for row in rows:
        depth_layers = np.arange(len(row["layers"]))
        axes[1].semilogy(depth_layers, [max(x["variability_ratio"], 1e-32) for x in row["layers"]], "o-", label=f"depth {row['depth']}: Tr S_W / Tr S_B")
        axes[1].semilogy(depth_layers, [max(x["max_offdiag_cos"], 1e-32) for x in row["layers"]], "s--", label=f"depth {row['depth']}: max |cos(mu_k, mu_k')|")
    axes[1].set_xlabel("layer (0 = H)")
    axes[1].set_ylabel("value (log)")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_title("NC1 and orthogonality in every layer (0 = exact)")
    axes[1].legend(fontsize=7)
    lams = [row["weight_decay"] for row in sweep]
    grid = np.geomspace(min(lams), max(lams), 100)
    for k in np.unique(config.counts, return_index=True)[1]:
        line, = axes[2].semilogx(grid, [theory.imbalanced_mse_frame(config.counts, g).s2[k] for g in grid], "-",
                                 label=f"n = {config.counts[k]}: theory")
        axes[2].semilogx(lams, [row["s2"][k] for row in sweep], "o", color=line.get_color())
    axes[2].set_xlabel("lambda = lambda_W = lambda_H")
    axes[2].set_ylabel("s_k^2 = (W W^T)_kk")
    axes[2].set_title("minority collapse: s_k^2 -> 0 at n_k <= N^2 lambda^2")
    axes[2].legend(fontsize=7)
    run.figure(fig, "deep_linear_frame")
    worst = max(row["max_rel_error_s2"] for row in rows)
    print(f"largest relative error of diag(W W^T) over depths: {worst:.2e}")
    return run.finish(dict(depths=rows, sweep=sweep, max_rel_error_s2=worst,
                           max_offdiag_cos=max(x["max_offdiag_cos"] for row in rows for x in row["layers"]),
                           max_variability_ratio=max(x["variability_ratio"] for row in rows for x in row["layers"])))


if __name__ == "__main__":
    main()
