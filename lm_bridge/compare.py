"""A trained causal LM next to the unconstrained-features model of the same corpus.

From the corpus: contexts = the last n tokens (inside a block) seen at least ``min_count`` times, each
with its empirical next-token distribution -> NTPTargets (Zhao et al. 2024). The UFM is trained on
them at the model's width. Side by side:
- the same collapse metrics (classes = next tokens) of the model (every labelled position) and of
  the UFM (context j counts toward token z with weight pi_j p_jz);
- for the shared contexts, the real context embedding h_j = the mean last hidden state over the
  context's occurrences; the same-support subspace-collapse ratio of the real (H, W), of the UFM's,
  and of the theory's factors of S~ (which collapse exactly);
- correlations of cosine maps: real W W^T and UFM W W^T against the prediction from the centered
  support S~ (G_W proportional to (S~ S~^T)^(1/2)), and the same for H against (S~^T S~)^(1/2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from ufm import PRESETS, StatsAccumulator, collapse_metrics  # noqa: E402
from ufm.io import atomic_write, write_json  # noqa: E402
from ufm.targets import from_transitions  # noqa: E402
from ufm.theory import (centered_support, cosine_matrix, factor, gram_to_cosines,  # noqa: E402
                        offdiag_correlation, predicted_grams, subspace_collapse_ratio)
from ufm.threads import threads_for  # noqa: E402
from ufm.train import train_ufm  # noqa: E402

from .collect import batches, forward_features, labelled_positions  # noqa: E402
from .corpus import Corpus, token_blocks  # noqa: E402
from .measure import model_label  # noqa: E402
from .models import LoadedModel, capture_unembedding_input  # noqa: E402
from ufm.report import (etf_error_reading, heatmap, random_means_etf_error, restrict_classes, save_figure,  # noqa: E402
                     shuffled_correlation)


@dataclass(frozen=True)
class CompareConfig:
    context_length: int = 2  # n: a context is the last n tokens
    min_count: int = 20  # contexts seen fewer times are dropped
    max_contexts: int = 400  # the most frequent contexts kept
    max_tokens: int = 200_000  # corpus tokens read
    block_size: int = 128
    batch_size: int = 16
    dim: int | None = None  # UFM width; must equal the model's hidden size (None: take it)
    weight_decay: float = 1e-4  # UFM lambda
    steps: int = 3000  # UFM Adam steps
    heatmap_size: int = 60  # tokens / contexts shown in the cosine maps
    seed: int = 0


def compare_model(loaded: LoadedModel, corpus: Corpus, config: CompareConfig, out: str | Path, *,
                  device: str = "auto", progress: bool = True) -> dict:
    """Run the comparison, write ``report.md``, ``compare.json`` and figures into ``out``; return the numbers."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d, n = loaded.hidden_size, config.context_length
    if config.dim is not None and config.dim != d:
        raise ValueError(
            f"the UFM dimension asked ({config.dim}) differs from the model's width ({d}); "
            "the comparison trains the UFM at the model's width"
        )
    blocks = list(token_blocks(corpus, loaded.tokenizer, config.block_size, max_tokens=config.max_tokens))
    pairs = [(tuple(b[t - n + 1:t + 1]), b[t + 1]) for b in blocks for t in range(n - 1, len(b) - 1)]
    targets, contexts = from_transitions([p[0] for p in pairs], [p[1] for p in pairs], loaded.vocab_size,
                                         min_count=config.min_count, max_contexts=config.max_contexts)
    index = {c: j for j, c in enumerate(contexts)}

    # One pass: token-class statistics of every position, context statistics of the kept contexts.
    dev = loaded.device
    tokens_acc = StatsAccumulator(loaded.vocab_size, d, device=dev)
    ctx_acc = StatsAccumulator(targets.num_contexts, d, device=dev)
    with torch.inference_mode(), capture_unembedding_input(loaded.model) as store, threads_for():
        for ids, lengths in batches(blocks, config.batch_size):
            _, hidden, _ = forward_features(loaded, ids, lengths, store)
            keep = labelled_positions(ids, lengths)
            tokens_acc.update(hidden[:, :-1][keep.to(dev)], ids[:, 1:][keep].to(dev))
            rows, cols, labels = [], [], []
            for i in range(ids.shape[0]):
                seq = ids[i].tolist()
                for t in range(n - 1, int(lengths[i]) - 1):
                    j = index.get(tuple(seq[t - n + 1:t + 1]))
                    if j is not None:
                        rows.append(i)
                        cols.append(t)
                        labels.append(j)
            if labels:
                ctx_acc.update(hidden[torch.tensor(rows), torch.tensor(cols)], torch.tensor(labels, device=dev))
    model_stats = tokens_acc.compute(metadata=dict(model=str(loaded.path)))
    h_real = ctx_acc.compute().means.T.cpu().numpy()  # (d, m): mean hidden state of each context
    w_real = loaded.classifier().cpu().numpy()  # (V, d)

    ufm = train_ufm(targets, d, weight_decay=config.weight_decay, steps=config.steps, device=device,
                    seed=config.seed, snapshots=[], progress=progress)
    w_ufm, h_ufm = ufm.W.numpy(), ufm.features().numpy()
    options = PRESETS["lc2024"]
    # Both on the same classes: the tokens that follow some kept context (the UFM's classes).
    ufm_stats = ufm.class_stats()
    shared = torch.nonzero(ufm_stats.sample_counts > 0).flatten().cpu().numpy()
    model_all = collapse_metrics(model_stats, loaded.classifier(), **options).to_dict()
    metrics = dict(model=collapse_metrics(restrict_classes(model_stats, shared), loaded.classifier(), **options).to_dict(),
                   ufm=collapse_metrics(ufm_stats, ufm.words(), **options).to_dict(), model_all_classes=model_all)

    S = targets.support()
    s_tilde = centered_support(S)
    w_theory, h_theory = factor(s_tilde, dim=min(d, min(s_tilde.shape)))
    subspace = dict(model=subspace_collapse_ratio(w_real, h_real, targets),
                    ufm=subspace_collapse_ratio(w_ufm, h_ufm, targets),
                    theory_s_tilde=subspace_collapse_ratio(w_theory, h_theory, targets))
    predicted = predicted_grams(s_tilde)
    used = np.flatnonzero(S.sum(1) > 0)  # tokens in some support
    freq = S[used].sum(1)
    cos_pred_w = gram_to_cosines(predicted.words[np.ix_(used, used)])
    cos_pred_h = gram_to_cosines(predicted.contexts)
    correlations = dict(
        words_model_vs_s_tilde=offdiag_correlation(cosine_matrix(w_real[used]), cos_pred_w),
        words_ufm_vs_s_tilde=offdiag_correlation(cosine_matrix(w_ufm[used]), cos_pred_w),
        words_model_vs_ufm=offdiag_correlation(cosine_matrix(w_real[used]), cosine_matrix(w_ufm[used])),
        contexts_model_vs_s_tilde=offdiag_correlation(cosine_matrix(h_real.T), cos_pred_h),
        contexts_ufm_vs_s_tilde=offdiag_correlation(cosine_matrix(h_ufm.T), cos_pred_h),
        contexts_model_vs_ufm=offdiag_correlation(cosine_matrix(h_real.T), cosine_matrix(h_ufm.T)),
    )
    controls = dict(
        words_model_vs_s_tilde=shuffled_correlation(cosine_matrix(w_real[used]), cos_pred_w, config.seed),
        contexts_model_vs_s_tilde=shuffled_correlation(cosine_matrix(h_real.T), cos_pred_h, config.seed),
    )
    groups = targets.support_groups()
    summary = dict(
        model=str(loaded.path), model_name=model_label(loaded.path), corpus=str(corpus.root), config=asdict(config),
        targets=targets.describe(), same_support_groups=sum(len(g) > 1 for g in groups), metrics=metrics,
        subspace_ratio=subspace, cosine_map_correlation=correlations, shuffled_control=controls,
        etf_error_random_means=random_means_etf_error(len(shared), d, config.seed), hidden_size=d,
        ufm_final=ufm.history[-1],
    )

    # Heatmaps: the most frequent support tokens; contexts ordered by support group.
    top = np.argsort(-freq, kind="stable")[: config.heatmap_size]
    order = np.concatenate(groups)[: config.heatmap_size]
    fig, axes = plt.subplots(2, 3, figsize=(14, 9))
    name = model_label(loaded.path)
    panels = [
        (cosine_matrix(w_real[used][top]), f"{name}: cos(w_z, w_z')"),
        (cosine_matrix(w_ufm[used][top]), "UFM: cos(w_z, w_z')"),
        (cos_pred_w[np.ix_(top, top)], "S~ prediction: words"),
        (cosine_matrix(h_real.T[order]), f"{name}: cos(h_j, h_j') (context means)"),
        (cosine_matrix(h_ufm.T[order]), "UFM: cos(h_j, h_j')"),
        (cos_pred_h[np.ix_(order, order)], "S~ prediction: contexts"),
    ]
    for ax, (mat, title) in zip(axes.flat, panels):
        heatmap(ax, mat, title)
    fig.suptitle(f"Cosine maps. Top row: the {len(top)} most frequent next tokens, by frequency. Bottom row: "
                 f"{len(order)} contexts grouped by support pattern (blocks = same support).", fontsize=10)
    save_figure(fig, out / "cosine_maps.png")
    # The geometry itself, for reuse and checks: context j is the tuple contexts[j] of token ids.
    atomic_write(out / "geometry.safetensors", lambda tmp: save_file(
        {"h_model": torch.as_tensor(h_real).contiguous(), "h_ufm": torch.as_tensor(h_ufm).contiguous(),
         "w_ufm": torch.as_tensor(w_ufm).contiguous(), "contexts": torch.tensor(contexts, dtype=torch.int64)},
        str(tmp), metadata={"format": "collapse-lab/compare-geometry"}))
    write_json(out / "compare.json", summary)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(render_report(summary)))
    return summary


# (metric key, label, note) of the side-by-side table.
REPORT_KEYS = [
    ("nc1_trace_ratio", "NC1 Tr(S_W S_B^+)/K", "0 = collapsed; unbounded, scales with min(D, K-1)/K"),
    ("cdnv_mean", "CDNV mean (power 4)", "0 = full collapse"), ("norm_cov", "CoV of ||m_c||", "0 = equinorm"),
    ("log_norm_cov", "CoV of log ||m_c||", "0 = equinorm"), ("cos_std", "std cos(m_c, m_c')", "0 = equiangular"),
    ("etf_error", "ETF error", "{etf_reading}"),
    ("gnc_log_std", "std log-kernel (GNC)", "0 = uniform on the sphere"),
    ("dual_cos_mean", "mean cos(w_c, m_c) (NC3)", "1 = self-dual"), ("unc_cov", "UNC3 CoV", "0 = uniformly dual"),
    ("num_classes_kept", "classes kept", "the same classes on both sides"),
]
CONVERGED = 1e-2  # CE - H (nats) below which the UFM fit is called converged


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_report(summary: dict) -> str:
    m, u = summary["metrics"]["model"], summary["metrics"]["ufm"]
    t, name = summary["targets"], summary.get("model_name", summary["model"])
    gap = summary["ufm_final"]["ce_minus_entropy"]
    converged = ("converged (CE - H below 1e-2 nats)" if gap < CONVERGED
                 else "not converged (CE - H above 1e-2 nats): read its geometry as a trend, not a limit")
    lines = [
        f"# {name} and the unconstrained-features model of the same text", "",
        f"Model `{summary['model']}` on corpus `{summary['corpus']}`. The text gives {t['num_contexts']} contexts "
        f"of {summary['config']['context_length']} tokens (each seen >= {summary['config']['min_count']} times) "
        f"with their empirical next-token distributions: vocabulary {t['vocab_size']}, {t['num_support_patterns']} "
        f"support patterns, {summary['same_support_groups']} of them shared by several contexts, entropy "
        f"{t['entropy']:.4f} nats. The UFM (Zhao et al., COLM 2024) is trained on exactly these targets at the "
        f"model's width D = {summary['hidden_size']}; it ended at CE - H = {gap:.3g} nats, {converged}.", "",
        "## Collapse metrics on the same classes", "",
        f"Linguistic Collapse preset (CDNV power 4, class-uniform mean). Both columns use the "
        f"{m['num_classes_kept']} next tokens that follow some kept context (the model on all its classes: "
        f"{summary['metrics']['model_all_classes']['num_classes_kept']}). The UFM is the idealized limit; a "
        "real model is expected to sit farther from collapse.", "",
        "| metric | model | UFM | reading |", "| --- | ---: | ---: | --- |",
    ]
    for key, label, note in REPORT_KEYS:
        reading = etf_error_reading(m["etf_error"] if m.get("etf_error") is not None else math.nan,
                                    m["num_classes_kept"], summary["hidden_size"], summary["etf_error_random_means"])
        lines.append(f"| {label} | {_fmt(m.get(key))} | {_fmt(u.get(key))} | {note.format(etf_reading=reading)} |")
    undefined = {f"{side} {k}": why for side, d in (("model", m), ("UFM", u)) for k, why in d.get("undefined", {}).items()
                 if k in dict((key, 1) for key, _, _ in REPORT_KEYS)}
    if undefined:
        lines += ["", "Undefined values (shown as -):"] + [f"- {k}: {why}" for k, why in undefined.items()]
    s = summary["subspace_ratio"]
    lines += ["", "## Subspace collapse of same-support contexts", "",
              "Mean ||P(h_j - h_j')|| / ||P h_j|| over pairs of contexts with the same support, P removing the "
              "directions that carry their own probabilities (0: collapsed). The factors of S~ collapse exactly "
              "by construction; the UFM approaches it slowly (log rate); a real model need not.", "",
              "| model | UFM | theory (factors of S~) |", "| ---: | ---: | ---: |",
              f"| {_fmt(s['model'])} | {_fmt(s['ufm'])} | {_fmt(s['theory_s_tilde'])} |", "",
              "## Cosine maps against the S~ prediction", "",
              "Pearson correlation of the off-diagonal cosines; the control relabels the model's items at random "
              "(a correlation that does not beat it carries no structure).", "",
              "| pair | correlation | shuffled control |", "| --- | ---: | ---: |"]
    controls = summary.get("shuffled_control", {})
    for k, v in summary["cosine_map_correlation"].items():
        lines.append(f"| {k.replace('_', ' ')} | {v:.4f} | {_fmt(controls.get(k))} |")
    lines += ["", "![cosine maps](cosine_maps.png)", "",
              f"*Figure: cosine maps of {name}, the UFM and the S~ prediction; words (top) by frequency, "
              "contexts (bottom) grouped by support pattern.*", ""]
    return "\n".join(lines)
