"""Training the NTP unconstrained-features model family (Zhao et al., COLM 2024 and neighbours), on CPU or CUDA.

    min  loss(W, features) + (lambda_W / 2) ||W||_F^2 + (lambda_H / 2) ||H||_F^2  (+ the feature model's terms)

with the loss one of ufm.losses (soft-label CE by default, a mean over contexts when pi is uniform;
MSE; CE with label smoothing; mixup) and the features one of ufm.model's FEATURE_MODELS (free H by
default; deep linear; perturbed; normalized; fixed H). lambda_W = ``weight_decay`` (PyTorch's
convention: the gradient of the ridge is lambda W), lambda_H = ``feature_decay`` (default: the same).
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

from ._validate import check_finite, check_positive_int, free_memory, resolve_device
from .metrics import collapse_metrics
from .losses import LOSSES, data_loss, mixup
from .model import CHUNK_ENTRIES, FEATURE_MODELS, TargetTensors, UFMModel, soft_label_ce, support_logits
from .stats import ClassStats, StatsAccumulator
from .targets import NTPTargets
from .theory import etf_classifier, sparse_component_values, subspace_collapse
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
    loss: str = "ce"  # ce | mse (ufm.losses)
    label_smoothing: float = 0.0  # eps of the smoothed CE target (1 - eps) p + eps / V
    mixup_alpha: float | None = None  # mixup with lam ~ Beta(alpha, alpha); None: no mixup
    features: str = "free"  # free | deep_linear | perturbed | normalized | fixed_h (ufm.model)
    feature_decay: float | None = None  # lambda_H; None: weight_decay
    depth: int = 0  # deep_linear (or fixed_h): trained d x d layers between H and W
    layer_init: str = "identity"  # the layers start at identity + noise, or "random" (init_scale noise)
    beta: float = 0.0  # perturbed: (beta/2)||H - H0||^2
    radius: float = 1.0  # normalized: the sphere's radius
    normalize: str = "both"  # normalized: features | words | both
    fixed_classifier: bool = False  # W frozen at the given classifier

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
        if self.chunk_entries is not None:
            check_positive_int(self.chunk_entries, "chunk_entries (None for dense logits)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63) (torch's generator range), got {self.seed!r}")
        self._check_family()

    def _check_family(self) -> None:
        """The loss and the feature model: known names, parameters in range, a defined combination."""
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.features not in FEATURE_MODELS:
            raise ValueError(f"features must be one of {', '.join(FEATURE_MODELS)}, got {self.features!r}")
        if not (math.isfinite(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.mixup_alpha is not None and not (math.isfinite(self.mixup_alpha) and self.mixup_alpha > 0):
            raise ValueError(f"mixup_alpha must be positive (Beta(alpha, alpha)), got {self.mixup_alpha}")
        if self.feature_decay is not None and not (math.isfinite(self.feature_decay) and self.feature_decay >= 0):
            raise ValueError(f"feature_decay must be >= 0, got {self.feature_decay}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"radius must be positive, got {self.radius}")
        if self.normalize not in ("features", "words", "both"):
            raise ValueError(f"normalize must be 'features', 'words' or 'both', got {self.normalize!r}")
        check_positive_int(self.depth, "depth", minimum=0)
        if self.layer_init not in ("identity", "random"):
            raise ValueError(f"layer_init must be 'identity' or 'random', got {self.layer_init!r}")
        undefined = {
            "label smoothing is a CE target; loss 'mse' has none":
                self.label_smoothing > 0 and self.loss != "ce",
            "mixup is defined here for the soft-label CE (Fisher et al. 2024), not loss 'mse'":
                self.mixup_alpha is not None and self.loss != "ce",
            f"layernorm is an option of features 'free', not {self.features!r}":
                (self.layernorm or self.word_layernorm) and self.features != "free",
            f"depth is the deep_linear and fixed_h models', not {self.features!r}'s":
                self.depth > 0 and self.features not in ("deep_linear", "fixed_h"),
            "features 'deep_linear' needs depth >= 1": self.features == "deep_linear" and self.depth < 1,
            f"beta is the perturbed model's, not {self.features!r}'s": self.beta > 0 and self.features != "perturbed",
            "features 'perturbed' needs beta > 0": self.features == "perturbed" and self.beta == 0,
            "a fixed classifier with fixed features leaves nothing to train":
                self.fixed_classifier and self.features == "fixed_h" and self.depth == 0,
        }
        for why, bad in undefined.items():
            if bad:
                raise ValueError(f"undefined combination: {why} (loss={self.loss!r}, features={self.features!r})")


@dataclass
class UFMResult:
    """Trained factors and the trajectory. W (V, d), H (d, m), bias (V,) or None, on the CPU; ``model``
    the trained UFMModel (deep linear layers, anchor, normalization), also on the CPU."""

    W: torch.Tensor
    H: torch.Tensor
    bias: torch.Tensor | None
    targets: NTPTargets
    config: TrainConfig
    model: UFMModel
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @torch.no_grad()
    def features(self) -> torch.Tensor:
        """The features that meet W: H, LN(H), W_L ... W_1 H, or on the sphere, per the feature model. (d, m)"""
        return self.model.features()

    @torch.no_grad()
    def words(self) -> torch.Tensor:
        """The word embeddings that meet the features: W, or normalized rows. (V, d)"""
        return self.model.words()

    @torch.no_grad()
    def layer_features(self) -> list[torch.Tensor]:
        """Each layer's features, [H, W_1 H, ..., W_L ... W_1 H] (d, m) (one entry unless deep linear)."""
        return self.model.layer_features()

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
    loss: str = "ce",
    label_smoothing: float = 0.0,
    mixup_alpha: float | None = None,
    features: str = "free",
    feature_decay: float | None = None,
    depth: int = 0,
    layer_init: str = "identity",
    beta: float = 0.0,
    radius: float = 1.0,
    normalize: str = "both",
    h0: np.ndarray | torch.Tensor | None = None,
    classifier: np.ndarray | torch.Tensor | str | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    snapshots: int | list[int] = 20,
    l_mm: np.ndarray | None = None,
    track_metrics: bool = False,
    track_subspace: bool = False,
    observe: Callable[[np.ndarray, np.ndarray], dict[str, Any]] | None = None,
    progress: bool = False,
) -> UFMResult:
    """Minimize loss(W, features) + (lambda_W/2)||W||^2 + (lambda_H/2)||H||^2 over W (V, d) and the
    feature model's factors (free H (d, m) by default).

    The family (module docstrings of ufm.losses and ufm.model): ``loss`` "ce" or "mse",
    ``label_smoothing`` eps, ``mixup_alpha``; ``features`` "free", "deep_linear" (``depth`` layers,
    ``layer_init``), "perturbed" (``beta``, anchor ``h0``), "normalized" (``radius``, ``normalize``) or
    "fixed_h" (H = ``h0`` frozen, with ``depth`` layers on top or none); ``h0`` (d, m) otherwise the initial H; ``classifier`` a (V, d) array or "etf" (a
    simplex ETF, d >= V - 1) freezes W at it.

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
        word_layernorm=word_layernorm, init_scale=init_scale, batch_size=batch_size, dtype=dtype, seed=seed,
        chunk_entries=chunk_entries, loss=loss, label_smoothing=float(label_smoothing), mixup_alpha=mixup_alpha,
        features=features, feature_decay=feature_decay, depth=depth, layer_init=layer_init, beta=float(beta), radius=float(radius),
        normalize=normalize, fixed_classifier=classifier is not None,
    )
    if l_mm is not None and np.shape(l_mm) != (targets.vocab_size, targets.num_contexts):
        raise ValueError(f"l_mm must have shape (V, m) = ({targets.vocab_size}, {targets.num_contexts}), "
                         f"got {np.shape(l_mm)}")
    if l_mm is not None and not np.all(np.isfinite(l_mm)):
        raise ValueError(f"l_mm holds {int((~np.isfinite(l_mm)).sum())} NaN or Inf value(s) (an infeasible "
                         "or failed NTP-SVM solve?); pass None to leave the max-margin direction out")
    marks = _snapshot_marks(steps, snapshots)
    dev = resolve_device(device)
    check_training_memory(config, targets, dev)
    tdtype = getattr(torch, config.dtype)
    gen = torch.Generator().manual_seed(seed)
    model = _build_model(config, targets, h0, classifier, gen, tdtype).to(dev)
    lam_h = config.weight_decay if config.feature_decay is None else config.feature_decay
    mix_rng = np.random.default_rng(seed + 2)
    data = TargetTensors(targets, dev, tdtype)
    monitor = GeometryMonitor(data, l_mm, config.chunk_entries)
    m = targets.num_contexts
    batch_gen = torch.Generator(device="cpu").manual_seed(seed + 1)

    def objective(batch: torch.Tensor | None, mix: bool = True) -> torch.Tensor:
        pi_b, tok, col, prob = data.select(batch)
        F = model.features(batch)
        if mix and config.mixup_alpha is not None:
            F, pi_b, tok, col, prob = mixup(F, pi_b, tok, col, prob, config.mixup_alpha, mix_rng)
        fit = data_loss(config.loss, model.words(), F, model.bias, pi_b, tok, col, prob,
                        label_smoothing=config.label_smoothing, chunk_entries=config.chunk_entries)
        scale = 1.0 if batch is None else m / len(batch)  # unbiased minibatch estimate
        return scale * fit + model.penalty(config.weight_decay, lam_h, batch, scale)

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
                history.append(monitor.record(step, model, lambda: objective(None, mix=False), track_metrics,
                                              track_subspace, observe))
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
    model = model.cpu().requires_grad_(False)
    return UFMResult(
        W=model.W.detach(), H=model.H.detach(), bias=model.bias.detach() if model.bias is not None else None,
        targets=targets, config=config, model=model, history=history, seconds=time.perf_counter() - start,
    )


def _snapshot_marks(steps: int, snapshots: int | list[int]) -> set[int]:
    if isinstance(snapshots, (int, np.integer)) and not isinstance(snapshots, bool):
        return set(snapshot_steps(steps, check_positive_int(snapshots, "snapshots", minimum=0)))
    try:
        marks = [int(check_positive_int(s, "a snapshot step", minimum=0)) for s in snapshots]
    except TypeError:
        raise ValueError(f"snapshots must be a count (int >= 0) or a list of steps, got {snapshots!r}") from None
    late = [s for s in marks if s > steps]
    if late:
        raise ValueError(f"snapshot step(s) {late} come after the last step ({steps})")
    return {*marks, 0, steps}


TRAIN_MEMORY_FRACTION = 0.8  # a UFM run may plan to use at most this share of the free memory


def training_bytes(config: TrainConfig, targets: NTPTargets) -> int:
    """Estimated peak bytes of a run: every parameter five times (value, gradient and AMSGrad's three
    moments), an anchor or frozen H, and a logits chunk with its softmax and gradient."""
    V, m, d = targets.vocab_size, targets.num_contexts, config.dim
    params = V * d + d * m + config.depth * d * d + (V if config.bias else 0)
    anchor = d * m if config.features in ("perturbed", "fixed_h") else 0
    chunk = V * min(config.batch_size or m, m)
    if config.chunk_entries is not None:
        chunk = min(chunk, max(config.chunk_entries, V))
    itemsize = 4 if config.dtype == "float32" else 8
    return itemsize * (5 * params + anchor + 3 * chunk + 4 * targets.nnz)


def check_training_memory(config: TrainConfig, targets: NTPTargets, device: torch.device) -> None:
    """Refuse, before anything is allocated, a run that cannot fit (a typo in dim takes minutes to
    fail in the allocator otherwise)."""
    need, have = training_bytes(config, targets), free_memory(device)
    if need > TRAIN_MEMORY_FRACTION * have:
        raise ValueError(
            f"a UFM of V={targets.vocab_size}, m={targets.num_contexts}, d={config.dim} ({config.dtype}) needs "
            f"about {need / 2**30:.3g} GiB, more than {TRAIN_MEMORY_FRACTION:.0%} of the {have / 2**30:.3g} GiB "
            f"free on {device}; lower dim, use batch_size or dtype='float32'")


def _build_model(config: TrainConfig, targets: NTPTargets, h0, classifier, gen, dtype) -> UFMModel:
    V, m, d = targets.vocab_size, targets.num_contexts, config.dim
    if h0 is not None:
        h0 = torch.as_tensor(np.asarray(h0, dtype=np.float64) if not isinstance(h0, torch.Tensor) else h0)
        if tuple(h0.shape) != (d, m):
            raise ValueError(f"h0 must have shape (d, m) = ({d}, {m}), got {tuple(h0.shape)}")
        check_finite(h0, "h0")
    elif config.features in ("perturbed", "fixed_h"):
        raise ValueError(f"features {config.features!r} needs h0 (d, m): the "
                         + ("anchor H0" if config.features == "perturbed" else "fixed features"))
    words = None
    if isinstance(classifier, str):
        if classifier != "etf":
            raise ValueError(f"classifier must be a (V, d) array or 'etf', got {classifier!r}")
        words = torch.as_tensor(etf_classifier(V, d))
    elif classifier is not None:
        words = torch.as_tensor(np.asarray(classifier, dtype=np.float64))
        if tuple(words.shape) != (V, d):
            raise ValueError(f"classifier must have shape (V, d) = ({V}, {d}), got {tuple(words.shape)}")
        check_finite(words, "classifier")
    sphere = config.features == "normalized"
    return UFMModel(
        V, m, d, bias=config.bias, radius=config.radius, depth=config.depth, layer_init=config.layer_init,
        beta=config.beta, h0=h0,
        fix_h=config.features == "fixed_h", words=words, init_scale=config.init_scale, generator=gen, dtype=dtype,
        feature_norm="layernorm" if config.layernorm else "sphere" if sphere and config.normalize != "words" else None,
        word_norm="layernorm" if config.word_layernorm else "sphere" if sphere and config.normalize != "features" else None,
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


class GeometryMonitor:
    """The theory's quantities at a snapshot, for any word embeddings W (V, d) and context features
    F (d, m): the UFM's history, and a real model's last-position hidden states (lm_bridge.finite).
    The theory targets (L_in, L_mm) are computed once, up front."""

    def __init__(self, data: TargetTensors, l_mm=None, chunk_entries: int | None = CHUNK_ENTRIES):
        self.targets = targets = data.targets
        self.chunk_entries = chunk_entries
        self.data = data
        device, dtype = data.probs.device, data.probs.dtype
        self.l_in = torch.as_tensor(sparse_component_values(targets), dtype=dtype, device=device)  # (nnz,)
        self.l_mm = None if l_mm is None else torch.as_tensor(l_mm, dtype=dtype, device=device)

    @torch.no_grad()
    def record(self, step: int, model: UFMModel, objective, metrics: bool, subspace: bool,
               observe) -> dict[str, Any]:
        """``objective()``: the training objective on all contexts (mixup: on the unmixed contexts)."""
        row: dict[str, Any] = dict(step=step, objective=float(objective()), w_norm=float(model.W.norm()),
                                   h_norm=float(model.H.norm()))
        return row | self.measure(model.words(), model.features(), model.bias, metrics=metrics, subspace=subspace,
                                  observe=observe)

    @torch.no_grad()
    def measure(self, W: torch.Tensor, F: torch.Tensor, bias: torch.Tensor | None = None, *, metrics: bool = False,
                subspace: bool = False, observe=None) -> dict[str, Any]:
        """CE, CE - H, ||P_F(L) - L_in||, with L_mm cos(P_Fperp L, L_mm) and the distance of L/||L|| to
        L_mm/||L_mm||, optionally the subspace-collapse ratio, the collapse metrics and ``observe(W, F)``."""
        d = self.data
        W, F = W.to(d.probs), F.to(d.probs)
        ce = float(soft_label_ce(W, F, bias, d.pi, d.tokens, d.contexts, d.probs, chunk_entries=self.chunk_entries))
        row: dict[str, Any] = dict(ce=ce, ce_minus_entropy=ce - d.entropy)
        # In-support logits only: P_F(L) and the support means need nothing V x m.
        l_sup = support_logits(W, F, bias, d.tokens, d.contexts)  # (nnz,)
        k = torch.as_tensor(self.targets.support_sizes, dtype=l_sup.dtype, device=l_sup.device)
        col_mean = torch.zeros_like(k).index_add_(0, d.contexts, l_sup) / k
        pf = l_sup - col_mean[d.contexts]  # (nnz,) P_F(L) on the support
        row["pf_dist"] = float((pf - self.l_in).norm())
        if self.l_mm is not None and bias is None:
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
