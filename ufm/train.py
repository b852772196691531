"""Training the NTP unconstrained-features model (Zhao et al., COLM 2024), on CPU or CUDA.

    min_{W, H}  CE(W H) + (lambda / 2) (||W||_F^2 + ||H||_F^2)

with CE the pi-weighted soft-label cross-entropy of ufm.model (a mean over contexts when pi is
uniform) and lambda = ``weight_decay`` (PyTorch's convention: the gradient of the ridge is lambda W).
With ``layernorm=True`` the features are LN(h_j) and only W is regularized (Laurent et al. 2024).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ._validate import check_positive_int, resolve_device
from .metrics import collapse_metrics
from .model import CHUNK_ENTRIES, FreeFeatures, TargetTensors, layer_norm_columns, soft_label_ce
from .stats import ClassStats, StatsAccumulator
from .targets import NTPTargets
from .theory import sparse_component_values, subspace_collapse
from .threads import threads_for

Optimizer = Literal["gd", "ngd", "adam"]
# gd's default (None) is a backtracking line search: a fixed step that converges depends on the
# curvature, which grows with ||W|| and ||H|| (lr 20 and 10 diverge on SCIENCE.md's V=8, m=10 example).
DEFAULT_LR = {"gd": None, "ngd": 0.5, "adam": 0.05}
_ARMIJO = 0.5  # sufficient decrease: f(x - t g) <= f(x) - _ARMIJO t ||g||^2
_MAX_STEP = 1e4  # a line-search step never grows past this


@dataclass(frozen=True)
class TrainConfig:
    dim: int  # d, the width of W's rows and H's columns
    weight_decay: float  # lambda in (lambda/2)(||W||^2 + ||H||^2)
    steps: int  # optimizer steps (full-batch or minibatch)
    lr: float | None  # learning rate (ngd: the length of each step; gd None: backtracking line search)
    optimizer: str = "adam"  # gd | ngd (normalized GD) | adam (AMSGrad variant)
    lr_schedule: str = "cosine"  # constant | cosine (decays to lr * 1e-3 at the last step)
    bias: bool = False  # a free bias b (V,) in the logits, not regularized
    layernorm: bool = False  # features LN(h_j); H is then not regularized
    word_layernorm: bool = False  # word embeddings LN(w_z); W is then not regularized
    init_scale: float = 0.1  # std of the Gaussian initialization of W and H
    batch_size: int | None = None  # contexts per step; None: full batch
    dtype: str = "float64"  # parameters' dtype
    seed: int = 0  # initialization and minibatch order
    chunk_entries: int | None = CHUNK_ENTRIES  # largest logits chunk in the CE; None: dense logits

    def __post_init__(self) -> None:
        check_positive_int(self.dim, "dim")
        check_positive_int(self.steps, "steps", minimum=0)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in DEFAULT_LR:
            raise ValueError(f"optimizer must be one of {', '.join(DEFAULT_LR)}, got {self.optimizer!r}")
        if self.lr is None and self.optimizer != "gd":
            raise ValueError(f"lr None (a line search) is for optimizer 'gd' only, not {self.optimizer!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")


@dataclass
class UFMResult:
    """Trained factors and the trajectory. W (V, d), H (d, m), bias (V,) or None, on the CPU."""

    W: torch.Tensor
    H: torch.Tensor
    bias: torch.Tensor | None
    targets: NTPTargets
    config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def features(self) -> torch.Tensor:
        """The features that meet W: H, or LN(H) with layernorm. (d, m)"""
        return layer_norm_columns(self.H) if self.config.layernorm else self.H

    def words(self) -> torch.Tensor:
        """The word embeddings that meet the features: W, or LN of its rows with word_layernorm. (V, d)"""
        return layer_norm_columns(self.W.T).T if self.config.word_layernorm else self.W

    def logits(self) -> np.ndarray:
        """L = W H (+ b) as a dense (V, m) array (small problems)."""
        L = self.words() @ self.features()
        if self.bias is not None:
            L = L + self.bias[:, None]
        return L.numpy()

    def class_stats(self) -> ClassStats:
        """Context j counts toward class z with weight pi_j p_jz: the simulator measured as a corpus."""
        return ufm_class_stats(self.features(), self.targets)

    def metrics(self, **options):
        return collapse_metrics(self.class_stats(), self.words(), **options)

    def series(self, key: str) -> np.ndarray:
        """One quantity of the history against ``self.steps()``."""
        return np.array([row.get(key, np.nan) for row in self.history], dtype=np.float64)

    def steps(self) -> np.ndarray:
        return self.series("step").astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return dict(config=asdict(self.config), targets=self.targets.describe(), history=self.history,
                    seconds=self.seconds)


def ufm_class_stats(features: torch.Tensor, targets: NTPTargets) -> ClassStats:
    """ClassStats of context features (d, m): sample (h_j, z) with weight pi_j p_jz per non-zero."""
    acc = StatsAccumulator(targets.vocab_size, features.shape[0], device=features.device)
    cols = torch.as_tensor(targets.contexts, device=features.device)
    weights = torch.as_tensor(targets.pi[targets.contexts] * targets.probs, device=features.device)
    acc.update(features.T[cols], torch.as_tensor(targets.tokens, device=features.device), weights)
    return acc.compute(metadata={"source": "ufm", **targets.describe()})


def snapshot_steps(steps: int, count: int) -> list[int]:
    """0, the last step, and ``count`` steps log-spaced in between."""
    inner = np.unique(np.round(np.logspace(0, math.log10(max(steps, 1)), count)).astype(int))
    return sorted({0, steps, *inner[inner <= steps].tolist()})


def train_ufm(
    targets: NTPTargets,
    dim: int,
    *,
    weight_decay: float,
    steps: int,
    lr: float | None = None,
    optimizer: Optimizer = "adam",
    lr_schedule: str = "cosine",
    bias: bool = False,
    layernorm: bool = False,
    word_layernorm: bool = False,
    init_scale: float = 0.1,
    batch_size: int | None = None,
    dtype: str = "float64",
    chunk_entries: int | None = CHUNK_ENTRIES,
    device: str | torch.device = "auto",
    seed: int = 0,
    snapshots: int | list[int] = 20,
    l_mm: np.ndarray | None = None,
    track_metrics: bool = False,
    track_subspace: bool = False,
    observe: Callable[[np.ndarray, np.ndarray], dict[str, Any]] | None = None,
    progress: bool = False,
) -> UFMResult:
    """Minimize CE(W H) + (lambda/2)(||W||^2 + ||H||^2) over free W (V, d) and H (d, m).

    snapshots: a count of log-spaced steps, or the steps themselves, at which the history records
    the objective, CE - H (H the entropy bound), ||W||_F, ||H||_F, ||P_F(L_t) - L_in||_F and, with
    ``l_mm`` (V, m), cos(P_Fperp L_t, L_mm) and the distance of L_t / ||L_t|| to L_mm / ||L_mm||;
    ``track_metrics`` adds the collapse metrics of ``class_stats()``, ``track_subspace`` the
    same-support collapse ratio (``theory.subspace_collapse``: the ratio, the unprojected ratio and
    the rank of W it used), and ``observe(W, F)`` (numpy (V, d) and (d, m)) whatever it returns. The defaults reach a simplex ETF on balanced one-hot targets.
    """
    if not isinstance(targets, NTPTargets):
        raise TypeError(f"targets must be NTPTargets, got {type(targets).__name__}")
    config = TrainConfig(
        dim=dim, weight_decay=float(weight_decay), steps=steps, lr=_default_lr(lr, optimizer),
        optimizer=optimizer, lr_schedule=lr_schedule, bias=bias, layernorm=layernorm,
        word_layernorm=word_layernorm, init_scale=init_scale, batch_size=batch_size, dtype=dtype, seed=seed, chunk_entries=chunk_entries,
    )
    if l_mm is not None and np.shape(l_mm) != (targets.vocab_size, targets.num_contexts):
        raise ValueError(f"l_mm must have shape (V, m) = ({targets.vocab_size}, {targets.num_contexts}), "
                         f"got {np.shape(l_mm)}")
    dev = resolve_device(device)
    tdtype = getattr(torch, config.dtype)
    gen = torch.Generator().manual_seed(seed)
    model = FreeFeatures(targets.vocab_size, targets.num_contexts, dim, bias=bias, layernorm=layernorm,
                         word_layernorm=word_layernorm, init_scale=init_scale, generator=gen,
                         dtype=tdtype).to(dev)
    data = TargetTensors(targets, dev, tdtype)
    monitor = _Monitor(data, l_mm)
    marks = set(snapshot_steps(steps, snapshots) if isinstance(snapshots, int) else [*snapshots, 0, steps])
    m = targets.num_contexts
    batch_gen = torch.Generator(device="cpu").manual_seed(seed + 1)

    def objective(batch: torch.Tensor | None) -> torch.Tensor:
        pi_b, tok, col, prob = data.select(batch)
        ce = soft_label_ce(model.words(), model.features(batch), model.bias, pi_b, tok, col, prob,
                           chunk_entries=config.chunk_entries)
        scale = 1.0 if batch is None else m / len(batch)  # unbiased minibatch estimate
        ridge = 0.0 if word_layernorm else model.W.square().sum()
        if not layernorm:
            ridge = ridge + scale * (model.H if batch is None else model.H[:, batch]).square().sum()
        return scale * ce + 0.5 * config.weight_decay * ridge

    params = [p for p in model.parameters()]
    opt = _make_optimizer(config, params)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(total=steps, disable=not progress, desc="ufm", unit="step")
    line_step = 1.0  # the line search's last accepted step (gd with lr None)
    per_step = targets.vocab_size * dim * min(batch_size or m, m)  # multiply-adds of the logits
    with threads_for(per_step if dev.type == "cpu" else 0):
        for step in range(steps + 1):
            if step in marks:
                history.append(monitor.record(step, model, config, track_metrics, track_subspace, observe))
            if step == steps:
                break
            batch = None
            if batch_size is not None and batch_size < m:
                batch = torch.randperm(m, generator=batch_gen)[:batch_size].to(dev)
            line_step = _step(opt, config, params, lambda: objective(batch), step, line_step)
            bar.update(1)
    bar.close()
    if not math.isfinite(history[-1]["objective"]):
        raise FloatingPointError(
            f"training diverged (objective {history[-1]['objective']}); lower lr={config.lr} "
            "(or, for gd, leave lr=None for a line search)"
        )
    return UFMResult(
        W=model.W.detach().cpu(), H=model.H.detach().cpu(),
        bias=model.bias.detach().cpu() if model.bias is not None else None,
        targets=targets, config=config, history=history, seconds=time.perf_counter() - start,
    )


def _default_lr(lr: float | None, optimizer: str) -> float | None:
    if lr is not None:
        return float(lr)
    return DEFAULT_LR.get(optimizer, 1.0)


def _make_optimizer(config: TrainConfig, params: list[torch.Tensor]):
    if config.optimizer == "adam":
        # AMSGrad: Adam's second-moment estimate never shrinks, so once the gradients vanish its
        # steps vanish too. Plain Adam renormalizes vanishing gradients to lr-sized steps and
        # kicks a converged UFM away (the ETF error went from 6e-15 back to 2e-3 between steps 7k
        # and 14k; ||P_F L - L_in|| from 0.0085 to 0.37 and back).
        return torch.optim.Adam(params, lr=config.lr, amsgrad=True)
    return None  # gd and ngd are a line each, below


def _lr_at(config: TrainConfig, step: int) -> float:
    if config.lr_schedule == "constant" or config.steps <= 1:
        return config.lr
    floor = 1e-3
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / (config.steps - 1))))


def _step(opt, config: TrainConfig, params: list[torch.Tensor], closure_loss, step: int, line_step: float) -> float:
    """One optimizer step; returns the line search's step (gd with lr None), else ``line_step``."""
    for p in params:
        p.grad = None
    loss = closure_loss()
    loss.backward()
    if config.lr is None:
        return _backtracking_step(params, closure_loss, float(loss.detach()), line_step)
    lr = _lr_at(config, step)
    if opt is not None:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        return line_step
    with torch.no_grad():
        if config.optimizer == "ngd":
            norm = torch.sqrt(sum(p.grad.square().sum() for p in params))
            lr = lr / max(float(norm), 1e-300)
        for p in params:
            p.sub_(lr * p.grad)
    return line_step


@torch.no_grad()
def _backtracking_step(params: list[torch.Tensor], closure_loss, loss: float, last: float) -> float:
    """Gradient descent with Armijo backtracking: try twice the last step, halve until
    f(x - t g) <= f(x) - _ARMIJO t ||g||^2 (Nocedal & Wright, Algorithm 3.1)."""
    g2 = float(sum(p.grad.square().sum() for p in params))
    start = [p.detach().clone() for p in params]
    t = min(2.0 * last, _MAX_STEP)
    while True:
        for p, x in zip(params, start):
            torch.add(x, p.grad, alpha=-t, out=p)
        trial = float(closure_loss())
        if trial <= loss - _ARMIJO * t * g2 or t < 1e-12:
            return t
        t *= 0.5


class _Monitor:
    """What the history records at a snapshot; the theory targets are computed once, up front."""

    def __init__(self, data: TargetTensors, l_mm):
        self.targets = targets = data.targets
        self.data = data
        device, dtype = data.probs.device, data.probs.dtype
        self.l_in = torch.as_tensor(sparse_component_values(targets), dtype=dtype, device=device)  # (nnz,)
        self.l_mm = None if l_mm is None else torch.as_tensor(l_mm, dtype=dtype, device=device)

    @torch.no_grad()
    def record(self, step: int, model: FreeFeatures, config: TrainConfig, metrics: bool, subspace: bool,
               observe) -> dict[str, Any]:
        d = self.data
        W, F = model.words(), model.features()
        ce = float(soft_label_ce(W, F, model.bias, d.pi, d.tokens, d.contexts, d.probs,
                                 chunk_entries=config.chunk_entries))
        w2, h2 = float(model.W.square().sum()), float(model.H.square().sum())
        ridge = (0.0 if config.word_layernorm else w2) + (0.0 if config.layernorm else h2)
        row: dict[str, Any] = dict(
            step=step, objective=ce + 0.5 * config.weight_decay * ridge, ce=ce,
            ce_minus_entropy=ce - d.entropy, w_norm=math.sqrt(w2), h_norm=math.sqrt(h2),
        )
        # In-support logits only: P_F(L) and the support means need nothing V x m.
        l_sup = (W[d.tokens] * F[:, d.contexts].T).sum(1)  # (nnz,)
        if model.bias is not None:
            l_sup = l_sup + model.bias[d.tokens]
        k = torch.as_tensor(self.targets.support_sizes, dtype=l_sup.dtype, device=l_sup.device)
        col_mean = torch.zeros_like(k).index_add_(0, d.contexts, l_sup) / k
        pf = l_sup - col_mean[d.contexts]  # (nnz,) P_F(L) on the support
        row["pf_dist"] = float((pf - self.l_in).norm())
        if self.l_mm is not None and model.bias is None:
            l_norm2 = float(((W.T @ W) * (F @ F.T)).sum())  # ||W F||_F^2 from d x d Grams
            inner = float((W * (self.l_mm @ F.T)).sum())  # <L, L_mm>
            mm_norm = float(self.l_mm.norm())
            perp = math.sqrt(max(l_norm2 - float(pf.square().sum()), 1e-300))
            # L_mm lies in F-perp, so <P_Fperp L, L_mm> = <L, L_mm>.
            row["cos_mm"] = inner / (perp * mm_norm)
            row["mm_dist"] = math.sqrt(max(2.0 - 2.0 * inner / (math.sqrt(l_norm2) * mm_norm), 0.0))
        if subspace or observe is not None:
            w_np, f_np = W.cpu().double().numpy(), F.cpu().double().numpy()
            if subspace:
                sc = subspace_collapse(w_np, f_np, self.targets)
                row.update(subspace_ratio=sc.ratio, subspace_ratio_unprojected=sc.unprojected,
                           subspace_rank=sc.rank)
            if observe is not None:
                row.update(observe(w_np, f_np))
        if metrics:
            stats = ufm_class_stats(F.double(), self.targets)
            if int((stats.sample_counts > 0).sum()) >= 2:
                row["metrics"] = collapse_metrics(stats, W.double()).to_dict()
        return row
