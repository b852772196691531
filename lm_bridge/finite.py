"""A small causal transformer trained on a finite set of contexts, where the NTP theory applies.

Zhao et al. (COLM 2024) validated the UFM's predictions on a real model trained to the entropy bound on
a fixed set of contexts: each distinct context j (n words, frequency pi_j, next-word distribution p_j)
is one sequence, the loss is the pi-weighted soft-label CE of its last position, full batch. This is
that model: token embeddings, optional learned positions, Llama-style blocks (RMSNorm, causal
multi-head attention, SwiGLU), a final RMSNorm and an untied unembedding W (V, d). Its last-position
hidden states after the final norm are the context features H (d, m) that meet W.

The network is a feature model of the UFM family (``Transformer``), trained by the family's one loop
(ufm.fit.fit: AdamW, full batch, the same GeometryMonitor as the simulator). Training is seeded and
resumable: ``checkpoint`` is rewritten atomically every ``checkpoint_every`` steps, and a run with the
same configuration and data continues from it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from ufm.features import FeatureModel
from ufm.fit import FitOptions, fit
from ufm.losses import Batch, CrossEntropy
from ufm.model import TargetTensors

from .words import WordContexts


@dataclass(frozen=True)
class FiniteLMConfig:
    dim: int = 128  # d
    layers: int = 4
    heads: int = 4
    positional: bool = False  # learned absolute positions (Zhao et al.: none)
    lr: float = 1e-3  # AdamW, constant
    weight_decay: float = 1e-6
    steps: int = 3000  # full-batch epochs
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("dim", 1), ("layers", 1), ("heads", 1), ("steps", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be >= {low} (an integer), got {value!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be a multiple of heads={self.heads}")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_norm, self.ffn_norm = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        hidden = 64 * math.ceil(8 * dim / 3 / 64)  # SwiGLU's width, as in Llama
        self.gate_up, self.down = nn.Linear(dim, 2 * hidden, bias=False), nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, n, d)
        B, n, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(B, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, n, d/heads)
        x = x + self.out(a.transpose(1, 2).reshape(B, n, d))
        gate, up = self.gate_up(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.down(nn.functional.silu(gate) * up)


class FiniteContextLM(nn.Module):
    """Causal transformer over word ids; ``W`` (V, d) is the unembedding (the UFM's word embeddings)."""

    def __init__(self, vocab_size: int, context_length: int, config: FiniteLMConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, config.dim)
        self.pos = nn.Parameter(torch.zeros(context_length, config.dim)) if config.positional else None
        self.blocks = nn.ModuleList(_Block(config.dim, config.heads) for _ in range(config.layers))
        self.norm = nn.RMSNorm(config.dim)
        self.W = nn.Parameter(torch.randn(vocab_size, config.dim) / math.sqrt(config.dim))

    def layer_states(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Last-position hidden states, (m, d) each: after the embedding, after every block, and after
        the final norm (the features that meet W)."""
        x = self.embed(tokens)  # (m, n, d)
        if self.pos is not None:
            x = x + self.pos
        states = [x[:, -1]]
        for block in self.blocks:
            x = block(x)
            states.append(x[:, -1])
        return states + [self.norm(x[:, -1])]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The context features H (d, m): final-norm hidden states of each context's last position."""
        return self.layer_states(tokens)[-1].T


def finite_lm_loss(model: FiniteContextLM, tokens: torch.Tensor, data: TargetTensors) -> torch.Tensor:
    """sum_j pi_j [lse(W h_j) - p_j . W h_j]: the UFM's soft-label CE (the loss fit trains the transformer
    with), of the transformer's features."""
    H = model(tokens).to(data.pi.dtype)
    return CrossEntropy()(model.W.to(data.pi.dtype), H, None, Batch(*data.select(None)), chunk_entries=None)


@dataclass(frozen=True)
class Transformer(FeatureModel):
    """The features of a FiniteContextLM: its final-norm last-position states of every context (m, n word
    ids in ``contexts``), every network parameter trained (AdamW decays them; no ridge in the objective).
    The classifier starts at the network's own unembedding W. ``data`` identifies the contexts in a
    checkpoint."""

    config: FiniteLMConfig
    contexts: np.ndarray = field(repr=False)  # (m, n) word ids
    vocab_size: int = 0
    data: dict = field(default_factory=dict, repr=False)
    name: ClassVar[str] = "transformer"

    def check(self, dim: int, num_contexts: int) -> None:
        if dim != self.config.dim or len(self.contexts) != num_contexts:
            raise ValueError(f"the transformer has d = {self.config.dim} and {len(self.contexts)} contexts; the run "
                             f"asks for d = {dim} and {num_contexts}")
        return None

    def build(self, H, layers):
        # Drawn from the seed alone (not the run's generator), as the network was before it joined fit.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            lm = FiniteContextLM(self.vocab_size, self.contexts.shape[1], self.config)
        return _TransformerFeatures(self, lm, torch.as_tensor(self.contexts))

    def flops(self, batch: int) -> int:
        return batch * self.contexts.shape[1] * self.config.dim ** 2 * self.config.layers * 12

    def describe(self) -> dict:
        return dict(name=self.name, **asdict(self.config), data=self.data)


class _TransformerFeatures(nn.Module):
    """The Features interface of ufm.features over a FiniteContextLM (its W is the classifier's)."""

    def __init__(self, model: Transformer, lm: FiniteContextLM, tokens: torch.Tensor):
        super().__init__()
        self.model, self.lm = model, lm
        self.register_buffer("tokens", tokens)

    @property
    def H(self) -> torch.Tensor:
        """The features the classifier meets (d, m): ||H|| in the history is theirs."""
        return self.features()

    @property
    def layers(self) -> list:
        return []

    def features(self, batch=None) -> torch.Tensor:
        tokens = self.tokens if batch is None else self.tokens[batch]
        return self.lm(tokens).to(torch.float64)

    def layer_features(self, batch=None) -> list[torch.Tensor]:
        tokens = self.tokens if batch is None else self.tokens[batch]
        return [s.T for s in self.lm.layer_states(tokens)]

    def trained(self) -> list[torch.Tensor]:
        return [p for name, p in self.lm.named_parameters() if name != "W"]

    def initial_words(self, drawn: torch.Tensor) -> torch.Tensor:
        return self.lm.W.detach().to(drawn.dtype).clone()

    def penalty_terms(self, weight_decay, feature_decay, batch, scale) -> list:
        return []


@dataclass
class FiniteLMRun:
    model: FiniteContextLM  # on the CPU, its W the trained unembedding
    config: FiniteLMConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None  # the step a checkpoint resumed the run at, if one did

    def series(self, key: str) -> np.ndarray:
        return np.array([row.get(key, np.nan) for row in self.history], dtype=np.float64)

    def steps(self) -> np.ndarray:
        return self.series("step").astype(np.int64)

    @torch.no_grad()
    def features(self, data: WordContexts) -> np.ndarray:
        """H (d, m) of the trained model, float64."""
        return self.model(torch.as_tensor(data.contexts)).double().numpy()


def train_finite_lm(data: WordContexts, config: FiniteLMConfig = FiniteLMConfig(), *, device: str = "auto",
                    snapshots: int | list[int] = 20, l_mm: np.ndarray | None = None,
                    observe: Callable[[np.ndarray, np.ndarray], dict[str, Any]] | None = None,
                    layer_observe: Callable[[list[np.ndarray]], dict[str, Any]] | None = None,
                    checkpoint: str | Path | None = None, checkpoint_every: int = 500,
                    progress: bool = False) -> FiniteLMRun:
    """Train on every context of ``data`` at once (AdamW, constant lr, full batch) through ufm.fit; the
    history has, at each snapshot, the monitor's quantities of (W, H) (CE - H, ||P_F(L) - L_in||, cos
    with L_mm, subspace ratio, NC metrics, ``observe(W, H)``), ||W||, ||H||, and ``layer_observe`` of
    every layer's last-position states (d, m)."""
    features = Transformer(config, np.asarray(data.contexts), data.targets.vocab_size, data.describe())
    options = FitOptions(dim=config.dim, weight_decay=config.weight_decay, steps=config.steps, lr=config.lr,
                         optimizer="adamw", lr_schedule="constant", seed=config.seed, chunk_entries=None)
    r = fit(data.targets, options, loss=CrossEntropy(), features=features, device=device, snapshots=snapshots,
            l_mm=l_mm, track_metrics=True, track_subspace=True, observe=observe, layer_observe=layer_observe,
            checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=progress)
    lm = r.model.feature_module.lm
    lm.W = nn.Parameter(r.W.to(lm.W.dtype), requires_grad=False)
    return FiniteLMRun(lm, config, r.history, r.seconds, r.resumed_from)
