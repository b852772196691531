"""Label smoothing against cross-entropy in the UFM (Guo et al., TMLR 2025).

Balanced one-hot targets, K = 4 classes of n = 10 contexts, d = K - 1, lambda_W = lambda_H = 5e-3, no bias;
eps = 0 (CE) and eps in {0.05, 0.1, 0.2}.
(a) The closed-form global minimizer (ufm.smoothing: margin log((K-1)(1-r)/r), r = (K-1)(eps/K +
    sqrt(lambda_W lambda_H n)), and the norms) against GD with a line search run to convergence:
    relative errors of the margin, ||h||, ||w|| and the objective.
(b) The paper's dynamics claims, in the UFM: one seeded start, plain GD with the same fixed step for
    every eps. "Faster": the step at which NC1 (Tr S_W / Tr S_B) first falls below 1e-6; "stronger":
    NC1 and the ETF error after a fixed budget; "at equal NC1, stronger NC2": the ETF error
    interpolated (log-log along each trajectory) at NC1 = 1e-4 and 1e-6.
(c) The curvature behind it: the within-class block of the Hessian at the minimizer, (1/N) W^T S W +
    lambda_H, has smallest eigenvalue mu, and under GD with step lr NC1 shrinks by (1 - lr mu)^2 a
    step. Its prediction against the slope of ln NC1 over the run's tail; beside it the condition
    numbers of that block and of the full Hessian (autograd, the d(d-1)/2 rotation directions of a
    d = K - 1 model left out), as measured.
Runtime ~10 s (--quick: eps 0 and 0.1 only, ~5 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from experiments._common import Run, experiment
from ufm.losses import Batch, CrossEntropy
from ufm.model import TargetTensors
from ufm.smoothing import nc1_rate, smoothed_etf, smoothed_etf_factors, within_class_curvature
from ufm.targets import one_hot
from ufm.train import train_ufm


@dataclass(frozen=True)
class Config:
    num_classes: int = 4
    per_class: int = 10
    weight_decay: float = 5e-3
    eps: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
    converge_steps: int = 400  # GD with a line search, (a)
    lr: float = 1.0  # the fixed step of (b), the same for every eps
    steps: int = 1500
    nc1_target: float = 1e-6
    equal_nc1: tuple[float, ...] = (1e-4, 1e-6)


QUICK = Config(eps=(0.0, 0.1))


def full_hessian_condition(opt, targets, dim: int) -> float:
    """Largest over smallest eigenvalue of the objective's Hessian in (W, H) at the minimizer, without
    the d(d-1)/2 zero eigenvalues of the rotations W -> W Q, H -> Q^T H (d = K - 1: nothing else is flat)."""
    K, N = opt.num_classes, targets.num_contexts
    W, H = smoothed_etf_factors(opt, dim)
    data = TargetTensors(targets, torch.device("cpu"), torch.float64)
    batch = Batch(*data.select(None))

    def objective(x: torch.Tensor) -> torch.Tensor:
        Wt, Ht = x[: K * dim].reshape(K, dim), x[K * dim:].reshape(dim, N)
        return (CrossEntropy(opt.eps)(Wt, Ht, None, batch, chunk_entries=None)
                + opt.weight_decay / 2 * Wt.square().sum() + opt.feature_decay / 2 * Ht.square().sum())

    x = torch.as_tensor(np.concatenate([W.ravel(), H.ravel()]))
    eig = np.linalg.eigvalsh(torch.autograd.functional.hessian(objective, x).numpy())
    rest = eig[dim * (dim - 1) // 2:]
    return float(rest[-1] / rest[0])


def at_nc1(nc1: np.ndarray, values: np.ndarray, level: float) -> float:
    """``values`` where NC1 first crosses ``level``, interpolated in log NC1 (and log values if positive)
    between the snapshots around the crossing; NaN if it never does."""
    below = np.flatnonzero(nc1 <= level)
    if not below.size or below[0] == 0:
        return float("nan")
    i = below[0]
    t = (np.log(level) - np.log(nc1[i - 1])) / (np.log(nc1[i]) - np.log(nc1[i - 1]))
    if np.all(values[i - 1:i + 1] > 0):
        return float(np.exp(np.log(values[i - 1]) + t * (np.log(values[i]) - np.log(values[i - 1]))))
    return float(values[i - 1] + t * (values[i] - values[i - 1]))


def run_eps(config: Config, eps: float, args) -> dict:
    K, n = config.num_classes, config.per_class
    targets, dim = one_hot([n] * K), K - 1
    opt = smoothed_etf(K, n, config.weight_decay, eps=eps)
    fit = train_ufm(targets, dim, weight_decay=config.weight_decay, label_smoothing=eps, steps=config.converge_steps,
                    optimizer="gd", device=args.device, seed=args.seed, snapshots=[])
    W, H = fit.W.numpy(), fit.H.numpy()
    got = dict(margin=float(np.mean((W @ H)[targets.tokens, np.arange(K * n)] - np.sort(W @ H, axis=0)[-2])),
               feature_norm=float(np.linalg.norm(H, axis=0).mean()), classifier_norm=float(np.linalg.norm(W, axis=1).mean()),
               objective=fit.history[-1]["objective"])
    errors = {k: abs(v - getattr(opt, k)) / getattr(opt, k) for k, v in got.items()}

    marks = sorted({0, config.steps, *np.unique(np.round(np.geomspace(1, config.steps, 40)).astype(int)).tolist()})
    dyn = train_ufm(targets, dim, weight_decay=config.weight_decay, label_smoothing=eps, steps=config.steps,
                    optimizer="gd", lr=config.lr, lr_schedule="constant", device=args.device, seed=args.seed,
                    snapshots=marks, track_metrics=True)
    hist = dyn.history
    nc1 = np.array([h["metrics"]["nc1_trace_ratio"] for h in hist])
    steps = dyn.steps()
    etf = np.array([h["metrics"]["etf_error"] for h in hist])
    # The tail: from NC1 1e-8 down to 1e-20 (past the transient, above float64's floor).
    tail = (nc1 < 1e-8) & (nc1 > 1e-20)
    slope = -np.polyfit(steps[tail], np.log(nc1[tail]), 1)[0] if tail.sum() >= 3 else float("nan")
    mu = within_class_curvature(opt)
    return dict(eps=eps, closed_form={k: getattr(opt, k) for k in got}, trained=got, rel_error=errors,
                worst_rel_error=max(errors.values()),
                steps_to_nc1_target=at_nc1(nc1, steps.astype(np.float64), config.nc1_target),
                final_nc1=float(nc1[-1]), final_etf_error=hist[-1]["metrics"]["etf_error"],
                etf_error_at_nc1={f"{lvl:g}": at_nc1(nc1, etf, lvl) for lvl in config.equal_nc1},
                nc1_rate_measured=float(slope), nc1_rate_predicted=nc1_rate(opt, config.lr),
                mu_min=float(mu[0]), block_condition=float(mu[-1] / mu[0]),
                full_hessian_condition=full_hessian_condition(opt, targets, dim),
                trajectory=dict(step=steps.tolist(), nc1=nc1.tolist(),
                                etf_error=etf.tolist()))


@experiment(Config(), QUICK)
def main(config: Config, args, run: Run) -> dict:
    rows = [run_eps(config, eps, args) for eps in config.eps]
    for r in rows:
        cf = r["closed_form"]
        print(f"(a) eps {r['eps']:g}: margin {cf['margin']:.6f}, ||h|| {cf['feature_norm']:.6f}, ||w|| "
              f"{cf['classifier_norm']:.6f}, objective {cf['objective']:.8f}; trained, worst relative error "
              f"{r['worst_rel_error']:.1e}")
    for r in rows:
        eq = ", ".join(f"{k}: {v:.2e}" for k, v in r["etf_error_at_nc1"].items())
        print(f"(b) eps {r['eps']:g}: NC1 < {config.nc1_target:g} at step {r['steps_to_nc1_target']:.0f}; after "
              f"{config.steps} steps NC1 {r['final_nc1']:.1e}, ETF error {r['final_etf_error']:.1e}; ETF error at "
              f"equal NC1 ({eq})")
    for r in rows:
        print(f"(c) eps {r['eps']:g}: mu_min {r['mu_min']:.5f}; ln NC1 falls {r['nc1_rate_measured']:.5f}/step, "
              f"predicted {r['nc1_rate_predicted']:.5f}; condition number: within-class block "
              f"{r['block_condition']:.3f}, full Hessian {r['full_hessian_condition']:.2f}")

    base = rows[0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in rows:
        tr = r["trajectory"]
        axes[0].loglog(np.maximum(tr["step"], 1), tr["nc1"], label=f"eps {r['eps']:g}")
        axes[1].loglog(tr["nc1"], tr["etf_error"], label=f"eps {r['eps']:g}")
    axes[0].axhline(config.nc1_target, color="k", ls=":", lw=0.8, label=f"NC1 = {config.nc1_target:g}")
    axes[0].set_xlabel(f"GD step (fixed lr {config.lr:g})")
    axes[0].set_ylabel("NC1 = Tr S_W / Tr S_B")
    axes[0].set_title("(b) NC1 against steps, one start for every eps", fontsize=9)
    axes[1].set_xlabel("NC1 = Tr S_W / Tr S_B")
    axes[1].set_ylabel("NC2: ETF error")
    axes[1].invert_xaxis()
    axes[1].set_title("(b) NC2 against NC1 along each run", fontsize=9)
    eps = [r["eps"] for r in rows]
    axes[2].plot(eps, [r["nc1_rate_measured"] for r in rows], "o", label="measured slope of ln NC1")
    axes[2].plot(eps, [r["nc1_rate_predicted"] for r in rows], "-", label="-2 ln(1 - lr mu_min), closed form")
    axes[2].set_xlabel("label smoothing eps")
    axes[2].set_ylabel("NC1 contraction rate (per step)")
    axes[2].set_title("(c) the within-class curvature sets the rate", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
    run.figure(fig, "label_smoothing")
    smoothed = rows[1:]
    return run.finish(dict(
        rows=[{k: v for k, v in r.items() if k != "trajectory"} for r in rows],
        trajectories={f"{r['eps']:g}": r["trajectory"] for r in rows},
        worst_closed_form_error=max(r["worst_rel_error"] for r in rows),
        faster=all(r["steps_to_nc1_target"] < base["steps_to_nc1_target"] for r in smoothed),
        stronger=all(r["final_nc1"] < base["final_nc1"] and r["final_etf_error"] < base["final_etf_error"]
                     for r in smoothed),
        stronger_nc2_at_equal_nc1=all(r["etf_error_at_nc1"][k] < base["etf_error_at_nc1"][k]
                                      for r in smoothed for k in base["etf_error_at_nc1"]),
        lower_full_hessian_condition=all(r["full_hessian_condition"] < base["full_hessian_condition"] for r in smoothed),
    ))


if __name__ == "__main__":
    main()
