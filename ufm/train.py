"""train_ufm: the UFM family by flat keywords, a thin convenience over ``ufm.fit.fit``.

    min  loss(W, features) + (lambda_W / 2) ||W||_F^2 + (lambda_H / 2) ||H||_F^2  (+ the feature model's terms)

``loss`` "ce" (soft-label CE, a mean over contexts when pi is uniform; ``label_smoothing``, ``mixup_alpha``)
or "mse"; ``features`` "free" (``layernorm``), "deep_linear" (``depth``, ``layer_init``), "perturbed"
(``beta``, anchor ``h0``), "normalized" (``radius``, ``normalize``) or "fixed_h" (``h0`` frozen, ``depth``
layers on top). ``TrainConfig`` records the keywords and turns them into the family's objects
(ufm.losses, ufm.features, ufm.classifiers); objects may also be passed directly (``loss=Focal(2)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from .validate import check_positive_int
from .classifiers import FixedClassifier, LearnedClassifier
from .features import FEATURE_MODELS, FEATURE_NAMES, FeatureModel, FixedH, FreeH, LayerNormH, Perturbed, SphereH
from .fit import DEFAULT_LR, FitOptions, Optimizer, UFMResult, fit
from .losses import LOSSES, CrossEntropy, Loss, Mixup
from .model import CHUNK_ENTRIES
from .targets import NTPTargets



@dataclass(frozen=True)
class TrainConfig(FitOptions):
    """A train_ufm run's keywords: FitOptions and the family named by flat fields."""

    bias: bool = False  # a free bias b (V,) in the logits, not regularized
    layernorm: bool = False  # features LN(h_j); H is then not regularized
    word_layernorm: bool = False  # word embeddings LN(w_z); W is then not regularized
    loss: str = "ce"  # a name of ufm.losses.LOSSES
    label_smoothing: float = 0.0  # eps of the smoothed CE target (1 - eps) p + eps / V
    mixup_alpha: float | None = None  # mixup with lam ~ Beta(alpha, alpha); None: no mixup
    features: str = "free"  # one of FEATURE_NAMES
    depth: int = 0  # deep_linear (or fixed_h): trained d x d layers between H and W
    layer_init: str = "identity"  # the layers start at identity + noise, or "random" (init_scale noise)
    beta: float = 0.0  # perturbed: (beta/2)||H - H0||^2
    radius: float = 1.0  # normalized: the sphere's radius
    normalize: str = "both"  # normalized: features | words | both
    fixed_classifier: bool = False  # W frozen at the given classifier

    def __post_init__(self) -> None:
        super().__post_init__()
        self.loss_object()
        self.feature_model(None, need_arrays=False)
        self.classifier_object(None if not self.fixed_classifier else "etf")

    def loss_object(self) -> Loss:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.loss == "ce":
            base = CrossEntropy(self.label_smoothing)
        elif self.label_smoothing != 0:
            raise ValueError(f"undefined combination: label smoothing is a CE target; loss {self.loss!r} has none")
        else:
            base = LOSSES[self.loss]()
        return base if self.mixup_alpha is None else Mixup(self.mixup_alpha, base)

    def feature_model(self, h0, need_arrays: bool = True) -> FeatureModel:
        """The feature model the flat fields name; ``h0`` is its anchor or fixed features (else the initial H).
        A name of ufm.features.FEATURE_MODELS beyond FEATURE_NAMES takes the flat fields its class has."""
        name = self.features
        if name not in FEATURE_NAMES and name not in FEATURE_MODELS:
            raise ValueError(f"features must be one of {', '.join(dict.fromkeys([*FEATURE_NAMES, *FEATURE_MODELS]))}, "
                             f"got {name!r}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"radius must be positive, got {self.radius}")
        if self.normalize not in ("features", "words", "both"):
            raise ValueError(f"normalize must be 'features', 'words' or 'both', got {self.normalize!r}")
        check_positive_int(self.depth, "depth", minimum=0)
        if (self.layernorm or self.word_layernorm) and name != "free":
            raise ValueError(f"undefined combination: layernorm is an option of features 'free', not {name!r}")
        for flag, value in (("depth", self.depth > 0), ("beta", self.beta > 0)):
            owners = [n for n, cls in FEATURE_MODELS.items() if flag in {f.name for f in fields(cls)}]
            if value and name not in owners:
                raise ValueError(f"undefined combination: {flag} is the {', '.join(owners)} models', not {name!r}'s")
        if name in ("perturbed", "fixed_h") and h0 is None and need_arrays:
            raise ValueError(f"features {name!r} needs h0 (d, m): the "
                             + ("anchor H0" if name == "perturbed" else "fixed features"))
        if name == "perturbed":
            return Perturbed(self.beta, h0)
        if name == "fixed_h":
            return FixedH(h0, self.depth, self.layer_init)
        if name == "normalized":
            return SphereH(self.radius) if self.normalize != "words" else FreeH()
        if name == "free":
            return LayerNormH() if self.layernorm else FreeH()
        cls = FEATURE_MODELS[name]
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls) if f.name in _FLAT})

    def classifier_object(self, classifier):
        norm = "layernorm" if self.word_layernorm else (
            "sphere" if self.features == "normalized" and self.normalize != "features" else None)
        if classifier is None:
            return LearnedClassifier(self.bias, norm, self.radius)
        if norm is not None:
            raise ValueError(f"undefined combination: a fixed classifier is not normalized (norm {norm!r})")
        return FixedClassifier(classifier, self.bias)


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
    loss: str | Loss = "ce",
    label_smoothing: float = 0.0,
    mixup_alpha: float | None = None,
    features: str | FeatureModel = "free",
    feature_decay: float | None = None,
    depth: int = 0,
    layer_init: str = "identity",
    beta: float = 0.0,
    radius: float = 1.0,
    normalize: str = "both",
    h0: np.ndarray | torch.Tensor | None = None,
    classifier: np.ndarray | torch.Tensor | str | None = None,
    seed: int = 0,
    **run: Any,
) -> UFMResult:
    """Minimize loss(W, features) + (lambda_W/2)||W||^2 + (lambda_H/2)||H||^2 over W (V, d) and the
    feature model's factors (free H (d, m) by default): ``fit`` with the objects the keywords name.

    ``loss`` a name ("ce", "mse") or a ufm.losses object; ``label_smoothing`` eps, ``mixup_alpha``;
    ``features`` a name of FEATURE_NAMES or a ufm.features object: "free", "deep_linear" (``depth``
    layers, ``layer_init``), "perturbed" (``beta``, anchor ``h0``), "normalized" (``radius``,
    ``normalize``) or "fixed_h" (H = ``h0`` frozen, with ``depth`` layers on top or none); ``h0`` (d, m)
    otherwise the initial H; ``classifier`` a (V, d) array or "etf" (a simplex ETF, d >= V - 1)
    freezes W at it. ``run``: fit's options of the run itself (``device``, ``snapshots``, ``l_mm``,
    ``track_metrics``, ``track_subspace``, ``observe``, ``progress``, ``checkpoint``, ...), documented with
    what the snapshots record in ``ufm.fit.fit``. The defaults reach a simplex ETF on balanced one-hot targets.
    """
    family = dict(label_smoothing=float(label_smoothing), mixup_alpha=mixup_alpha, depth=depth, layer_init=layer_init,
                  beta=float(beta), radius=float(radius), normalize=normalize, bias=bias, layernorm=layernorm,
                  word_layernorm=word_layernorm)
    for name, value in (("loss", loss), ("features", features)):
        stray = [k for k in _OWNED[name] if not isinstance(value, str) and family[k] != _FIELDS[k].default]
        if stray:
            raise ValueError(f"{', '.join(stray)} belong(s) to the {name} named by a string; give them to the "
                             f"{type(value).__name__} object passed instead")
    config = TrainConfig(
        dim=dim, weight_decay=float(weight_decay), steps=steps, lr=_default_lr(lr, optimizer), optimizer=optimizer,
        lr_schedule=lr_schedule, init_scale=init_scale, batch_size=batch_size, dtype=dtype, seed=seed,
        chunk_entries=chunk_entries, feature_decay=feature_decay, **family, fixed_classifier=classifier is not None,
        loss=loss if isinstance(loss, str) else "ce", features=features if isinstance(features, str) else "free")
    loss_name, feature_name = (v if isinstance(v, str) else None for v in (loss, features))
    loss = config.loss_object() if isinstance(loss, str) else loss
    features = config.feature_model(h0) if isinstance(features, str) else features
    config_classifier = config.classifier_object(classifier)
    start = h0 if features.given_h() is None else None  # h0 is then the initial H
    if loss_name is None or feature_name is None:
        # objects were passed: the flat record would name the defaults; the result's ``family`` has them
        config = FitOptions(**{f.name: getattr(config, f.name) for f in fields(FitOptions)})
    return fit(targets, config, loss=loss, features=features, classifier=config_classifier, h_start=start,
               config=config, **run)


_FIELDS = TrainConfig.__dataclass_fields__
_FLAT = ("depth", "layer_init", "beta", "radius")  # flat fields a registered feature model may take
# the flat keywords that configure a loss or a feature model named by a string
_OWNED = {"loss": ("label_smoothing", "mixup_alpha"),
          "features": ("depth", "layer_init", "beta", "radius", "normalize", "layernorm")}


def _default_lr(lr: float | None, optimizer: str) -> float | None:
    if lr is not None:
        return float(lr)
    return DEFAULT_LR.get(optimizer, 1.0)
