"""Feature collapse (Laurent, von Brecht, Bresson, ICLR 2024), and its next-token version.

Part 1, the 2 x 2 study {uniform, Zipf} x {LayerNorm, none} on their data model (CPU size: n_c = 3,
n_w = 150, L = 10, K = 100, d = 30, 5 training sentences per latent, SGD lr 0.1, batch 100, weight
decay 1e-3, 1,200 epochs; ``--size paper``: n_w = 1200, L = 15, K = 1000, d = 100, for a GPU).
Measured over epochs: test accuracy, within-concept CDNV of the word embeddings (raw, and after
LayerNorm when used), the angle between concept means, and the embedding norm against word rank.
Part 2, next-token prediction: a bigram language of 8 groups x 4 synonyms (Zipfian within a group);
the NTP-UFM trained with and without LayerNorm on H and on the rows of W; do synonyms' word
embeddings collapse? L_mm (cvxpy) predicts identical rows for interchangeable words.
Runtime: ~70 s on one thread.
Expected (paper): uniform -> collapse and ~100% test accuracy with or without LayerNorm; Zipf
without LayerNorm -> rare and frequent words of a concept do not collapse (norms follow frequency)
and test accuracy suffers; Zipf with LayerNorm -> collapse and ~100% again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Run, experiment
from ufm.convex import ntp_svm
from ufm.feature_collapse import FeatureTask, feature_measures, make_task, train_feature_collapse
from ufm.targets import synonym_language
from ufm.train import train_ufm


@dataclass(frozen=True)
class Config:
    task: FeatureTask = FeatureTask(num_words=150, num_latents=100, length=10)
    dim: int = 30
    epochs: int = 1200
    eval_every: int = 50
    groups: int = 8  # part 2: synonym groups
    synonyms: int = 4  # words per group
    next_groups: int = 3  # groups that may follow a group
    ufm_dim: int = 16
    ufm_weight_decay: float = 1e-4
    ufm_steps: int = 20_000


PAPER = Config(task=FeatureTask(), dim=100, epochs=1200, eval_every=50)


def synonym_measures(words: np.ndarray, groups: np.ndarray, freq: np.ndarray) -> dict:
    """Synonyms as samples, groups as classes: raw and direction-only collapse, norm vs frequency."""
    raw = feature_measures(words, groups, freq)
    unit = feature_measures(words / np.linalg.norm(words, axis=1, keepdims=True), groups, freq)
    return dict(cdnv=raw["cdnv"], direction_cdnv=unit["cdnv"], norm_cov=raw["norm_cov"],
                norm_freq_spearman=raw["norm_freq_spearman"])


def sized(args) -> Config:
    return PAPER if args.size == "paper" else Config()


@experiment(sized, lambda args: replace(sized(args), epochs=200, eval_every=100, ufm_steps=2000),
            extra=lambda p: p.add_argument("--size", choices=["cpu", "paper"], default="cpu",
                                           help="cpu (default) or paper (the paper's size, for a GPU)"))
def main(config: Config, args, run: Run) -> dict:

    regimes = {}
    for freq in ("uniform", "zipf"):
        data = make_task(replace(config.task, frequencies=freq, seed=args.seed))
        for ln in (False, True):
            r = train_feature_collapse(data, config.dim, layernorm=ln, epochs=config.epochs, device=args.device,
                                       seed=args.seed, eval_every=config.eval_every, progress=True)
            final = r.history[-1]  # the last epoch is always recorded, with the measures of phi(W)
            prefix = "ln_" if ln else "raw_"
            regimes[f"{freq}, {'LayerNorm' if ln else 'no LN'}"] = dict(
                history=r.history, final=final, norms=np.linalg.norm(r.W.numpy(), axis=1).tolist(),
                ranks=data.rank_of_word.tolist(),
                measured={k[len(prefix):]: v for k, v in final.items() if k.startswith(prefix)})

    table = ["| regime | test acc | train acc | within-concept CDNV (as used) | raw CDNV | concept cos | "
             "Spearman(norm, freq) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, reg in regimes.items():
        f, m = reg["final"], reg["measured"]
        table.append(f"| {name} | {f['test_acc']:.3f} | {f['train_acc']:.3f} | {m['cdnv']:.4g} | "
                     f"{f['raw_cdnv']:.4g} | {m['concept_cos']:.3f} | {f['raw_norm_freq_spearman']:.3f} |")
    print("\n".join(table))

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for name, reg in regimes.items():
        ep = [h["epoch"] for h in reg["history"]]
        key = "ln_cdnv" if "LayerNorm" in name else "raw_cdnv"
        axes[0].plot(ep, [h["test_acc"] for h in reg["history"]], label=name)
        axes[1].semilogy(ep, [h[key] for h in reg["history"]], label=name)
        ranks, norms = np.array(reg["ranks"]), np.array(reg["norms"])
        per_rank = [norms[ranks == b].mean() for b in range(ranks.max() + 1)]
        axes[2].loglog(np.arange(1, len(per_rank) + 1), per_rank, label=name)
    axes[0].set(xlabel="epoch", ylabel="test accuracy", title="generalization")
    axes[1].set(xlabel="epoch", ylabel="within-concept CDNV", title="feature collapse")
    axes[2].set(xlabel="word rank in its concept", ylabel="mean ||w|| (raw)", title="norm against frequency rank")
    for ax in axes:
        ax.legend(fontsize=7)
    run.figure(fig, "feature_collapse")

    # Part 2: the next-token version.
    targets, groups = synonym_language(config.groups, config.synonyms, next_groups=config.next_groups, seed=args.seed)
    l_mm = ntp_svm(targets.support())
    spread = max(float(np.abs(l_mm[groups == g] - l_mm[groups == g][0]).max()) for g in range(config.groups))
    word_freq = targets.pi  # pi_z = mu_r / groups: the frequency of word z
    ntp = {}
    for h_ln, w_ln in ((False, False), (True, False), (False, True), (True, True)):
        r = train_ufm(targets, config.ufm_dim, weight_decay=config.ufm_weight_decay, steps=config.ufm_steps,
                      layernorm=h_ln, word_layernorm=w_ln, device=args.device, seed=args.seed, snapshots=[])
        ntp[f"LN on H: {h_ln}, LN on W: {w_ln}"] = dict(
            ce_minus_entropy=r.history[-1]["ce_minus_entropy"],
            **synonym_measures(r.words().numpy(), groups, word_freq))
    ntp_table = ["| UFM | CE - H | synonym CDNV | direction CDNV | CoV of norms | Spearman(norm, freq) |",
                 "| --- | ---: | ---: | ---: | ---: | ---: |"]
    ntp_table += [f"| {k} | {v['ce_minus_entropy']:.3g} | {v['cdnv']:.4g} | {v['direction_cdnv']:.4g} | "
                  f"{v['norm_cov']:.3f} | {v['norm_freq_spearman']:.3f} |" for k, v in ntp.items()]
    print(f"L_mm: largest difference between rows of synonyms {spread:.2e} (prediction: identical rows)")
    print("\n".join(ntp_table))
    (args.out / "table.md").write_text("\n".join(table + [""] + ntp_table) + "\n")
    return run.finish(dict(regimes={k: dict(final=v["final"], measured=v["measured"]) for k, v in regimes.items()},
                           table=table, ntp=ntp, ntp_table=ntp_table, lmm_synonym_row_spread=spread,
                           task=asdict(config.task)))


if __name__ == "__main__":
    main()
