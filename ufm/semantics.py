"""Semantic geometry of next-token prediction: the singular directions of the support matrix, the
order in which training learns them, and concepts read off embeddings by clustering.

Zhao & Thrampoulidis, "Geometry of Semantics in Next-Token Prediction" (2025): NTP embeddings converge
to the SVD factors of the centered support matrix S~ = (I - 11^T/V) S; the sign patterns of its
singular vectors encode latent concepts; directions with larger singular values are learned first.
Zhao, Papadimitriou & Thrampoulidis, "Structure Before Collapse" (2026): with one-hot labels over
inputs that share latent attributes, features cluster by attribute before the symmetric NC state.

Everything here is a pure function of arrays: S~ is never formed densely when it is large (its
product with a vector is S x - 1 (1^T S x) / V), and clusterings are rotation invariant (they read
an embedding through its own singular vectors, since a trained W is only defined up to rotation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, svds
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from .targets import NTPTargets
from .theory import cosine_matrix, sparse_component

# Above this many entries a matrix's top singular triplets come from ARPACK, not a dense SVD.
DENSE_SVD_ENTRIES = 4_000_000


@dataclass(frozen=True)
class Spectrum:
    """The top-k singular triplets of a (V, m) matrix, singular values descending."""

    U: np.ndarray  # (V, k) left singular vectors: word directions
    S: np.ndarray  # (k,)
    Vt: np.ndarray  # (k, m) right singular vectors: context directions


def support_operator(targets: NTPTargets) -> LinearOperator:
    """S~ (V, m) as an operator: S x - 1 (1^T S x)/V, never a dense V x m matrix."""
    V, m = targets.vocab_size, targets.num_contexts
    S = sp.csr_matrix((np.ones(targets.nnz), (targets.tokens, targets.contexts)), shape=(V, m))

    def matvec(x):
        y = S @ x
        return y - y.sum(0) / V

    def rmatvec(y):
        return S.T @ (y - y.sum(0) / V)

    return LinearOperator((V, m), matvec=matvec, rmatvec=rmatvec, matmat=matvec, rmatmat=rmatvec, dtype=np.float64)


def matrix_spectrum(M, k: int | None = None) -> Spectrum:
    """Top-k singular triplets of M (a dense array, a scipy sparse matrix or a LinearOperator): a dense
    SVD when M is small, ARPACK (scipy.sparse.linalg.svds) otherwise. k None: every triplet (dense)."""
    V, m = M.shape
    small = V * m <= DENSE_SVD_ENTRIES
    if k is not None and not (1 <= k <= min(V, m) - (0 if small else 1)):
        raise ValueError(f"k must lie in [1, {min(V, m) - (0 if small else 1)}] for a {V} x {m} matrix, got {k}")
    if small or k is None:
        dense = M if isinstance(M, np.ndarray) else (M.toarray() if sp.issparse(M) else M @ np.eye(m))
        u, s, vt = np.linalg.svd(np.asarray(dense, dtype=np.float64), full_matrices=False)
        k = len(s) if k is None else k
        return Spectrum(u[:, :k], s[:k], vt[:k])
    u, s, vt = svds(M, k=k, random_state=0)
    order = np.argsort(s)[::-1]
    return Spectrum(u[:, order], s[order], vt[order])


def support_spectrum(targets: NTPTargets, k: int | None = None, *, which: str = "s_tilde") -> Spectrum:
    """Top-k singular triplets of S~ ("s_tilde") or of the in-support log-odds L_in ("log_odds")."""
    if which == "s_tilde":
        return matrix_spectrum(support_operator(targets), k)
    if which == "log_odds":
        return matrix_spectrum(sparse_component(targets), k)
    raise ValueError(f"which must be 's_tilde' or 'log_odds', got {which!r} (for L_mm pass it to matrix_spectrum)")


def embedding_coordinates(X, k: int) -> np.ndarray:
    """(n, k) the rows of X (n, d) in X's own top-k left singular directions, scaled by the singular
    values: a rotation of X's columns (any W Q of a trained W) gives the same coordinates up to sign."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not np.all(np.isfinite(X)):
        raise ValueError(f"embeddings must be a finite (n, d) array, got shape {X.shape}")
    if not 1 <= k <= min(X.shape):
        raise ValueError(f"k must lie in [1, {min(X.shape)}] for {X.shape[0]} embeddings of dimension {X.shape[1]}, got {k}")
    u, s, _ = np.linalg.svd(X, full_matrices=False)
    return u[:, :k] * s[:k]


def orthant_clusters(X, k: int) -> np.ndarray:
    """(n,) cluster ids: rows of X with the same sign pattern on X's top-k singular directions share a
    cluster (at most 2^k clusters; flipping a direction's sign relabels, it does not regroup)."""
    bits = (embedding_coordinates(X, k) > 0).astype(np.int64)  # (n, k)
    codes = bits @ (1 << np.arange(k))
    return np.unique(codes, return_inverse=True)[1]


def kmeans_clusters(X, k: int, n_clusters: int, *, seed: int = 0) -> np.ndarray:
    """(n,) k-means (sklearn, 10 restarts) on the rows of X in its top-k singular coordinates."""
    coords = embedding_coordinates(X, k)
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(coords)


@dataclass(frozen=True)
class ClusterScores:
    nmi: float  # normalized mutual information with the ground truth (sklearn, arithmetic mean)
    ari: float  # adjusted Rand index
    nmi_shuffled: float  # mean NMI against shuffled ground-truth labels: the chance level
    nmi_shuffled_std: float
    p_value: float  # share of shuffles with NMI >= the observed one (one-sided, with the +1 rule)
    clusters: int


def cluster_scores(pred, truth, *, shuffles: int = 200, seed: int = 0) -> ClusterScores:
    """NMI and ARI of a clustering against ground-truth labels, with a shuffled-label baseline."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 1 or len(pred) < 2:
        raise ValueError(f"pred and truth must be equal-length 1-D label arrays (n >= 2), got {pred.shape} and {truth.shape}")
    rng = np.random.default_rng(seed)
    nmi = normalized_mutual_info_score(truth, pred)
    null = np.array([normalized_mutual_info_score(rng.permutation(truth), pred) for _ in range(shuffles)])
    return ClusterScores(nmi=float(nmi), ari=float(adjusted_rand_score(truth, pred)), nmi_shuffled=float(null.mean()),
                         nmi_shuffled_std=float(null.std()), p_value=float((1 + (null >= nmi).sum()) / (1 + shuffles)),
                         clusters=int(len(np.unique(pred))))


def spectral_projections(W, H, spectrum: Spectrum) -> np.ndarray:
    """(k,) u_i^T W H v_i: the logits W H (V, m) along each singular pair of the spectrum."""
    WU = np.asarray(W, dtype=np.float64).T @ spectrum.U  # (d, k)
    HV = np.asarray(H, dtype=np.float64) @ spectrum.Vt.T  # (d, k)
    return (WU * HV).sum(0)


def half_times(steps, curves) -> np.ndarray:
    """(k,) for each curve (a column of ``curves`` (T, k) over ``steps`` (T,)), the first step at which
    it reaches half its final value (NaN for a curve whose final value is not positive)."""
    steps, curves = np.asarray(steps), np.asarray(curves, dtype=np.float64)
    if curves.ndim != 2 or len(steps) != len(curves):
        raise ValueError(f"curves must be (T, k) over T steps, got {curves.shape} for {len(steps)} steps")
    out = np.full(curves.shape[1], math.nan)
    for i, curve in enumerate(curves.T):
        if curve[-1] > 0:
            out[i] = steps[np.argmax(curve >= curve[-1] / 2)]
    return out


@dataclass(frozen=True)
class LearningOrder:
    half_times: np.ndarray  # (k,) step at which each direction reached half its final size
    singular_values: np.ndarray  # (k,)
    spearman: float  # rank correlation of singular value and half time: negative = larger learned first
    p_value: float


def learning_order(steps, curves, singular_values) -> LearningOrder:
    """Which singular directions training learns first (Zhao & Thrampoulidis: larger first)."""
    t = half_times(steps, curves)
    s = np.asarray(singular_values, dtype=np.float64)
    ok = np.isfinite(t)
    rho, p = spearmanr(s[ok], t[ok]) if ok.sum() >= 3 else (math.nan, math.nan)
    return LearningOrder(t, s, float(rho), float(p))


@dataclass(frozen=True)
class AttributeInputs:
    """Inputs with latent attributes, each its own class (Zhao, Papadimitriou & Thrampoulidis 2026)."""

    X: np.ndarray  # (p, n) input encodings: one-hot of each attribute's value, plus a scaled identity
    attributes: np.ndarray  # (n, A) each input's attribute values
    shared: np.ndarray  # (n, n) how many attributes two inputs share


def attribute_inputs(sizes=(3, 4), *, identity: float = 0.5) -> AttributeInputs:
    """Every combination of A attributes with sizes[a] values: n = prod(sizes) inputs, encoded by the
    one-hots of their values and ``identity`` times their own one-hot (what tells them apart)."""
    sizes = tuple(int(v) for v in sizes)
    if len(sizes) < 1 or min(sizes) < 2 or not identity > 0:
        raise ValueError(f"need attributes of >= 2 values each and identity > 0, got sizes {sizes}, identity {identity}")
    attrs = np.array(np.meshgrid(*[np.arange(v) for v in sizes], indexing="ij")).reshape(len(sizes), -1).T  # (n, A)
    n = len(attrs)
    blocks = [np.eye(v)[attrs[:, a]].T for a, v in enumerate(sizes)] + [identity * np.eye(n)]
    shared = (attrs[:, None, :] == attrs[None, :, :]).sum(-1)
    return AttributeInputs(np.vstack(blocks), attrs, shared)


def attribute_gap(features, shared) -> float:
    """Mean cosine of feature columns (d, n) over pairs of inputs that share an attribute, minus that over
    pairs that share none: > 0 while features cluster by attribute, 0 at a simplex ETF."""
    cos = cosine_matrix(np.asarray(features, dtype=np.float64).T)
    off = ~np.eye(len(cos), dtype=bool)
    some, none = off & (np.asarray(shared) > 0), off & (np.asarray(shared) == 0)
    if not some.any() or not none.any():
        raise ValueError("attribute_gap needs pairs that share an attribute and pairs that share none")
    return float(cos[some].mean() - cos[none].mean())
