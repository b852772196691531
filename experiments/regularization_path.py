"""(d) The regularization path: L_lambda = L_in + log(1/lambda) L_mm + o(log(1/lambda)).

The SCIENCE.md check: V = 8 tokens, m = 10 contexts, supports of 1-3 tokens with Zipfian
probabilities. The convex problem min CE(L) + lambda ||L||_* is solved for lambda from 1e-1 to 1e-5
(FISTA, warm-started down the path, each solve certified by its duality gap), and the factorized UFM
is trained at three of them.
Runtime: ~30 s on one thread.
Expected: ||L_lambda||_* grows linearly in ln(1/lambda) with slope ||L_mm||_*; ||P_F L - L_in||
falls ~10x per decade; cos(P_Fperp L, L_mm) rises toward 1 (0.92, 0.97, 0.98 at 1e-2, 1e-3, 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Run, experiment
from ufm.convex import LogitsProblem, ntp_svm_result
from ufm.targets import random_supports
from ufm.theory import gram_cosine, project_f, sparse_component
from ufm.train import train_ufm


@dataclass(frozen=True)
class Config:
    num_contexts: int = 10  # m
    vocab_size: int = 8  # V
    support_size: tuple[int, int] = (1, 3)
    lambdas: tuple[float, ...] = tuple(float(x) for x in np.logspace(-1, -5, 9))
    ufm_lambdas: tuple[float, ...] = (1e-2, 1e-3, 1e-4)  # also trained as a factorized UFM
    ufm_steps: int = 20_000  # default optimizer (Adam, cosine schedule)


@experiment(Config(), Config(ufm_lambdas=(1e-2,), ufm_steps=3000))
def main(config: Config, args, run: Run) -> dict:
    targets = random_supports(config.num_contexts, config.vocab_size, config.support_size, probs="zipf",
                              seed=args.seed + 1)
    S, l_in = targets.support(), sparse_component(targets)
    svm = ntp_svm_result(S)
    l_mm = svm.solution
    mm_nuc = float(np.linalg.norm(l_mm, "nuc"))
    problem = LogitsProblem(targets)
    rows = []
    for lam in config.lambdas:
        sol = problem.solve(lam)
        L = sol.solution
        pf = project_f(L, S)
        rows.append(dict(lam=lam, nuclear=float(np.linalg.norm(L, "nuc")), pf_dist=float(np.linalg.norm(pf - l_in)),
                         cos_mm=gram_cosine(L - pf, l_mm), status=sol.status, solver=sol.solver,
                         duality_gap=sol.residual))
        print(f"lambda {lam:.1e}: ||L||_* {rows[-1]['nuclear']:8.3f}  ||P_F L - L_in|| {rows[-1]['pf_dist']:.4f}"
              f"  cos(P_Fperp L, L_mm) {rows[-1]['cos_mm']:.4f}")
    x = np.log(1 / np.array(config.lambdas))
    nuc = np.array([r["nuclear"] for r in rows])
    tail = slice(len(x) // 2, None)  # the asymptotic regime: small lambda
    slope = float(np.polyfit(x[tail], nuc[tail], 1)[0])
    ufm_rows = []
    for lam in config.ufm_lambdas:
        r = train_ufm(targets, config.vocab_size, weight_decay=lam, steps=config.ufm_steps, device=args.device,
                      seed=args.seed, snapshots=[], l_mm=l_mm)
        L = r.logits()
        ufm_rows.append(dict(lam=lam, nuclear=float(np.linalg.norm(L, "nuc")), pf_dist=r.history[-1]["pf_dist"],
                             cos_mm=r.history[-1]["cos_mm"]))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(x, nuc, "o-", label="convex ||L_lambda||_*")
    axes[0].plot(x, nuc[-1] + mm_nuc * (x - x[-1]), "k--", label=f"slope ||L_mm||_* = {mm_nuc:.3f}")
    axes[0].plot([np.log(1 / u["lam"]) for u in ufm_rows], [u["nuclear"] for u in ufm_rows], "rx", ms=10,
                 label="factorized UFM")
    axes[0].set_xlabel("ln(1/lambda)")
    axes[0].set_ylabel("||L_lambda||_*")
    axes[0].set_title("nuclear norm along the path")
    axes[0].legend(fontsize=8)
    axes[1].semilogy(x, [r["pf_dist"] for r in rows], "o-", label="convex")
    axes[1].semilogy([np.log(1 / u["lam"]) for u in ufm_rows], [u["pf_dist"] for u in ufm_rows], "rx", ms=10,
                     label="UFM")
    axes[1].set_title("||P_F(L_lambda) - L_in||")
    axes[1].set_ylabel("distance of the sparse part")
    axes[1].set_xlabel("ln(1/lambda)")
    axes[1].legend(fontsize=8)
    axes[2].plot(x, [r["cos_mm"] for r in rows], "o-", label="convex")
    axes[2].plot([np.log(1 / u["lam"]) for u in ufm_rows], [u["cos_mm"] for u in ufm_rows], "rx", ms=10, label="UFM")
    axes[2].set_title("cos(P_Fperp L_lambda, L_mm)")
    axes[2].set_ylabel("cosine")
    axes[2].set_xlabel("ln(1/lambda)")
    axes[2].legend(fontsize=8)
    run.figure(fig, "regularization_path")
    print(f"slope of ||L||_* per unit ln(1/lambda): {slope:.4f}; ||L_mm||_* = {mm_nuc:.4f}; "
          f"per decade {slope * np.log(10):.3f} vs {mm_nuc * np.log(10):.3f}")
    return run.finish(dict(path=rows, ufm=ufm_rows, slope=slope, lmm_nuclear_norm=mm_nuc, svm_status=svm.status,
                           entropy=targets.entropy))


if __name__ == "__main__":
    main()
