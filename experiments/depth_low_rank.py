"""Depth against neural collapse in the deep linear CE UFM (Garrod & Keating, NeurIPS 2025; Sukenik,
Lampert & Mondelli, NeurIPS 2024, for MSE and ReLU; Garrod, Keating & Thrampoulidis 2026 without
regularization).

Balanced one-hot targets with one context per class, d = K, one weight decay lambda = 1e-3 on every
factor (ufm.low_rank: F = L + 2 factors cost at least (F lambda/2) sum sigma_i(Z)^(2/F)).
(a) Closed form: the objective of the collapse (rank K - 1), the K-gon (rank 2) and, for even K, the
    cross-polytope (rank K/2) code at its best scale, against depth L = 0..6 and K = 4, 6, 8; the
    first depth at which the collapse is not the cheapest.
(b) GD with a line search from seeded starts (layers near the identity) at each depth: the rank of the
    class-mean Gram in every layer (singular values above 1e-3 of the largest) and of W, the trained
    objective against the cheapest code, and the check that the trained factors are balanced (the
    objective equals the CE of Z plus the Schatten cost of Z).
(c) Without weight decay, small start, a fixed budget of GD steps: the effective rank of the logits
    against depth (observed at a finite horizon; the 2026 claim is about the limit).
Runtime ~70 s on one thread (--quick: K = 6, depths 0, 1, 3, one seed; (c) at depths 0 and 3: ~15 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Run, experiment
from ufm.low_rank import CODES, code_objective, effective_rank, numerical_rank, one_hot_ce, schatten_cost
from ufm.targets import one_hot
from ufm.train import train_ufm


@dataclass(frozen=True)
class Config:
    weight_decay: float = 1e-3
    closed_form_classes: tuple[int, ...] = (4, 6, 8)
    closed_form_depths: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)
    trained_classes: tuple[int, ...] = (4, 6)
    trained_depths: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 4000
    unregularized_classes: int = 6
    unregularized_depths: tuple[int, ...] = (0, 1, 2, 4)
    unregularized_steps: int = 10000
    unregularized_init: float = 0.05


QUICK = Config(trained_classes=(6,), trained_depths=(0, 1, 3), seeds=(0,), steps=3000,
               unregularized_depths=(0, 3), unregularized_steps=5000)


def codes_for(K: int) -> list[str]:
    return [c for c in CODES if c != "cross-polytope" or K % 2 == 0]


def closed_form_rows(config: Config) -> list[dict]:
    rows = []
    for K in config.closed_form_classes:
        for L in config.closed_form_depths:
            objs = {c: code_objective(c, K, L, config.weight_decay) for c in codes_for(K)}
            best = min(objs.values(), key=lambda o: o.objective)
            rows.append(dict(K=K, depth=L, **{c: o.objective for c, o in objs.items()},
                             ranks={c: o.rank for c, o in objs.items()}, cheapest=best.code))
    return rows


def trained_row(config: Config, K: int, L: int, seed: int, args) -> dict:
    lam = config.weight_decay
    model = dict(features="deep_linear", depth=L) if L else {}
    r = train_ufm(one_hot([1] * K), K, weight_decay=lam, steps=config.steps, optimizer="gd",
                  device=args.device, seed=seed, snapshots=[], **model)
    Z = r.logits()  # (K, K)
    ce = one_hot_ce(Z)
    objective = r.history[-1]["objective"]
    cheapest = min((code_objective(c, K, L, lam) for c in codes_for(K)), key=lambda o: o.objective)
    collapse = code_objective("collapse", K, L, lam).objective
    return dict(K=K, depth=L, seed=seed, objective=objective, collapse_objective=collapse,
                below_collapse=objective < collapse * (1 - 1e-6),
                reached_cheapest=abs(objective - cheapest.objective) <= 1e-4 * cheapest.objective,
                cheapest_code=cheapest.code, cheapest_objective=cheapest.objective,
                layer_ranks=[numerical_rank(F.numpy()) for F in r.layer_features()],
                w_rank=numerical_rank(r.W.numpy()), logit_rank=numerical_rank(Z),
                balance_gap=abs(objective - (ce + schatten_cost(Z, L, lam))) / objective)


def unregularized_rows(config: Config, args) -> list[dict]:
    K = config.unregularized_classes
    rows = []
    for L in config.unregularized_depths:
        model = dict(features="deep_linear", depth=L) if L else {}
        r = train_ufm(one_hot([1] * K), K, weight_decay=0.0, steps=config.unregularized_steps, optimizer="gd",
                      init_scale=config.unregularized_init, device=args.device, seed=args.seed, snapshots=[], **model)
        Z = r.logits()
        sigma = np.linalg.svd(Z, compute_uv=False)
        rows.append(dict(K=K, depth=L, effective_rank=effective_rank(Z), sigma_over_max=(sigma / sigma[0]).tolist(),
                         ce=r.history[-1]["ce"]))
    return rows


@experiment(Config(), QUICK)
def main(config: Config, args, run: Run) -> dict:
    closed = closed_form_rows(config)
    for K in config.closed_form_classes:
        rows = [r for r in closed if r["K"] == K]
        first = next((r["depth"] for r in rows if r["cheapest"] != "collapse"), None)
        table = "; ".join(f"L {r['depth']}: " + ", ".join(f"{c} {r[c]:.5f}" for c in codes_for(K)) for r in rows)
        print(f"(a) K {K}: {table}\n    the collapse stops being the cheapest code at depth {first}")
    trained = [trained_row(config, K, L, seed, args) for K in config.trained_classes
               for L in config.trained_depths for seed in config.seeds]
    for r in trained:
        verdict = ("the collapse" if not r["below_collapse"] else "below the collapse") + (
            ", the cheapest code" if r["reached_cheapest"] else ", not the cheapest code")
        print(f"(b) [{verdict}] K {r['K']} depth {r['depth']} seed {r['seed']}: objective {r['objective']:.5f} (collapse "
              f"{r['collapse_objective']:.5f}, cheapest code {r['cheapest_code']} {r['cheapest_objective']:.5f}); "
              f"ranks per layer {r['layer_ranks']}, W {r['w_rank']}; balance gap {r['balance_gap']:.1e}")
    free = unregularized_rows(config, args)
    for r in free:
        print(f"(c) K {r['K']} depth {r['depth']}, no weight decay, {config.unregularized_steps} GD steps: effective "
              f"rank of Z {r['effective_rank']:.3f}, sigma/sigma_max {np.round(r['sigma_over_max'], 3).tolist()}, "
              f"CE {r['ce']:.2e}")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for K, ls in zip(config.closed_form_classes, ("-", "--", ":")):
        rows = [r for r in closed if r["K"] == K]
        for c, color in zip(CODES, ("C0", "C1", "C2")):
            if c in rows[0]:
                axes[0].plot([r["depth"] for r in rows], [r[c] for r in rows], ls, color=color, label=f"K {K}, {c}")
    axes[0].set_xlabel("depth L (trained d x d layers)")
    axes[0].set_ylabel("objective at the best scale")
    axes[0].set_title(f"(a) codes' objective, lambda {config.weight_decay:g} (closed form)", fontsize=9)
    axes[0].legend(fontsize=6, ncol=2)
    for K, marker in zip(config.trained_classes, ("o", "s")):
        rows = [r for r in trained if r["K"] == K and r["seed"] == config.seeds[0]]
        line, = axes[1].plot([r["depth"] for r in rows], [r["layer_ranks"][-1] for r in rows], marker + "-",
                             label=f"K {K}: GD, rank of the last layer's class means")
        axes[1].plot([r["depth"] for r in rows], [K - 1] * len(rows), ":", color=line.get_color())
    axes[1].set_xlabel("depth L")
    axes[1].set_ylabel("numerical rank (sigma > 1e-3 sigma_max)")
    axes[1].set_title("(b) GD's solution: rank against depth (dotted: collapse, K - 1)", fontsize=9)
    axes[1].legend(fontsize=7)
    axes[2].plot([r["depth"] for r in free], [r["effective_rank"] for r in free], "o-",
                 label=f"K {config.unregularized_classes}, {config.unregularized_steps} steps")
    axes[2].set_xlabel("depth L")
    axes[2].set_ylabel("effective rank of the logits Z")
    axes[2].set_title("(c) no weight decay: finite-horizon GD", fontsize=9)
    axes[2].legend(fontsize=7)
    run.figure(fig, "depth_low_rank")
    beaten = [r for r in trained if r["cheapest_code"] != "collapse"]  # where the collapse is not optimal
    return run.finish(dict(
        closed_form=closed, trained=trained, unregularized=free,
        collapse_not_cheapest_from={K: next((r["depth"] for r in closed if r["K"] == K and r["cheapest"] != "collapse"), None)
                                    for K in config.closed_form_classes},
        worst_balance_gap=max(r["balance_gap"] for r in trained),
        # where a lower-rank code is cheaper: the runs GD took below the collapse, and those where the
        # collapse persisted (a critical point that is not the minimum, as Garrod & Keating describe)
        below_collapse=[(r["K"], r["depth"], r["seed"]) for r in beaten if r["below_collapse"]],
        collapse_persisted=[(r["K"], r["depth"], r["seed"]) for r in beaten if not r["below_collapse"]],
        not_cheapest=[(r["K"], r["depth"], r["seed"], r["cheapest_code"]) for r in trained if not r["reached_cheapest"]],
    ))


if __name__ == "__main__":
    main()
