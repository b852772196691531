"""Naive float64 references, written from SCIENCE.md's formulas with dense numpy and plain loops.

They share no code with the package: a test that compares the two checks the formulas, the tiling
and the streaming merges at once.
"""

from __future__ import annotations

import numpy as np


def naive_stats(h, y, k, w=None):
    h, y = np.asarray(h, np.float64), np.asarray(y)
    w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
    d = h.shape[1]
    counts, samples = np.zeros(k), np.zeros(k, np.int64)
    means, var = np.zeros((k, d)), np.zeros(k)
    scatter = np.zeros((d, d))
    for c in range(k):
        sel = (y == c) & (w > 0)
        if not sel.any():
            continue
        wc, hc = w[sel], h[sel]
        counts[c], samples[c] = wc.sum(), sel.sum()
        means[c] = (wc[:, None] * hc).sum(0) / wc.sum()
        dev = hc - means[c]
        var[c] = (wc * (dev**2).sum(1)).sum() / wc.sum()
        scatter += (wc[:, None] * dev).T @ dev
    return dict(counts=counts, sample_counts=samples, means=means, var_traces=var,
                within_scatter=scatter / w.sum())


def _pop_std(x, ddof=0):
    x = np.asarray(x)
    return np.sqrt(np.sum((x - x.mean()) ** 2) / (len(x) - ddof))


def naive_metrics(h, y, k, w=None, classifier=None, *, cdnv_power=2.0, center="uniform",
                  min_count=1, riesz_s=None, spread_ddof=0, max_count=None):
    """SCIENCE.md's definitions; spread_ddof=1 gives Wu & Papyan's code (torch.std's Bessel default
    for the spreads over classes: norms, log norms, squared norms, NC3 cosines)."""
    s = naive_stats(h, y, k, w)
    kept = np.flatnonzero((s["sample_counts"] >= min_count) & (s["sample_counts"] <= (max_count or np.inf)))
    kk = len(kept)
    mu, n, var = s["means"][kept], s["counts"][kept], s["var_traces"][kept]
    g = mu.mean(0) if center == "uniform" else (n[:, None] * mu).sum(0) / n.sum()
    m = mu - g
    s_b = m.T @ m / kk
    out = {"num_classes_kept": kk, "num_pairs": kk * (kk - 1) // 2}
    out["nc1_trace_ratio"] = np.trace(s["within_scatter"] @ np.linalg.pinv(s_b, rtol=1e-10)) / kk
    out["nc1_quotient"] = np.trace(s["within_scatter"]) / np.trace(s_b)
    r = min(kk - 1, m.shape[1])  # Han et al.: the top K-1 singular directions of the class means
    u, sv, _ = np.linalg.svd(m.T / np.sqrt(kk), full_matrices=False)  # S_B = U diag(sv^2) U^T
    out["nc1_svd"] = np.trace(u[:, :r].T @ s["within_scatter"] @ u[:, :r] / sv[:r] ** 2)
    cdnv, cos, logk, riesz = [], [], [], []
    for i in range(kk):
        for j in range(i + 1, kk):
            dist = np.linalg.norm(mu[i] - mu[j])
            cdnv.append((var[i] + var[j]) / (2 * dist**cdnv_power))
            c = m[i] @ m[j] / (np.linalg.norm(m[i]) * np.linalg.norm(m[j]))
            cos.append(c)
            hat = m[i] / np.linalg.norm(m[i]) - m[j] / np.linalg.norm(m[j])
            logk.append(np.log(1 / np.linalg.norm(hat)))
            if riesz_s is not None:
                riesz.append(np.linalg.norm(hat) ** -riesz_s)
    norms = np.linalg.norm(m, axis=1)
    etf = (np.eye(kk) - np.ones((kk, kk)) / kk) / np.sqrt(kk - 1)
    gram = m @ m.T
    out.update(
        cdnv_mean=np.mean(cdnv), cdnv_std=_pop_std(cdnv),
        norm_mean=norms.mean(), norm_cov=_pop_std(norms, spread_ddof) / norms.mean(),
        log_norm_cov=_pop_std(np.log(norms), spread_ddof) / abs(np.log(norms).mean()),
        norm_sq_cov=_pop_std(norms**2, spread_ddof) / np.mean(norms**2),
        cos_mean=np.mean(cos), cos_std=_pop_std(cos),
        etf_error=np.linalg.norm(gram / np.linalg.norm(gram) - etf),
        gnc_log_mean=np.mean(logk), gnc_log_std=_pop_std(logk),
    )
    if riesz_s is not None:
        out.update(riesz_mean=np.mean(riesz), riesz_std=_pop_std(riesz))
    if classifier is not None:
        wk = np.asarray(classifier, np.float64)[kept]
        dual = np.array([wk[c] @ m[c] / (np.linalg.norm(wk[c]) * norms[c]) for c in range(kk)])
        a = wk @ m.T
        out.update(
            dual_cos_mean=dual.mean(), dual_cos_std=_pop_std(dual, spread_ddof),
            unc_cov=_pop_std(dual, spread_ddof) / abs(dual.mean()),
            dual_error=np.linalg.norm(a / np.linalg.norm(a) - etf),
        )
        dots = np.array([wk[c] @ m[c] for c in range(kk)])
        dist = np.array([np.linalg.norm(wk[c] / np.linalg.norm(wk[c]) - m[c] / norms[c]) for c in range(kk)])
        out.update(dot_mean=dots.mean(), dot_std=_pop_std(dots, spread_ddof),
                   unc_dot_cov=_pop_std(dots, spread_ddof) / abs(dots.mean()),
                   dual_dist_mean=dist.mean(), dual_dist_std=_pop_std(dist, spread_ddof))
    return out


def naive_nc4(h, pred, means, kept, labels=None):
    """NC4 by brute force; with labels, only samples whose label is a kept class (LC's code)."""
    h, pred = np.asarray(h), np.asarray(pred)
    if labels is not None:
        sel = np.isin(np.asarray(labels), kept)
        h, pred = h[sel], pred[sel]
    d = ((h[:, None, :] - np.asarray(means)[None, kept, :]) ** 2).sum(-1)
    return float(np.mean(kept[d.argmin(1)] == pred))


def within_over_between(H: np.ndarray, labels: np.ndarray) -> float:
    """Tr S_W / Tr S_B, written out here (no ufm code)."""
    means = class_means(H, labels)
    sw = ((H - means[labels].T) ** 2).sum() / H.shape[1]
    sb = ((means - means.mean(0)) ** 2).sum() / len(means)
    return sw / sb


def offdiag(G: np.ndarray) -> float:
    return float(np.abs(G - np.diag(np.diag(G))).max())


def class_means(H: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.stack([H[:, labels == k].mean(1) for k in range(labels.max() + 1)])  # (K, d)


# Drawn data and the metric keys the comparisons run over.


def samples(k=40, d=16, n=800, seed=0, weighted=True):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # every class seen
    h = rng.normal(size=(n, d)) * 0.7 + rng.normal(size=(k, d))[y] * 2
    w = rng.uniform(0.2, 3.0, n) if weighted else None
    classifier = rng.normal(size=(k, d)) + rng.normal(size=(k, d))
    return h, y, w, classifier


METRIC_KEYS = [
    "nc1_trace_ratio", "nc1_quotient", "nc1_svd", "cdnv_mean", "cdnv_std", "norm_mean", "norm_cov", "log_norm_cov", "norm_sq_cov", "cos_mean",
    "cos_std", "etf_error", "gnc_log_mean", "gnc_log_std",
]


NC3_KEYS = ["dual_cos_mean", "dual_cos_std", "unc_cov", "dual_error"]


# The peer library's NC3 variants: dot products (not scale-free) and distances of the unit vectors.
DUAL_KEYS = NC3_KEYS + ["dot_mean", "dot_std", "unc_dot_cov", "dual_dist_mean", "dual_dist_std"]
