"""NTP with fixed features (Thrampoulidis, 2024): GD's implicit bias in the linear model.

H fixed (Gaussian, d = 12 >= m = 10 contexts, so every logit matrix is reachable), sparse soft labels
over V = 8 words (supports of 2-3), only W trained by full-batch GD with a line search, no weight
decay. Prediction: the loss tends to the entropy bound; the in-support logit differences converge to
the log-probability ratios, those of W* (convex.linear_finite_component); the norm of W grows
without bound and its direction tends to W^mm, the NTP-SVM with fixed H (convex.linear_ntp_svm):
cos(W_t, W^mm) rises toward 1 (slowly, as 1/log t). Runtime ~25 s on one thread (--quick: 3,000 steps, ~5 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Run, experiment, floored, floored_label
from ufm.convex import linear_finite_component, linear_ntp_svm
from ufm.targets import random_supports
from ufm.train import train_ufm


@dataclass(frozen=True)
class Config:
    contexts: int = 10
    vocab: int = 8
    support: tuple[int, int] = (2, 3)
    dim: int = 12
    steps: int = 20_000
    snapshots: int = 20


@experiment(Config(), Config(steps=3000, snapshots=10))
def main(config: Config, args, run: Run) -> dict:
    targets = random_supports(config.contexts, config.vocab, config.support, probs="zipf", seed=args.seed)
    H = np.random.default_rng(args.seed).standard_normal((config.dim, config.contexts))  # (d, m)
    w_mm = linear_ntp_svm(targets.support(), H).solution  # (V, d)
    w_star = linear_finite_component(targets, H).solution  # (V, d)
    # W* H's in-support differences are the log-probability ratios: pf_dist measures W_t H against them.

    def observe(W, F):
        return dict(cos_wmm=float((W * w_mm).sum() / (np.linalg.norm(W) * np.linalg.norm(w_mm))),
                    cos_wstar=float((W * w_star).sum() / (np.linalg.norm(W) * np.linalg.norm(w_star))))

    r = train_ufm(targets, config.dim, weight_decay=0.0, features="fixed_h", h0=H, steps=config.steps,
                  optimizer="gd", device=args.device, seed=args.seed, snapshots=config.snapshots, observe=observe)
    steps = r.steps()
    cos, gap, pf, norm = r.series("cos_wmm"), r.series("ce_minus_entropy"), r.series("pf_dist"), r.series("w_norm")
    for s, c, g, p, w in zip(steps, cos, gap, pf, norm):
        print(f"step {s:6d}: cos(W, W^mm) {c:.4f}  CE - H {g:.2e}  ||P_F(W H) - L_in|| {p:.2e}  ||W|| {w:.2f}")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.maximum(steps, 1)
    axes[0].semilogx(x, cos, "o-", label="cos(W_t, W^mm)")
    axes[0].semilogx(x, r.series("cos_wstar"), "s--", label="cos(W_t, W*)")
    axes[0].axhline(1.0, color="k", lw=0.8, ls=":")
    axes[0].set_xlabel("GD step")
    axes[0].set_ylabel("cosine")
    axes[0].set_title("direction: toward the NTP-SVM W^mm")
    axes[0].legend(fontsize=8)
    axes[1].loglog(x, floored(gap), "o-", label="CE - entropy")
    axes[1].loglog(x, floored(pf), "s-", label="||P_F(W_t H) - L_in||")
    axes[1].loglog(x, norm, "^-", label="||W_t||")
    axes[1].set_xlabel("GD step")
    axes[1].set_ylabel(floored_label("value"), fontsize=8)
    axes[1].set_title("the finite part converges, the norm grows")
    axes[1].legend(fontsize=8)
    run.figure(fig, "linear_model")
    return run.finish(dict(steps=steps.tolist(), cos_wmm=cos.tolist(), ce_minus_entropy=gap.tolist(),
                           pf_dist=pf.tolist(), w_norm=norm.tolist(), final_cos_wmm=float(cos[-1]),
                           cos_wmm_increasing=bool(np.all(np.diff(cos[1:]) > 0))))


if __name__ == "__main__":
    main()
