"""(b) Imbalanced one-hot targets: convergence to SELI, and minority collapse with weight decay.

Part 1 (SELI, Thrampoulidis et al. 2022): 3 majority classes x 10 contexts, 3 minority x 2, d = 8,
weight decay 1e-4; the cosine between the trained W W^T, H^T H and the SELI Grams over steps.
Part 2 (minority collapse, Fang et al. 2021): K_A = K_B = 5 classes, n_B = 1, imbalance ratio
R = n_A/n_B in {1, 10, 100, 1000}: mean pairwise cosine of the minority classifiers at weight decay
1e-4 (the reference curve), and at 5e-3, where they saturate.
Runtime (one thread): ~1.5 min; --quick ~20 s.
Expected: Gram cosines above 0.99 at the end; at lambda = 1e-4 the minority cosine rises with R as
SCIENCE.md's reference -0.111, 0.026, 0.317, 0.727 (within 0.05) while the majority classifiers'
cosines stay negative; at lambda = 5e-3 the minority classifiers collapse (cosine 1.000) from R = 100.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Run, experiment
from ufm.report import heatmap
from ufm.targets import one_hot
from ufm.theory import cosine_matrix, gram_cosine, gram_to_cosines, seli
from ufm.train import train_ufm


@dataclass(frozen=True)
class Config:
    counts: tuple[int, ...] = (10, 10, 10, 2, 2, 2)  # contexts per class (part 1)
    dim: int = 8
    weight_decay: float = 1e-4
    steps: int = 10_000
    minority_classes: int = 5  # K_A = K_B (part 2)
    minority_n: int = 1  # n_B
    ratios: tuple[int, ...] = (1, 10, 100, 1000)  # R = n_A / n_B
    minority_weight_decay: float = 1e-4  # the reference curve
    minority_steps: int = 20_000
    saturating_weight_decay: float = 5e-3  # a second curve: minority classifiers collapse
    saturating_steps: int = 4000


# Minority classifiers' mean pairwise cosine of a weight-decay UFM at R = 1, 10, 100, 1000 (SCIENCE.md 5).
REFERENCE_MINORITY_COS = [-0.111, 0.026, 0.317, 0.727]


def pair_mean(c: np.ndarray) -> float:
    return float(c[np.triu_indices(len(c), 1)].mean())


@experiment(Config(), Config(steps=1000, ratios=(1, 10, 100), minority_steps=8000, saturating_steps=800))
def main(config: Config, args, run: Run) -> dict:
    grams = seli(config.counts)
    result = train_ufm(
        one_hot(list(config.counts)), config.dim, weight_decay=config.weight_decay, steps=config.steps,
        device=args.device, seed=args.seed, snapshots=12, progress=True,
        observe=lambda W, H: dict(seli_words=gram_cosine(W @ W.T, grams.words),
                                  seli_contexts=gram_cosine(H.T @ H, grams.contexts)),
    )
    steps = result.steps()[1:]
    curve_w, curve_h = result.series("seli_words")[1:].tolist(), result.series("seli_contexts")[1:].tolist()
    W = result.W.numpy()
    final = dict(words=curve_w[-1], contexts=curve_h[-1])

    k = config.minority_classes

    def minority_curve(weight_decay: float, steps: int) -> dict:
        minority, majority = [], []
        for ratio in config.ratios:
            counts = [ratio * config.minority_n] * k + [config.minority_n] * k
            r = train_ufm(one_hot(counts), 2 * k, weight_decay=weight_decay, steps=steps, device=args.device,
                          seed=args.seed, snapshots=[])
            c = cosine_matrix(r.W.numpy())
            majority.append(pair_mean(c[:k, :k]))
            minority.append(pair_mean(c[k:, k:]))
            print(f"lambda {weight_decay:g}, R = {ratio:5d}: minority cos {minority[-1]:+.3f}, "
                  f"majority cos {majority[-1]:+.3f}")
        return dict(ratios=list(config.ratios), weight_decay=weight_decay, minority_cos=minority,
                    majority_cos=majority)

    reference = minority_curve(config.minority_weight_decay, config.minority_steps)
    saturating = minority_curve(config.saturating_weight_decay, config.saturating_steps)

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    axes[0].semilogx(steps, curve_w, label="cos(W W^T, SELI)")
    axes[0].semilogx(steps, curve_h, label="cos(H^T H, SELI)")
    axes[0].set_xlabel("steps")
    axes[0].set_ylabel("cosine with the SELI Gram")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"counts {list(config.counts)}")
    heatmap(axes[1], gram_to_cosines(W @ W.T), "cos of trained W rows", "class")
    heatmap(axes[2], gram_to_cosines(grams.words), "SELI prediction", "class")
    for curve, style in ((reference, "-"), (saturating, ":")):
        lam = curve["weight_decay"]
        axes[3].semilogx(config.ratios, curve["minority_cos"], "o" + style, label=f"minority, lambda {lam:g}")
        axes[3].semilogx(config.ratios, curve["majority_cos"], "s" + style, label=f"majority, lambda {lam:g}")
    axes[3].semilogx([1, 10, 100, 1000], REFERENCE_MINORITY_COS, "k*", ms=9, label="SCIENCE.md reference")
    axes[3].set_xlabel("imbalance ratio R")
    axes[3].set_ylabel("mean pairwise cos of classifiers")
    axes[3].legend(fontsize=8)
    axes[3].set_title("minority collapse")
    run.figure(fig, "seli_minority_collapse")
    print(f"final Gram cosines with SELI: W {final['words']:.5f}, H {final['contexts']:.5f}")
    return run.finish(dict(seli_gram_cosine=final, curve=dict(steps=steps.tolist(), words=curve_w,
                                                               contexts=curve_h),
                           minority_collapse=reference, minority_collapse_saturating=saturating))


if __name__ == "__main__":
    main()
