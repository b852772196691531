"""Perturbed UFM (Tirer, Huang & Niles-Weed, ICML 2023) in the paper's own regime and units.

The paper's objective, 1/(2N)||WH - Y||^2 + lambda_W/(2K)||W||^2 + lambda_H/(2N)||H||^2 +
beta/(2N)||H - H0||^2, is the toolkit's MSE UFM with features="perturbed" at weight_decay =
lambda_W/K, feature_decay = lambda_H/N, beta = beta/N (ufm.perturbation.toolkit_units); every
number below is in the paper's units.

(a) Theorem 4.2, near collapse: H0 = a collapsed minimizer plus a small perturbation, beta >>
max(1, lambda_H), lambda_H lambda_W < 1. The exact linear response F = dH/dH0 (implicit function
theorem on the toolkit's objective, Hessian by autograd; K = 4, n = 10, d = 10, lambda_W = 0.5,
lambda_H = 1) has same-class blocks with singular values in [1 - sqrt(lambda_H/lambda_W)/beta, 1] and
rank-1 cross-class blocks of norm 2 lambda_H (1 - sqrt(lambda_H lambda_W))/beta, each up to
O(1/beta^2): the printed error times beta^2 stays bounded as beta grows.
(b) Corollary 3.2, large beta: the optimized features are less variable within classes than H0
(Tr S_W / Tr S_B after over before < 1), approaching H0 as beta grows (1 - ratio ~ c / beta); a
random, uncollapsed H0 (Gaussian class centres plus noise of std 0.8), lambda_W = 0.05, lambda_H = 0.5,
full-batch GD with a line search, checked stationary against the closed-form H for the trained W.
Observed beside it, not a claim of the paper: the same ratio with lambda_W or lambda_H ten times
larger. Runtime 16 s on one thread (--quick: (a) at beta 100 and 200, (b) at beta 10 and 100: 5 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Run, experiment
from ufm.metrics import variability_ratio
from ufm.perturbation import anchor_response, block_singular_values, theorem_4_2, toolkit_units
from ufm.stats import stats_from_features
from ufm.targets import one_hot
from ufm.train import train_ufm


@dataclass(frozen=True)
class Config:
    num_classes: int = 4
    per_class: int = 10
    dim: int = 10
    # (a) Theorem 4.2
    theorem_betas: tuple[float, ...] = (25.0, 50.0, 100.0, 200.0, 400.0)
    theorem_lam_w: float = 0.5
    theorem_lam_h: float = 1.0
    # (b) Corollary 3.2
    noise: float = 0.8  # std of H0 around its class centres
    corollary_betas: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0)
    lam_w: float = 0.05
    lam_h: float = 0.5
    decay_factor: float = 10.0  # the observed side runs: lambda_W or lambda_H times this
    steps: int = 2000


QUICK = Config(theorem_betas=(100.0, 200.0), corollary_betas=(10.0, 100.0), steps=1000)


def theorem_rows(config: Config) -> list[dict]:
    K, n, d = config.num_classes, config.per_class, config.dim
    rows = []
    for beta in config.theorem_betas:
        lam = dict(lam_w=config.theorem_lam_w, lam_h=config.theorem_lam_h)
        got = block_singular_values(anchor_response(K, n, d, beta=beta, **lam), K)
        want = theorem_4_2(beta=beta, **lam)
        rows.append(dict(beta=beta, **{f"{k}": v for k, v in vars(got).items()},
                         **{f"{k}_theory": v for k, v in vars(want).items()},
                         worst_error=max(abs(getattr(got, k) - getattr(want, k)) for k in vars(want))))
    return rows


def corollary_rows(config: Config, args) -> tuple[float, list[dict]]:
    K, n, d = config.num_classes, config.per_class, config.dim
    labels = np.repeat(np.arange(K), n)
    rng = np.random.default_rng(args.seed)
    h0 = rng.standard_normal((d, K))[:, labels] + config.noise * rng.standard_normal((d, K * n))  # (d, N)

    def ratio(H) -> float:
        return variability_ratio(stats_from_features(np.asarray(H).T, labels, K))

    base = ratio(h0)
    big = config.decay_factor
    rows = []
    for beta in config.corollary_betas:
        row = dict(beta=beta)
        for key, (lam_w, lam_h) in dict(ratio=(config.lam_w, config.lam_h),
                                        ratio_lam_w_x10=(big * config.lam_w, config.lam_h),
                                        ratio_lam_h_x10=(config.lam_w, big * config.lam_h)).items():
            units = toolkit_units(K, n, lam_w=lam_w, lam_h=lam_h, beta=beta)
            r = train_ufm(one_hot([n] * K), d, loss="mse", features="perturbed", h0=h0, steps=config.steps,
                          optimizer="gd", device=args.device, seed=args.seed, snapshots=[], **units)
            row[key] = ratio(r.H) / base
            W, H, N = r.W.numpy(), r.H.numpy(), K * n  # the optimal H for the trained W, in closed form
            h_star = np.linalg.solve(W.T @ W / N + (units["feature_decay"] + units["beta"]) * np.eye(d),
                                     W.T @ np.eye(K)[:, labels] / N + units["beta"] * h0)
            row["stationarity"] = max(row.get("stationarity", 0.0), float(np.abs(h_star - H).max()))
        rows.append(row)
    return base, rows


@experiment(Config(), QUICK)
def main(config: Config, args, run: Run) -> dict:
    theorem = theorem_rows(config)
    for r in theorem:
        print(f"(a) beta {r['beta']:g}: F_kk singular values {r['same_min']:.6f}..{r['same_max']:.6f} (theory "
              f"{r['same_min_theory']:.6f}..1), F_kj {r['cross_max']:.4e} (theory {r['cross_max_theory']:.4e}), second "
              f"{r['cross_second']:.1e}; worst error {r['worst_error']:.2e} = {r['worst_error'] * r['beta'] ** 2:.2f} / beta^2")
    base, corollary = corollary_rows(config, args)
    for r in corollary:
        print(f"(b) beta {r['beta']:g}: Tr S_W/Tr S_B after / before {r['ratio']:.4f} (observed: lambda_W x10 "
              f"{r['ratio_lam_w_x10']:.4f}, lambda_H x10 {r['ratio_lam_h_x10']:.4f}); largest |H - H*(W)| "
              f"{r['stationarity']:.1e}")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    betas = np.array([r["beta"] for r in theorem])
    for key, label in (("same_min", "smallest singular value of F_kk, 1 - it"), ("cross_max", "norm of F_kj")):
        got = np.array([r[key] for r in theorem])
        want = np.array([r[f"{key}_theory"] for r in theorem])
        if key == "same_min":
            got, want = 1 - got, 1 - want
        axes[0].loglog(betas, got, "o", label=f"{label}: exact Jacobian")
        axes[0].loglog(betas, want, "-", label=f"{label}: Theorem 4.2")
    axes[0].set_xlabel("beta (paper units)")
    axes[0].set_ylabel("singular value")
    axes[0].set_title("Theorem 4.2: the response to a perturbation of H0", fontsize=9)
    axes[0].legend(fontsize=7)
    cb = [r["beta"] for r in corollary]
    axes[1].semilogx(cb, [r["ratio"] for r in corollary], "o-", label=f"lambda_W {config.lam_w:g}, lambda_H {config.lam_h:g}")
    axes[1].semilogx(cb, [r["ratio_lam_w_x10"] for r in corollary], "s--", label="lambda_W x10 (observed)")
    axes[1].semilogx(cb, [r["ratio_lam_h_x10"] for r in corollary], "^--", label="lambda_H x10 (observed)")
    axes[1].axhline(1.0, color="k", lw=0.8, ls=":", label="H0")
    axes[1].set_xlabel("beta (paper units)")
    axes[1].set_ylabel("Tr S_W / Tr S_B, optimum over H0")
    axes[1].set_title("Corollary 3.2: less within-class variability than H0", fontsize=9)
    axes[1].legend(fontsize=7)
    run.figure(fig, "perturbation")
    return run.finish(dict(theorem_4_2=theorem, h0_ratio=base, corollary_3_2=corollary,
                           all_below_h0=all(r["ratio"] < 1 for r in corollary),
                           worst_error_times_beta2=max(r["worst_error"] * r["beta"] ** 2 for r in theorem)))


if __name__ == "__main__":
    main()
