"""(a) Balanced one-hot targets, d >= K-1: the UFM converges to a simplex ETF (NC1-NC3 vs steps).

K = 10 classes, 5 contexts each, d = 16, weight decay 1e-3, the default optimizer (Adam, cosine
schedule), 20,000 full-batch steps. Runtime: ~15 s on one thread (--quick: 2,000 steps, ~3 s).
Expected: NC1 trace ratio, CDNV, ETF error and dual error all fall below 1e-3 and stay there (they
reach ~1e-14 by step ~1,000 and do not come back up); the spread of the pairwise cosines goes to 0
(their mean is -1/(K-1) = -0.111 for any centered means, so only the spread is evidence of an ETF;
Papyan, Han, Donoho 2020).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt

from experiments._common import Run, experiment, floored, floored_label
from ufm.targets import one_hot
from ufm.train import train_ufm


@dataclass(frozen=True)
class Config:
    num_classes: int = 10  # K
    per_class: int = 5  # contexts of each class
    dim: int = 16  # d >= K - 1
    weight_decay: float = 1e-3
    steps: int = 20_000
    snapshots: int = 30


@experiment(Config(), Config(steps=2000))
def main(config: Config, args, run: Run) -> dict:
    result = train_ufm(one_hot([config.per_class] * config.num_classes), config.dim,
                       weight_decay=config.weight_decay, steps=config.steps, device=args.device,
                       seed=args.seed, snapshots=config.snapshots, track_metrics=True, progress=True)
    steps = result.steps()[1:]
    rows = [h["metrics"] for h in result.history[1:]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in [("nc1_trace_ratio", "NC1 Tr(S_W S_B^+)/K"), ("cdnv_mean", "CDNV"),
                       ("etf_error", "NC2 ETF error"), ("dual_error", "NC3 dual error"),
                       ("norm_cov", "CoV of norms")]:
        axes[0].loglog(steps, floored([r[key] for r in rows]), label=label)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel(floored_label("metric (0 = collapsed)"), fontsize=8)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"Balanced one-hot, K={config.num_classes}, d={config.dim}")
    # The mean pair cosine is -1/(K-1) for any centered means, at initialization too: it says
    # nothing. The spread of the cosines and the distance of NC3's cosine to 1 do.
    axes[1].loglog(steps, floored([r["cos_std"] for r in rows]), label="std of cos(m_c, m_c') (ETF: 0)")
    axes[1].loglog(steps, floored([1 - r["dual_cos_mean"] for r in rows]), label="1 - mean cos(w_c, m_c) (NC3: 0)")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel(floored_label("distance from the ETF"), fontsize=8)
    axes[1].set_title("equiangularity and self-duality")
    axes[1].legend(fontsize=8)
    run.figure(fig, "etf_convergence")
    final = result.history[-1]["metrics"]
    print("final: " + ", ".join(f"{k} {final[k]:.3g}" for k in
                                ("nc1_trace_ratio", "cdnv_mean", "etf_error", "dual_error", "cos_mean")))
    late = [r["etf_error"] for r, step in zip(rows, steps) if step >= 1000]
    return run.finish(dict(final_metrics=final, history=result.history, max_etf_error_after_1000=max(late, default=None),
                           objective=result.history[-1]["objective"]))


if __name__ == "__main__":
    main()
