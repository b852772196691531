"""Next-token prediction as soft-label classification: the targets (Zhao et al., COLM 2024).

m distinct contexts j with frequencies pi_j and next-token distributions p_j over V tokens. P is kept
sparse (its non-zeros as COO triples), since a context's support S_j is a handful of tokens out of
a vocabulary. Matrices follow the paper: P, S, L are (V, m); W is (V, d); H is (d, m).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np

from .validate import check_positive_int

_SUM_TOL = 1e-6  # a distribution's entries must sum to 1 within this


@dataclass(frozen=True, eq=False)
class NTPTargets:
    """Soft-label NTP targets: context frequencies pi and sparse next-token distributions P."""

    pi: np.ndarray  # (m,) float64, context frequencies, sum 1
    tokens: np.ndarray  # (nnz,) int64, token z of each non-zero P[z, j]
    contexts: np.ndarray  # (nnz,) int64, context j of each non-zero, sorted
    probs: np.ndarray  # (nnz,) float64, p_jz > 0
    vocab_size: int  # V

    def __post_init__(self) -> None:
        for name in ("pi", "tokens", "contexts", "probs"):
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.ndim != 1:
                raise ValueError(f"{name} must be a 1-D numpy array, got shape {np.shape(value)}")
        for name in ("tokens", "contexts"):
            if len(getattr(self, name)) and not np.issubdtype(getattr(self, name).dtype, np.integer):
                raise ValueError(f"{name} must be integer ids, got dtype {getattr(self, name).dtype}")
        m, v = len(self.pi), self.vocab_size
        if m == 0 or v == 0:
            raise ValueError(f"targets need at least one context and one token, got m={m}, V={v}")
        check_positive_int(v, "vocab_size (V)")
        if not (len(self.tokens) == len(self.contexts) == len(self.probs)):
            raise ValueError("tokens, contexts and probs must have the same length")
        if not np.all(np.isfinite(self.pi)) or np.any(self.pi < 0):
            raise ValueError("pi must be finite and non-negative")
        if abs(self.pi.sum() - 1.0) > _SUM_TOL:
            raise ValueError(f"pi must be a distribution (sum 1), sums to {self.pi.sum():.8g}")
        if not np.all(np.isfinite(self.probs)) or np.any(self.probs <= 0):
            raise ValueError("probabilities must be finite and positive on the support")
        if len(self.tokens) and (self.tokens.min() < 0 or self.tokens.max() >= v):
            raise ValueError(f"token ids must lie in [0, {v})")
        if len(self.contexts) and (self.contexts.min() < 0 or self.contexts.max() >= m):
            raise ValueError(f"context ids must lie in [0, {m})")
        if len(self.tokens):
            pairs = np.sort(self.contexts.astype(np.int64) * v + self.tokens)
            dup = np.unique(pairs[1:][pairs[1:] == pairs[:-1]])
            if len(dup):
                z, j = int(dup[0] % v), int(dup[0] // v)
                raise ValueError(f"P has {len(dup)} duplicate (token, context) entr(ies), e.g. token {z} of context "
                                 f"{j}: each non-zero must appear once (duplicates would skew the entropy)")
        sums = np.bincount(self.contexts, weights=self.probs, minlength=m)
        bad = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOL)
        if len(bad):
            raise ValueError(
                f"each context's next-token probabilities must sum to 1; column {bad[0]} sums to "
                f"{sums[bad[0]]:.8g} ({len(bad)} column(s) off)"
            )

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_arrays(cls, pi, P) -> NTPTargets:
        """pi (m,) and P (V, m), dense or scipy-sparse; columns of P are distributions."""
        pi = np.asarray(pi, dtype=np.float64)
        if pi.ndim != 1:
            raise ValueError(f"pi must have shape (m,), got {pi.shape}")
        if hasattr(P, "tocoo"):
            coo = P.tocoo()
            rows, cols, vals, shape = coo.row, coo.col, coo.data.astype(np.float64), coo.shape
        else:
            P = np.asarray(P, dtype=np.float64)
            if P.ndim != 2:
                raise ValueError(f"P must have shape (V, m), got {P.shape}")
            if not np.all(np.isfinite(P)):
                raise ValueError("P contains NaN or Inf values")
            if np.any(P < 0):
                raise ValueError("P contains negative probabilities")
            rows, cols = np.nonzero(P)
            vals, shape = P[rows, cols], P.shape
        if shape[1] != len(pi):
            raise ValueError(f"P has {shape[1]} columns (contexts) but pi has {len(pi)} entries")
        if np.any(vals < 0) or not np.all(np.isfinite(vals)):
            raise ValueError("P contains negative, NaN or Inf probabilities")
        order = np.lexsort((rows, cols))  # by context, then token
        keep = vals[order] > 0
        return cls(pi, rows[order][keep].astype(np.int64), cols[order][keep].astype(np.int64),
                   vals[order][keep], int(shape[0]))

    # ---- views --------------------------------------------------------------------------------

    @property
    def num_contexts(self) -> int:
        return len(self.pi)

    @property
    def nnz(self) -> int:
        return len(self.probs)

    def dense(self) -> np.ndarray:
        """P as a dense (V, m) array (small problems only)."""
        P = np.zeros((self.vocab_size, self.num_contexts))
        P[self.tokens, self.contexts] = self.probs
        return P

    def support(self) -> np.ndarray:
        """S (V, m): S[z, j] = 1 if z is in the support of context j."""
        S = np.zeros((self.vocab_size, self.num_contexts))
        S[self.tokens, self.contexts] = 1.0
        return S

    @cached_property
    def support_sizes(self) -> np.ndarray:
        """k_j (m,)."""
        return np.bincount(self.contexts, minlength=self.num_contexts)

    @property
    def entropy(self) -> float:
        """H = -sum_j pi_j sum_z p_jz log p_jz: the infimum of the CE loss."""
        return float(0.0 - (self.pi[self.contexts] * self.probs * np.log(self.probs)).sum())  # no -0.0

    def support_groups(self) -> list[np.ndarray]:
        """Contexts grouped by identical support (subspace collapse), largest group first."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        bounds = np.searchsorted(self.contexts, np.arange(self.num_contexts + 1))
        for j in range(self.num_contexts):
            groups[tuple(self.tokens[bounds[j]:bounds[j + 1]])].append(j)
        return sorted((np.array(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))

    def support_graph(self) -> nx.Graph:
        """Bipartite context-token graph: nodes ('c', j) and ('t', z), an edge where p_jz > 0."""
        g = nx.Graph()
        g.add_nodes_from((("c", j) for j in range(self.num_contexts)), bipartite=0)
        g.add_nodes_from((("t", z) for z in range(self.vocab_size)), bipartite=1)
        g.add_edges_from((("c", int(j)), ("t", int(z))) for z, j in zip(self.tokens, self.contexts))
        return g

    def describe(self) -> dict:
        return dict(num_contexts=self.num_contexts, vocab_size=self.vocab_size, nnz=self.nnz,
                    entropy=self.entropy, max_support=int(self.support_sizes.max()),
                    num_support_patterns=len(self.support_groups()))


# ---- builders -------------------------------------------------------------------------------


def one_hot(counts) -> NTPTargets:
    """K classes, counts[c] contexts with label c each, uniform pi: the classic (im)balanced UFM."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or len(counts) < 1 or np.any(counts < 1) or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"counts must be positive integers, one per class, got {counts.tolist()}")
    labels = np.repeat(np.arange(len(counts)), counts)
    m = len(labels)
    return NTPTargets(np.full(m, 1.0 / m), labels.astype(np.int64), np.arange(m, dtype=np.int64),
                      np.ones(m), len(counts))


def hierarchical_language(broad: int = 2, fine: int = 3, words: int = 4, *,
                          broad_contexts: int = 8) -> tuple[NTPTargets, dict[str, np.ndarray]]:
    """A language of nested concepts: ``broad`` categories, each split into ``fine`` ones of ``words``
    interchangeable words (V = broad * fine * words). Contexts select a category: fine category f has
    f + 1 contexts whose next word is uniform on its words, broad category b has broad_contexts (b + 1)
    contexts uniform on all of its words (unequal counts keep S~'s singular values apart; many broad
    contexts make the broad split S~'s top direction and the gradient's alike). pi is uniform.

    Returns the targets and each word's ground-truth labels, {"broad": (V,), "fine": (V,)}."""
    B, F, n = (check_positive_int(v, name, minimum=2) for v, name in ((broad, "broad"), (fine, "fine"), (words, "words")))
    fine_of = np.repeat(np.arange(B * F), n)  # (V,)
    broad_of = fine_of // F
    supports = [np.flatnonzero(fine_of == f) for f in range(B * F) for _ in range(f + 1)]
    reps = check_positive_int(broad_contexts, "broad_contexts")
    supports += [np.flatnonzero(broad_of == b) for b in range(B) for _ in range(reps * (b + 1))]
    tokens = np.concatenate(supports).astype(np.int64)
    contexts = np.concatenate([np.full(len(s), j) for j, s in enumerate(supports)]).astype(np.int64)
    probs = np.concatenate([np.full(len(s), 1.0 / len(s)) for s in supports])
    m = len(supports)
    return NTPTargets(np.full(m, 1.0 / m), tokens, contexts, probs, B * F * n), dict(broad=broad_of, fine=fine_of)


def mixup_pairs(num_classes: int, lambdas) -> tuple[NTPTargets, np.ndarray]:
    """Mixup's unconstrained-features model (Fisher, Meng & Papyan 2024): one context per mixed example,
    its target lam e_i + (1 - lam) e_k, for every class pair i <= k and every lam in ``lambdas`` (0 < lam < 1).
    Same-class pairs (i = k) have the one-hot target e_i whatever lam. pi is uniform.

    Returns the targets and (m, 3) rows (i, k, lam) describing each context."""
    K = check_positive_int(num_classes, "num_classes", minimum=2)
    lams = np.asarray(lambdas, dtype=np.float64).ravel()
    if lams.size == 0 or np.any(~(lams > 0) | ~(lams < 1)):
        raise ValueError(f"lambdas must lie strictly between 0 and 1, got {lams.tolist()}")
    rows = np.array([(i, k, lam) for i in range(K) for k in range(i, K) for lam in lams])
    tokens, contexts, probs = [], [], []
    for j, (i, k, lam) in enumerate(rows):
        pair = [(int(i), 1.0)] if i == k else [(int(i), lam), (int(k), 1.0 - lam)]
        for z, p in pair:
            tokens.append(z)
            contexts.append(j)
            probs.append(p)
    m = len(rows)
    return NTPTargets(np.full(m, 1.0 / m), np.array(tokens, dtype=np.int64), np.array(contexts, dtype=np.int64),
                      np.array(probs), K), rows


def random_supports(num_contexts: int, vocab_size: int, support_size, *, probs: str = "uniform",
                    num_patterns: int | None = None, zipf_exponent: float = 1.0,
                    seed: int = 0) -> NTPTargets:
    """Random sparse targets: each context draws a support and a distribution on it.

    support_size: an int k, or (k_min, k_max) drawn uniformly per pattern.
    probs: "uniform" (p = 1/k) or "zipf" (p proportional to rank^-zipf_exponent, random order).
    num_patterns: contexts share this many distinct supports (subspace collapse); None: each its own.
    pi is uniform.
    """
    m = check_positive_int(num_contexts, "num_contexts")
    v = check_positive_int(vocab_size, "vocab_size")
    lo, hi = (support_size, support_size) if np.isscalar(support_size) else support_size
    if not 1 <= lo <= hi <= v:
        raise ValueError(f"support_size must lie in [1, V={v}], got {support_size}")
    if probs not in ("uniform", "zipf"):
        raise ValueError(f"probs must be 'uniform' or 'zipf', got {probs!r}")
    rng = np.random.default_rng(seed)
    n_pat = m if num_patterns is None else check_positive_int(num_patterns, "num_patterns")
    if n_pat > m:
        raise ValueError(f"num_patterns={n_pat} is more than the {m} contexts: each pattern needs a context")
    patterns = _distinct_supports(rng, v, lo, hi, n_pat if num_patterns is not None else 0)
    patterns += [np.sort(rng.choice(v, size=rng.integers(lo, hi + 1), replace=False))
                 for _ in range(n_pat - len(patterns))]
    assign = np.arange(m) % n_pat if num_patterns is not None else np.arange(m)
    tokens, contexts, values = [], [], []
    for j in range(m):
        sup = patterns[assign[j]]
        if probs == "uniform":
            p = np.full(len(sup), 1.0 / len(sup))
        else:
            p = rng.permutation(np.arange(1, len(sup) + 1) ** -zipf_exponent)
            p /= p.sum()
        tokens.append(sup)
        contexts.append(np.full(len(sup), j))
        values.append(p)
    return NTPTargets(np.full(m, 1.0 / m), np.concatenate(tokens).astype(np.int64),
                      np.concatenate(contexts).astype(np.int64), np.concatenate(values), v)


def _distinct_supports(rng: np.random.Generator, v: int, lo: int, hi: int, count: int) -> list[np.ndarray]:
    """``count`` distinct random supports of sizes in [lo, hi] out of V tokens (a repeated draw is
    drawn again, so that the language has exactly the number of patterns asked for)."""
    possible = sum(math.comb(v, k) for k in range(lo, hi + 1))
    if count > possible:
        raise ValueError(f"num_patterns={count} distinct supports of size {lo}..{hi} do not exist among "
                         f"V={v} tokens (there are {possible})")
    seen: dict[tuple, np.ndarray] = {}
    while len(seen) < count:
        sup = np.sort(rng.choice(v, size=rng.integers(lo, hi + 1), replace=False))
        seen.setdefault(tuple(sup.tolist()), sup)
    return list(seen.values())


def synonym_language(num_groups: int, synonyms: int, *, next_groups: int = 2, zipf_exponent: float = 1.0,
                     seed: int = 0) -> tuple[NTPTargets, np.ndarray]:
    """A bigram language whose words come in groups of interchangeable synonyms.

    Word z = g * synonyms + r belongs to group g and has rank r. Each group is followed by
    ``next_groups`` random groups (uniformly); a group is spoken as its synonym of rank r with
    frequency mu_r proportional to (r + 1)^-zipf_exponent. Contexts are the previous word (every
    word, pi_z = mu_r / num_groups): synonyms have the same continuations as contexts and the same
    contexts as continuations, at unequal frequencies. Returns the targets and each word's group.
    """
    g = check_positive_int(num_groups, "num_groups")
    s = check_positive_int(synonyms, "synonyms")
    if not 1 <= next_groups <= g:
        raise ValueError(f"next_groups must lie in [1, num_groups={g}], got {next_groups}")
    rng = np.random.default_rng(seed)
    mu = (np.arange(1, s + 1, dtype=np.float64)) ** -zipf_exponent
    mu /= mu.sum()
    follows = [np.sort(rng.choice(g, size=next_groups, replace=False)) for _ in range(g)]
    v = g * s
    P = np.zeros((v, v))
    for z in range(v):
        for nxt in follows[z // s]:
            P[nxt * s:(nxt + 1) * s, z] = mu / next_groups
    pi = np.tile(mu, g) / g
    return NTPTargets.from_arrays(pi, P), np.arange(v) // s


def from_transitions(contexts, next_tokens, vocab_size: int, *, min_count: int = 1,
                     max_contexts: int | None = None) -> tuple[NTPTargets, list[tuple[int, ...]]]:
    """Targets from observed (context, next token) pairs: each distinct context with its empirical
    next-token distribution. Contexts seen fewer than ``min_count`` times are dropped, and only the
    ``max_contexts`` most frequent are kept (ties by first appearance); pi_j is the context's share
    of the kept occurrences. Returns the targets and the context of each column."""
    check_positive_int(min_count, "min_count")
    check_positive_int(vocab_size, "vocab_size")
    integer_ids(next_tokens, "next tokens")
    if len(contexts) != len(next_tokens):
        raise ValueError(f"{len(contexts)} contexts but {len(next_tokens)} next tokens")
    follow: dict[tuple[int, ...], Counter] = defaultdict(Counter)
    for c, z in zip(contexts, next_tokens, strict=True):
        follow[tuple(c)][int(z)] += 1
    totals = {c: sum(nxt.values()) for c, nxt in follow.items()}
    kept = [c for c in follow if totals[c] >= min_count]
    kept.sort(key=lambda c: -totals[c])  # stable: ties stay in order of first appearance
    kept = kept[:max_contexts] if max_contexts is not None else kept
    if not kept:
        raise ValueError(f"no context occurs at least min_count={min_count} times")
    counts = np.array([totals[c] for c in kept], dtype=np.float64)
    toks, ctxs, vals = [], [], []
    for j, c in enumerate(kept):
        for z in sorted(follow[c]):
            toks.append(z)
            ctxs.append(j)
            vals.append(follow[c][z] / counts[j])
    if max(toks) >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size})")
    targets = NTPTargets(counts / counts.sum(), np.array(toks, np.int64), np.array(ctxs, np.int64),
                         np.array(vals), vocab_size)
    return targets, kept


def integer_ids(values, name: str) -> np.ndarray:
    """``values`` as int64, refusing what is not a whole number (0.3 and 0.6 would both become 0)."""
    arr = np.asarray(values)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating):  # booleans, strings, objects
            raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise ValueError(f"{name} must be integers, got {arr[bad].ravel()[0].item()!r} ({int(bad.sum())} such value(s))")
    return arr.astype(np.int64)


def from_token_stream(tokens, context_length: int, *, vocab_size: int | None = None,
                      min_count: int = 1, max_contexts: int | None = None) -> tuple[NTPTargets, list[tuple[int, ...]]]:
    """Every distinct window of the last ``context_length`` tokens of a stream, with its empirical
    next-token distribution (see from_transitions). This is how a corpus becomes targets."""
    seq = integer_ids(tokens, "token ids")
    n = check_positive_int(context_length, "context_length")
    if seq.ndim != 1 or len(seq) <= n:
        raise ValueError(f"the token stream needs more than context_length={n} tokens, got {len(seq)}")
    v = int(seq.max()) + 1 if vocab_size is None else check_positive_int(vocab_size, "vocab_size")
    if seq.min() < 0 or seq.max() >= v:
        raise ValueError(f"token ids must lie in [0, {v})")
    windows = np.lib.stride_tricks.sliding_window_view(seq, n + 1)  # (T-n, n+1)
    return from_transitions(windows[:, :-1].tolist(), windows[:, -1], v, min_count=min_count,
                            max_contexts=max_contexts)
