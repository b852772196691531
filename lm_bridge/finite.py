"""A small causal transformer trained on a finite set of contexts, where the NTP theory applies.

Zhao et al. (COLM 2024) validated the UFM's predictions on a real model trained to the entropy bound on
a fixed set of contexts: each distinct context j (n words, frequency pi_j, next-word distribution p_j)
is one sequence, the loss is the pi-weighted soft-label CE of its last position, full batch. This is
that model: token embeddings, optional learned positions, Llama-style blocks (RMSNorm, causal
multi-head attention, SwiGLU), a final RMSNorm and an untied unembedding W (V, d). Its last-position
hidden states after the final norm are the context features H (d, m) that meet W, so the UFM's
monitor (ufm.fit.GeometryMonitor) measures it with the same code as the simulator.

Training is seeded and resumable: ``checkpoint`` is rewritten atomically every ``checkpoint_every``
steps with the model, the optimizer, the step and the history, and a run with the same configuration
continues from it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ufm._validate import resolve_device
from ufm.io import atomic_write
from ufm.model import TargetTensors, soft_label_ce
from ufm.threads import threads_for
from ufm.fit import GeometryMonitor, snapshot_steps

from .train import load_state
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
    """sum_j pi_j [lse(W h_j) - p_j . W h_j]: the UFM's soft-label CE, of the transformer's features."""
    H = model(tokens).to(data.pi.dtype)
    return soft_label_ce(model.W.to(data.pi.dtype), H, None, data.pi, data.tokens, data.contexts, data.probs,
                         chunk_entries=None)


@dataclass
class FiniteLMRun:
    model: FiniteContextLM  # on the CPU
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
    """Train on every context of ``data`` at once; the history has, at each snapshot, the UFM monitor's
    quantities of (W, H) (CE - H, ||P_F(L) - L_in||, cos with L_mm, subspace ratio, NC metrics,
    ``observe(W, H)``), ||W||, ||H||, and ``layer_observe`` of every layer's last-position states (d, m)."""
    dev = resolve_device(device)
    torch.manual_seed(config.seed)
    model = FiniteContextLM(data.targets.vocab_size, data.contexts.shape[1], config).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    tokens = torch.as_tensor(data.contexts, device=dev)
    targets = TargetTensors(data.targets, dev, torch.float64)
    monitor = GeometryMonitor(targets, l_mm, chunk_entries=None)
    marks = set(snapshot_steps(config.steps, snapshots) if isinstance(snapshots, int) else [*snapshots, 0, config.steps])
    history: list[dict[str, Any]] = []
    start_step = 0
    path = Path(checkpoint) if checkpoint is not None else None
    resumed_from = None
    if path is not None and path.exists():
        state = load_state(path, ("model", "optimizer", "step", "history", "config", "describe", "rng"), dev)
        if state["config"] != asdict(config) or state["describe"] != data.describe():
            raise ValueError(f"{path} holds a run of another configuration or data; remove it or use another path")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_step, history = state["step"], state["history"]
        resumed_from = start_step
        torch.set_rng_state(state["rng"])
    start = time.perf_counter()
    work = data.targets.num_contexts * data.contexts.shape[1] * config.dim ** 2 * config.layers * 12
    with threads_for(work if dev.type == "cpu" else 0):
        for step in tqdm(range(start_step, config.steps + 1), disable=not progress, desc="transformer"):
            # The checkpoint at a marked step already holds that step's record: a resumed run must
            # not record it twice.
            if step in marks and not (history and history[-1]["step"] == step):
                history.append(_record(step, model, tokens, monitor, observe, layer_observe))
            if path is not None and step > start_step and (step % checkpoint_every == 0 or step == config.steps):
                _save(path, model, opt, step, history, config, data)
            if step == config.steps:
                break
            opt.zero_grad(set_to_none=True)
            finite_lm_loss(model, tokens, targets).backward()
            opt.step()
    return FiniteLMRun(model.cpu(), config, history, time.perf_counter() - start, resumed_from)


@torch.no_grad()
def _record(step, model, tokens, monitor: GeometryMonitor, observe, layer_observe) -> dict[str, Any]:
    model.eval()
    states = model.layer_states(tokens)
    H = states[-1].T
    row = dict(step=step, w_norm=float(model.W.norm()), h_norm=float(H.norm()))
    row |= monitor.measure(model.W, H, metrics=True, subspace=True, observe=observe)
    if layer_observe is not None:
        row |= layer_observe([s.T.double().cpu().numpy() for s in states])
    model.train()
    return row


def _save(path: Path, model, opt, step: int, history, config: FiniteLMConfig, data: WordContexts) -> None:
    state = dict(model=model.state_dict(), optimizer=opt.state_dict(), step=step, history=history,
                 config=asdict(config), describe=data.describe(), rng=torch.get_rng_state())
    atomic_write(path, lambda tmp: torch.save(state, tmp))
