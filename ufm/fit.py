"""One training loop for the UFM family: any feature model (ufm.features) against any loss
(ufm.losses) with a learned or fixed classifier (ufm.classifiers), on CPU or CUDA.

    min  loss(words, features) + the classifier's ridge + the feature model's terms

(lambda_W = ``weight_decay``, PyTorch's convention: the gradient of the ridge is lambda W; lambda_H =
``feature_decay``, default the same). ``fit`` returns a ``UFMResult`` with the trajectory of the
theory's quantities (``GeometryMonitor``), which also measures a real model's features
(lm_bridge.finite). ``ufm.train.train_ufm`` is the flat-keyword convenience over it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .validate import check_positive_int, free_memory, resolve_device
from .io import atomic_write, load_state
from .classifiers import Classifier, LearnedClassifier, Words
from .features import FeatureModel, FreeH, as_matrix
from .losses import Batch, CrossEntropy, Loss
from .metrics import collapse_metrics
from .model import CHUNK_ENTRIES, TargetTensors, UFMModel, soft_label_ce, support_logits
from .stats import ClassStats, StatsAccumulator
from .targets import NTPTargets
from .theory import sparse_component_values, subspace_collapse
from .threads import threads_for

Optimizer = Literal["gd", "ngd", "adam", "adamw"]
# gd's default (None) is a backtracking line search: a fixed step that converges depends on the
# curvature, which grows with ||W|| and ||H|| (lr 20 and 10 diverge on SCIENCE.md's V=8, m=10 example).
DEFAULT_LR = {"gd": None, "ngd": 0.5, "adam": 0.05, "adamw": 1e-3}
_ARMIJO = 0.5  # sufficient decrease: f(x - t g) <= f(x) - _ARMIJO t ||g||^2
_MAX_STEP = 1e4  # a line-search step never grows past this


@dataclass(frozen=True)
class FitOptions:
    """How to train, whatever the family member: the problem's width, the ridge, the optimizer."""

    dim: int  # d, the width of W's rows and H's columns
    weight_decay: float  # lambda_W (and lambda_H unless feature_decay is set)
    steps: int  # optimizer steps (full-batch or minibatch)
    lr: float | None  # learning rate (ngd: the length of each step; gd None: backtracking line search)
    optimizer: str = "adam"  # gd | ngd (normalized GD) | adam (AMSGrad variant) | adamw (decoupled decay)
    lr_schedule: str = "cosine"  # constant | cosine (decays to lr * 1e-3 at the last step)
    init_scale: float = 0.1  # std of the Gaussian initialization of W and H
    batch_size: int | None = None  # contexts per step; None: full batch
    dtype: str = "float64"  # parameters' dtype
    seed: int = 0  # initialization and minibatch order
    chunk_entries: int | None = CHUNK_ENTRIES  # largest logits chunk in the CE; None: dense logits
    feature_decay: float | None = None  # lambda_H; None: weight_decay

    def __post_init__(self) -> None:
        check_positive_int(self.dim, "dim")
        check_positive_int(self.steps, "steps", minimum=0)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.feature_decay is not None and not (math.isfinite(self.feature_decay) and self.feature_decay >= 0):
            raise ValueError(f"feature_decay must be >= 0, got {self.feature_decay}")
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

    @property
    def lam_h(self) -> float:
        return self.weight_decay if self.feature_decay is None else self.feature_decay


@dataclass
class UFMResult:
    """Trained factors and the trajectory. W (V, d), H (d, m), bias (V,) or None, on the CPU; ``model``
    the trained UFMModel (deep linear layers, anchor, normalization), also on the CPU."""

    W: torch.Tensor
    H: torch.Tensor
    bias: torch.Tensor | None
    targets: NTPTargets
    config: FitOptions
    model: UFMModel
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    family: dict[str, Any] = field(default_factory=dict)  # the loss, feature model and classifier, described
    resumed_from: int | None = None  # the step a checkpoint resumed the run at, if one did

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
        return dict(config=asdict(self.config), family=self.family, targets=self.targets.describe(),
                    history=self.history, seconds=self.seconds)


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


def fit(
    targets: NTPTargets,
    options: FitOptions,
    *,
    loss: Loss = CrossEntropy(),
    features: FeatureModel = FreeH(),
    classifier: Classifier = LearnedClassifier(),
    device: str | torch.device = "auto",
    snapshots: int | list[int] = 20,
    l_mm: np.ndarray | None = None,
    track_metrics: bool = False,
    track_subspace: bool = False,
    observe: Callable[[np.ndarray, np.ndarray], dict[str, Any]] | None = None,
    progress: bool = False,
    h_start: np.ndarray | torch.Tensor | None = None,
    layer_observe: Callable[[list[np.ndarray]], dict[str, Any]] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
    config: FitOptions | None = None,
) -> UFMResult:
    """Train ``features`` against ``loss`` with ``classifier`` on ``targets``; the history records, at each
    snapshot, the objective, CE - H, ||W||_F, ||H||_F, ||P_F(L_t) - L_in||_F and, with ``l_mm`` (V, m),
    cos(P_Fperp L_t, L_mm) and the distance of L_t/||L_t|| to L_mm/||L_mm||; ``track_metrics`` adds the
    collapse metrics, ``track_subspace`` the same-support collapse ratio, ``observe(W, F)`` whatever it
    returns, ``layer_observe`` whatever it returns for every layer's features (d, m). ``h_start`` (d, m) is
    the initial H of a model that trains H from a random start otherwise. ``checkpoint``: a resume state
    rewritten atomically every ``checkpoint_every`` steps, from which a run of the same options, family
    and targets continues. ``config`` is what the result records (train_ufm's TrainConfig; default
    ``options``)."""
    _check_inputs(targets, loss, features, l_mm)
    marks = _snapshot_marks(options.steps, snapshots)
    dev = resolve_device(device)
    given = features.check(options.dim, targets.num_contexts)
    frozen = given is not None
    if h_start is not None:
        if frozen:
            raise ValueError(f"features {features.name!r} start from their own H; h_start is for the others")
        given = as_matrix(h_start, "h0", (options.dim, targets.num_contexts), "(d, m)")
    check_training_memory(options, targets, dev, layers=features.num_layers, frozen_h=frozen, bias=classifier.bias)
    tdtype = getattr(torch, options.dtype)
    gen = torch.Generator().manual_seed(options.seed)
    model = _build(options, targets, features, classifier, given, gen, tdtype).to(dev)
    params = model.trained()
    if not any(p is not model.bias for p in params):
        raise ValueError("undefined combination: a fixed classifier with fixed features leaves nothing to train")
    mix_rng = np.random.default_rng(options.seed + 2)
    data = TargetTensors(targets, dev, tdtype)
    monitor = GeometryMonitor(data, l_mm, options.chunk_entries)
    m = targets.num_contexts
    batch_gen = torch.Generator(device="cpu").manual_seed(options.seed + 1)
    # AdamW decays the weights itself (Loshchilov & Hutter): no ridge in the objective then.
    lam_w, lam_h = (0.0, 0.0) if options.optimizer == "adamw" else (options.weight_decay, options.lam_h)
    family = dict(loss=loss.describe(), features=features.describe(), classifier=classifier.describe())

    def objective(batch: torch.Tensor | None, mix: bool = True) -> torch.Tensor:
        F, scored = model.features(batch), Batch(*data.select(batch))
        if mix:
            F, scored = loss.prepare(F, scored, mix_rng)
        value = loss(model.words(), F, model.bias, scored, chunk_entries=options.chunk_entries)
        scale = 1.0 if batch is None else m / len(batch)  # unbiased minibatch estimate
        return scale * value + model.penalty(lam_w, lam_h, batch, scale)

    opt = _make_optimizer(options, params)
    saver = None if checkpoint is None else _Checkpoint(
        Path(checkpoint), check_positive_int(checkpoint_every, "checkpoint_every"),
        dict(options=asdict(options), family=family, targets=targets.describe()))
    rngs = dict(batch=batch_gen, mix=mix_rng)
    start_step, history, line_step = (0, [], 1.0) if saver is None else saver.resume(model, opt, rngs, dev)
    start = time.perf_counter()
    bar = tqdm(total=options.steps, initial=start_step, disable=not progress, desc="fit", unit="step")
    B = min(options.batch_size or m, m)
    per_step = targets.vocab_size * options.dim * B + features.flops(B)  # multiply-adds of a step
    with threads_for(per_step if dev.type == "cpu" else 0):
        for step in range(start_step, options.steps + 1):
            # A checkpoint at a marked step already holds that step's record.
            if step in marks and not (history and history[-1]["step"] == step):
                history.append(monitor.record(step, model, lambda: objective(None, mix=False), track_metrics,
                                              track_subspace, observe, layer_observe))
            if saver is not None and step > start_step and (step % saver.every == 0 or step == options.steps):
                saver.save(step, model, opt, history, rngs, line_step)
            if step == options.steps:
                break
            batch = None
            if options.batch_size is not None and options.batch_size < m:
                batch = torch.randperm(m, generator=batch_gen)[:options.batch_size].to(dev)
            line_step = _step(opt, options, params, lambda: objective(batch), step, line_step)
            bar.update(1)
    bar.close()
    result = _result(model, targets, config or options, history, time.perf_counter() - start, family)
    result.resumed_from = start_step if start_step else None
    return result


class _Checkpoint:
    """A fit run's resume state (the model, the optimizer, the step, the history, the minibatch and mixup
    generators, the line search's step), rewritten atomically; refused if it is another run's."""

    KEYS = ("model", "optimizer", "step", "history", "identity", "rng", "line_step")

    def __init__(self, path: Path, every: int, identity: dict):
        self.path, self.every, self.identity = path, every, identity

    def resume(self, model, opt, rngs: dict, device) -> tuple[int, list, float]:
        if not self.path.exists():
            return 0, [], 1.0
        state = load_state(self.path, self.KEYS, device)
        if state["identity"] != self.identity:
            raise ValueError(f"{self.path} holds a run of another configuration or data; remove it or use "
                             "another path")
        model.load_state_dict(state["model"])
        if opt is not None:
            opt.load_state_dict(state["optimizer"])
        rngs["batch"].set_state(state["rng"]["batch"])
        rngs["mix"].bit_generator.state = state["rng"]["mix"]
        return state["step"], state["history"], state["line_step"]

    def save(self, step: int, model, opt, history, rngs: dict, line_step: float) -> None:
        state = dict(model=model.state_dict(), optimizer=None if opt is None else opt.state_dict(), step=step,
                     history=history, identity=self.identity, line_step=line_step,
                     rng=dict(batch=rngs["batch"].get_state(), mix=rngs["mix"].bit_generator.state))
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))


def _result(model: UFMModel, targets, config: FitOptions, history, seconds: float, family) -> UFMResult:
    if not math.isfinite(history[-1]["objective"]):
        raise FloatingPointError(
            f"training diverged (objective {history[-1]['objective']}); lower lr={config.lr} "
            "(or, for gd, leave lr=None for a line search)"
        )
    model = model.cpu().requires_grad_(False)
    return UFMResult(W=model.W.detach(), H=model.H.detach(), bias=None if model.bias is None else model.bias.detach(),
                     targets=targets, config=config, model=model, history=history, seconds=seconds, family=family)


def _check_inputs(targets, loss, features, l_mm) -> None:
    if not isinstance(targets, NTPTargets):
        raise TypeError(f"targets must be NTPTargets, got {type(targets).__name__}")
    for value, kind, name in ((loss, Loss, "loss"), (features, FeatureModel, "features")):
        if not isinstance(value, kind):
            raise TypeError(f"{name} must be a {kind.__name__} (ufm.{name}), got {type(value).__name__}")
    if l_mm is not None and np.shape(l_mm) != (targets.vocab_size, targets.num_contexts):
        raise ValueError(f"l_mm must have shape (V, m) = ({targets.vocab_size}, {targets.num_contexts}), "
                         f"got {np.shape(l_mm)}")
    if l_mm is not None and not np.all(np.isfinite(l_mm)):
        raise ValueError(f"l_mm holds {int((~np.isfinite(l_mm)).sum())} NaN or Inf value(s) (an infeasible "
                         "or failed NTP-SVM solve?); pass None to leave the max-margin direction out")


def _build(options: FitOptions, targets: NTPTargets, features: FeatureModel, classifier: Classifier,
           given: torch.Tensor | None, gen: torch.Generator, dtype: torch.dtype) -> UFMModel:
    """Draw W, then H, then the layers from one generator (on the CPU, so a seed gives the same start
    on any device); W is drawn even when the classifier is fixed, so the draws after it do not move."""
    V, m, d = targets.vocab_size, targets.num_contexts, options.dim
    W = options.init_scale * torch.randn(V, d, generator=gen, dtype=dtype)
    H = options.init_scale * torch.randn(d, m, generator=gen, dtype=dtype) if given is None else given.to(dtype).clone()
    layers = features.layers(d, options.init_scale, gen, dtype)
    feature_module = features.build(H, layers)
    return UFMModel(Words(classifier, classifier.start(feature_module.initial_words(W), V, d)), feature_module)


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


def training_bytes(options: FitOptions, targets: NTPTargets, *, layers: int = 0, frozen_h: bool = False,
                   bias: bool = False) -> int:
    """Estimated peak bytes of a run: every parameter five times (value, gradient and AMSGrad's three
    moments), an anchor or frozen H, and a logits chunk with its softmax and gradient."""
    V, m, d = targets.vocab_size, targets.num_contexts, options.dim
    params = V * d + d * m + layers * d * d + (V if bias else 0)
    anchor = d * m if frozen_h else 0
    chunk = V * min(options.batch_size or m, m)
    if options.chunk_entries is not None:
        chunk = min(chunk, max(options.chunk_entries, V))
    itemsize = 4 if options.dtype == "float32" else 8
    return itemsize * (5 * params + anchor + 3 * chunk + 4 * targets.nnz)


def check_training_memory(options: FitOptions, targets: NTPTargets, device: torch.device, **sizes) -> None:
    """Refuse, before anything is allocated, a run that cannot fit (a typo in dim takes minutes to
    fail in the allocator otherwise)."""
    need, have = training_bytes(options, targets, **sizes), free_memory(device)
    if need > TRAIN_MEMORY_FRACTION * have:
        raise ValueError(
            f"a UFM of V={targets.vocab_size}, m={targets.num_contexts}, d={options.dim} ({options.dtype}) needs "
            f"about {need / 2**30:.3g} GiB, more than {TRAIN_MEMORY_FRACTION:.0%} of the {have / 2**30:.3g} GiB "
            f"free on {device}; lower dim, use batch_size or dtype='float32'")


def _default_lr(lr: float | None, optimizer: str) -> float | None:
    if lr is not None:
        return float(lr)
    return DEFAULT_LR.get(optimizer, 1.0)


def _make_optimizer(config: FitOptions, params: list[torch.Tensor]):
    if config.optimizer == "adam":
        # AMSGrad: Adam's second-moment estimate never shrinks, so once the gradients vanish its
        # steps vanish too. Plain Adam renormalizes vanishing gradients to lr-sized steps and
        # kicks a converged UFM away (the ETF error went from 6e-15 back to 2e-3 between steps 7k
        # and 14k; ||P_F L - L_in|| from 0.0085 to 0.37 and back).
        return torch.optim.Adam(params, lr=config.lr, amsgrad=True)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return None  # gd and ngd are a line each, below


def _lr_at(config: FitOptions, step: int) -> float:
    if config.lr_schedule == "constant" or config.steps <= 1:
        return config.lr
    floor = 1e-3
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / (config.steps - 1))))


def _step(opt, config: FitOptions, params: list[torch.Tensor], closure_loss, step: int, line_step: float) -> float:
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
               observe, layer_observe=None) -> dict[str, Any]:
        """``objective()``: the training objective on all contexts (mixup: on the unmixed contexts)."""
        row: dict[str, Any] = dict(step=step, objective=float(objective()), w_norm=float(model.W.norm()),
                                   h_norm=float(model.H.norm()))
        row |= self.measure(model.words(), model.features(), model.bias, metrics=metrics, subspace=subspace,
                            observe=observe)
        if layer_observe is not None:
            row |= layer_observe([s.double().cpu().numpy() for s in model.layer_features()])
        return row

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
