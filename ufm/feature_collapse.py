"""Feature collapse (Laurent, von Brecht, Bresson, ICLR 2024): words that play the same role get the
same representation, and LayerNorm is what makes it hold under unequal word frequencies.

Data model (SCIENCE.md section 4): n_c concepts; n_w words, s_c = n_w / n_c per concept, word
(alpha, beta) has index alpha s_c + beta; K latent variables z_k = (alpha_1..alpha_L) drawn uniformly
from [n_c]^L; a sentence of class k draws, at each position l, the word beta ~ mu of concept z_kl,
with mu uniform or Zipfian (mu_beta proportional to 1/beta, beta = 1..s_c).
Network: h(x) = U concat_l phi(w_{x_l}), W (n_w, d), U (K, L d) without bias; phi the identity or a
LayerNorm without affine parameters; mean cross-entropy + (lambda/2)(||W||^2 + ||U||^2) (with
LayerNorm only U is regularized, as in the paper); plain minibatch SGD.
The measures treat words as samples and concepts as classes, so the same ClassStats and metrics
judge them as any other geometry.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats as sps

from .validate import check_positive_int, resolve_device
from .metrics import collapse_metrics
from .stats import stats_from_features
from .threads import threads_for


@dataclass(frozen=True)
class FeatureTask:
    num_concepts: int = 3  # n_c
    num_words: int = 1200  # n_w (divisible by n_c)
    length: int = 15  # L, positions per sentence
    num_latents: int = 1000  # K classes
    train_per_latent: int = 5  # n_spl
    test_per_latent: int = 5
    frequencies: str = "uniform"  # uniform | zipf
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self.num_concepts, "num_concepts")
        check_positive_int(self.num_words, "num_words")
        if self.num_words % self.num_concepts:
            raise ValueError(f"num_words ({self.num_words}) must be divisible by num_concepts ({self.num_concepts})")
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f"length (L) must be an integer >= 1, got {self.length!r}")
        check_positive_int(self.num_latents, "num_latents")
        check_positive_int(self.train_per_latent, "train_per_latent")
        check_positive_int(self.test_per_latent, "test_per_latent")
        if self.frequencies not in ("uniform", "zipf"):
            raise ValueError(f"unknown frequency law {self.frequencies!r}: use 'uniform' or 'zipf'")

    @property
    def words_per_concept(self) -> int:
        return self.num_words // self.num_concepts


@dataclass(frozen=True, eq=False)
class FeatureData:
    task: FeatureTask
    latents: np.ndarray  # (K, L) concept of each position of each latent
    mu: np.ndarray  # (s_c,) word frequencies within a concept
    train_x: np.ndarray  # (K n_spl, L) word ids
    train_y: np.ndarray  # (K n_spl,) latent ids
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def concept_of_word(self) -> np.ndarray:
        """(n_w,) concept alpha of word alpha s_c + beta."""
        return np.arange(self.task.num_words) // self.task.words_per_concept

    @property
    def rank_of_word(self) -> np.ndarray:
        """(n_w,) beta: the frequency rank of a word inside its concept (0 = most frequent)."""
        return np.arange(self.task.num_words) % self.task.words_per_concept


def word_frequencies(task: FeatureTask) -> np.ndarray:
    s = task.words_per_concept
    mu = np.ones(s) if task.frequencies == "uniform" else 1.0 / np.arange(1, s + 1)
    return mu / mu.sum()


def make_task(task: FeatureTask) -> FeatureData:
    """Latents, and train / test sentences drawn from them (seeded)."""
    rng = np.random.default_rng(task.seed)
    latents = rng.integers(0, task.num_concepts, size=(task.num_latents, task.length))
    mu = word_frequencies(task)

    def sentences(per_latent: int):
        y = np.repeat(np.arange(task.num_latents), per_latent)
        beta = rng.choice(len(mu), size=(len(y), task.length), p=mu)
        return latents[y] * task.words_per_concept + beta, y

    train_x, train_y = sentences(task.train_per_latent)
    test_x, test_y = sentences(task.test_per_latent)
    return FeatureData(task, latents, mu, train_x, train_y, test_x, test_y)


class FeatureCollapseNet(torch.nn.Module):
    """h(x) = U concat_l phi(w_{x_l}): free word embeddings, optional LayerNorm, a linear classifier."""

    def __init__(self, num_words: int, dim: int, num_classes: int, length: int, *, layernorm: bool,
                 init_scale: float = 1e-3):
        super().__init__()
        # PyTorch's default initializations, scaled down (the paper divides them by 1000).
        self.W = torch.nn.Parameter(torch.randn(num_words, dim) * init_scale)
        bound = 1.0 / math.sqrt(length * dim)
        self.U = torch.nn.Parameter(torch.empty(num_classes, length * dim).uniform_(-bound, bound) * init_scale)
        self.layernorm = layernorm

    def embed(self, words: torch.Tensor | None = None) -> torch.Tensor:
        """phi(w) of the given words (all words by default): (n, d)."""
        w = self.W if words is None else self.W[words]
        return torch.nn.functional.layer_norm(w, (w.shape[-1],)) if self.layernorm else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, L) word ids -> logits (B, K)
        return self.embed(x).flatten(1) @ self.U.T


@dataclass
class FeatureCollapseResult:
    task: FeatureTask
    config: dict[str, Any]
    W: torch.Tensor  # (n_w, d) raw embeddings
    U: torch.Tensor  # (K, L d)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(task=asdict(self.task), config=self.config, history=self.history, seconds=self.seconds)


def feature_measures(embeddings: np.ndarray, classes: np.ndarray, frequencies: np.ndarray) -> dict[str, float]:
    """Words as samples, their roles (concepts, synonym groups) as classes: NC1 / CDNV within a role,
    the angle between role means (cos -> -1/(n-1) for a simplex), and how embedding norms follow
    word frequency (Spearman). embeddings (n_w, d), classes (n_w,), frequencies (n_w,)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    m = collapse_metrics(stats_from_features(emb, classes, int(np.max(classes)) + 1))
    norms = np.linalg.norm(emb, axis=1)
    rho = sps.spearmanr(frequencies, norms)[0] if np.ptp(frequencies) > 0 else math.nan
    return dict(cdnv=m.cdnv_mean, nc1=m.nc1_trace_ratio, concept_cos=m.cos_mean, etf_error=m.etf_error,
                norm_mean=float(norms.mean()), norm_cov=float(norms.std() / norms.mean()),
                norm_freq_spearman=float(rho))


@torch.no_grad()
def accuracy(model: FeatureCollapseNet, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).double().mean())


def train_feature_collapse(data: FeatureData, dim: int, *, layernorm: bool, epochs: int, lr: float = 0.1,
                           batch_size: int = 100, weight_decay: float = 1e-3, device: str = "auto",
                           seed: int = 0, eval_every: int = 50, progress: bool = False) -> FeatureCollapseResult:
    """Plain minibatch SGD on mean CE + ridge; the history holds accuracies and feature measures."""
    from tqdm.auto import tqdm

    check_positive_int(dim, "dim")
    check_positive_int(epochs, "epochs")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    task = data.task
    model = FeatureCollapseNet(task.num_words, dim, task.num_latents, task.length, layernorm=layernorm).to(dev)
    tx, ty = torch.as_tensor(data.train_x, device=dev), torch.as_tensor(data.train_y, device=dev)
    vx, vy = torch.as_tensor(data.test_x, device=dev), torch.as_tensor(data.test_y, device=dev)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()

    def record(epoch: int, loss: float) -> None:
        with torch.no_grad():
            row = dict(epoch=epoch, loss=loss, train_acc=accuracy(model, tx, ty), test_acc=accuracy(model, vx, vy))
            roles, freq = data.concept_of_word, data.mu[data.rank_of_word]
            row.update({f"raw_{k}": v for k, v in feature_measures(model.W.cpu().numpy(), roles, freq).items()})
            if layernorm:
                row.update({f"ln_{k}": v for k, v in feature_measures(model.embed().cpu().numpy(), roles, freq).items()})
        history.append(row)

    record(0, math.nan)
    per_step = batch_size * task.num_latents * task.length * dim  # multiply-adds of the classifier
    with threads_for(per_step if dev.type == "cpu" else 0):
        for epoch in tqdm(range(1, epochs + 1), disable=not progress, desc="feature collapse"):
            order = torch.randperm(len(ty), generator=gen).to(dev)
            total = 0.0
            for i in range(0, len(ty), batch_size):
                idx = order[i:i + batch_size]
                ce = torch.nn.functional.cross_entropy(model(tx[idx]), ty[idx])
                ridge = model.U.square().sum() + (0.0 if layernorm else model.W.square().sum())
                loss = ce + 0.5 * weight_decay * ridge
                model.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():
                    for p in (model.W, model.U):
                        p -= lr * p.grad
                total += float(ce.detach()) * len(idx)
            if epoch % eval_every == 0 or epoch == epochs:
                record(epoch, total / len(ty))
    config = dict(dim=dim, layernorm=layernorm, epochs=epochs, lr=lr, batch_size=batch_size,
                  weight_decay=weight_decay, seed=seed)
    return FeatureCollapseResult(task, config, model.W.detach().cpu(), model.U.detach().cpu(), history,
                                 time.perf_counter() - start)


def type_one_constants(task: FeatureTask, weight_decay: float) -> tuple[float, float]:
    """Predicted norms (r, rho) of type-I collapse: ||w|| = r, ||u_kl|| = rho (SCIENCE.md 4)."""
    from scipy.optimize import minimize_scalar

    nc, L, K, nw = task.num_concepts, task.length, task.num_latents, task.num_words
    a = nc / (nc - 1)

    def F(t):
        return math.log1p(K / nc**L * ((1 + (nc - 1) * math.exp(-a * t)) ** L - 1)) + weight_decay * t * math.sqrt(K * L * nw)

    t_star = minimize_scalar(F, bounds=(1e-9, 1e3), method="bounded", options=dict(xatol=1e-12)).x
    return math.sqrt(t_star) * (K * L / nw) ** 0.25, math.sqrt(t_star) * (nw / (K * L)) ** 0.25


def type_two_rho(task: FeatureTask, weight_decay: float, dim: int) -> float:
    """Predicted ||u_kl|| = rho* of type-II collapse (LayerNorm: phi(w) = sqrt(d) f_alpha for any mu):
    rho* = argmin log(1 + sum_{s=1..L} c_s e^(-a s sqrt(d) rho)) + (lambda/2) K L rho^2, with
    c_s = (K / n_c^L) C(L, s) (n_c - 1)^s the expected number of latents differing from a given one
    in s positions, a = n_c/(n_c-1) (SCIENCE.md 4; Laurent, von Brecht, Bresson, ICLR 2024)."""
    from scipy.optimize import minimize_scalar

    check_positive_int(dim, "dim")
    nc, L, K = task.num_concepts, task.length, task.num_latents
    a, root_d = nc / (nc - 1), math.sqrt(dim)
    c = np.array([K / nc**L * math.comb(L, s) * (nc - 1) ** s for s in range(1, L + 1)])  # (L,)
    s = np.arange(1, L + 1)

    def G(rho):
        return math.log1p(float((c * np.exp(-a * s * root_d * rho)).sum())) + 0.5 * weight_decay * K * L * rho**2

    return float(minimize_scalar(G, bounds=(0.0, 10.0), method="bounded", options=dict(xatol=1e-12)).x)
