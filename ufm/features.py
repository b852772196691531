"""The UFM family's feature models: how the context features F (d, m) that meet the word embeddings
are made from the free (or given) H. Each is a small frozen object with its parameters, their checks
and the objective terms it adds; ``fit`` (ufm.fit) builds it into a ``Features`` module.

    FreeH()                   F = H, + (lambda_H/2)||H||^2                      (the UFM)
    LayerNormH()              F = LN(H), H not regularized                      (Laurent et al. 2024)
    SphereH(radius)           F = radius H/||h_j||, H not regularized           (Jiang et al. 2024)
    DeepLinear(depth)         F = W_L ... W_1 H, + (lambda_W/2) sum ||W_l||^2   (Dang et al. 2023)
    Perturbed(beta, anchor)   F = H, + (beta/2)||H - H0||^2, H starts at H0     (Tirer et al. 2023)
    FixedH(h, depth)          F = W_L ... W_1 h, h frozen (depth 0: only W is trained; Thrampoulidis 2024)

Add a feature model as one class here and one entry in ``FEATURE_MODELS``: ``given_h`` gives a given
H (else H starts random), ``layers`` the trained d x d factors, ``transform`` the features of H's
batch columns, ``layer_outputs`` every layer's, and ``penalty_terms`` its ridge, in the order the
objective adds them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from .model import Features

# torch is imported where a method runs, so that the command line can read the registry (its names
# and parameters) without loading it.


def layer_norm_columns(H: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters on each column h_j (norm ~ sqrt(d))."""
    import torch

    return torch.nn.functional.layer_norm(H.T, (H.shape[0],)).T


def sphere_columns(H: torch.Tensor, radius: float) -> torch.Tensor:
    """Each column h_j scaled to norm ``radius`` (a zero column stays 0)."""
    return radius * H / H.norm(dim=0, keepdim=True).clamp_min(1e-300)


def as_matrix(value, name: str, shape: tuple[int, int], dims: str) -> torch.Tensor:
    """A given array of shape ``dims`` (e.g. "(d, m)") = ``shape`` as a tensor, its shape and values checked."""
    import torch

    from .validate import check_finite

    t = torch.as_tensor(np.asarray(value, dtype=np.float64) if not isinstance(value, torch.Tensor) else value)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {dims} = {shape}, got {tuple(t.shape)}")
    check_finite(t, name)
    return t


@dataclass(frozen=True)
class FeatureModel:
    """Free features H (d, m), the UFM's: F = H, ridge (lambda_H/2)||H||^2."""

    name: ClassVar[str] = "free"
    trains_h: ClassVar[bool] = True  # H is a parameter (else a frozen buffer)

    @property
    def num_layers(self) -> int:
        """Trained d x d layers (memory planning)."""
        return int(getattr(self, "depth", 0))

    def given_h(self) -> torch.Tensor | np.ndarray | None:
        """The H the model starts from (an anchor or fixed features), or None for a random start."""
        return None

    def check(self, dim: int, num_contexts: int) -> torch.Tensor | None:
        """Shapes against the problem; returns the given H as a tensor (d, m), if any."""
        given = self.given_h()
        return None if given is None else as_matrix(given, "h0", (dim, num_contexts), "(d, m)")

    def layers(self, dim: int, init_scale: float, generator, dtype) -> list[torch.Tensor]:
        return []

    def build(self, H: torch.Tensor, layers: list[torch.Tensor]) -> "Features":
        """The module fit trains: H (drawn or given) and the layers (ufm.model.Features)."""
        from .model import Features

        return Features(self, H, layers)

    def flops(self, batch: int) -> int:
        """Multiply-adds a step spends making the features of ``batch`` contexts (beyond the logits)."""
        return 0

    def buffers(self, H: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frozen tensors the model keeps beside H (the perturbed model's anchor)."""
        return {}

    def transform(self, module: "Features", H: torch.Tensor) -> torch.Tensor:
        return H

    def layer_outputs(self, module: "Features", H: torch.Tensor) -> list[torch.Tensor]:
        """[H, W_1 H, ..., W_L ... W_1 H]: H and each layer's output (one entry without layers)."""
        out = [H]
        for layer in module.layers:
            out.append(layer @ out[-1])
        return out

    def penalty_terms(self, module: "Features", weight_decay: float, feature_decay: float, H, batch,
                      scale: float) -> list:
        return [(0.5 * scale * feature_decay) * H.square().sum()]

    def describe(self) -> dict:
        return dict(name=self.name, **{k: v for k, v in vars(self).items() if not hasattr(v, "shape")})


FreeH = FeatureModel


@dataclass(frozen=True)
class LayerNormH(FeatureModel):
    """F = LN(h_j) per column, no affine parameters; H is not regularized (LN is scale-free)."""

    name: ClassVar[str] = "layernorm"

    def transform(self, module, H):
        return layer_norm_columns(H)

    def penalty_terms(self, module, weight_decay, feature_decay, H, batch, scale):
        return []


@dataclass(frozen=True)
class SphereH(FeatureModel):
    """F = radius h_j / ||h_j||; H is not regularized. Checked against the softmax code's rho
    (K-gon, simplex, cross-polytope; Jiang et al. 2024)."""

    radius: float = 1.0
    name: ClassVar[str] = "sphere"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"radius must be positive, got {self.radius}")

    def transform(self, module, H):
        return sphere_columns(H, self.radius)

    def penalty_terms(self, module, weight_decay, feature_decay, H, batch, scale):
        return []


def _layer_start(layer_init: str, depth: int, dim: int, init_scale: float, generator, dtype) -> list[torch.Tensor]:
    # Near the identity (a product of L small random matrices vanishes), or, "random", small as a
    # network on fixed inputs starts (the sequential learning of Saxe et al.).
    import torch

    eye = torch.eye(dim, dtype=dtype) if layer_init == "identity" else torch.zeros(dim, dim, dtype=dtype)
    return [eye + init_scale * torch.randn(dim, dim, generator=generator, dtype=dtype) / dim ** 0.5
            for _ in range(depth)]


def _check_layers(depth: int, layer_init: str, minimum: int, name: str) -> None:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < minimum:
        raise ValueError(f"features {name!r} needs depth >= {minimum}, got {depth!r}")
    if layer_init not in ("identity", "random"):
        raise ValueError(f"layer_init must be 'identity' or 'random', got {layer_init!r}")


def _linear(module: "Features", H: torch.Tensor) -> torch.Tensor:
    for layer in module.layers:
        H = layer @ H
    return H


@dataclass(frozen=True)
class DeepLinear(FeatureModel):
    """F = W_L ... W_1 H, every factor trained, + (lambda_W/2) sum_l ||W_l||^2 (Dang et al. 2023).
    Checked against: the imbalanced MSE frame in every layer (ufm.theory.imbalanced_mse_frame); with
    CE, the Schatten cost of deep factors and the codes of ufm.low_rank."""

    depth: int = 1
    layer_init: str = "identity"
    name: ClassVar[str] = "deep_linear"

    def __post_init__(self) -> None:
        _check_layers(self.depth, self.layer_init, 1, self.name)

    def layers(self, dim, init_scale, generator, dtype):
        return _layer_start(self.layer_init, self.depth, dim, init_scale, generator, dtype)

    def transform(self, module, H):
        return _linear(module, H)

    def penalty_terms(self, module, weight_decay, feature_decay, H, batch, scale):
        return [(0.5 * weight_decay) * layer.square().sum() for layer in module.layers] + \
            [(0.5 * scale * feature_decay) * H.square().sum()]


@dataclass(frozen=True)
class Perturbed(FeatureModel):
    """F = H near the anchor H0: + (lambda_H/2)||H||^2 + (beta/2)||H - H0||^2, H starting at H0 (Tirer,
    Huang & Niles-Weed 2023). Checked against: the optimal H for the trained W (MSE, closed form),
    Theorem 4.2 and Corollary 3.2 in the paper's units (ufm.perturbation)."""

    beta: float
    anchor: np.ndarray | torch.Tensor = field(repr=False)
    name: ClassVar[str] = "perturbed"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"features 'perturbed' needs beta > 0, got {self.beta}")

    def given_h(self):
        return self.anchor

    def buffers(self, H):
        return {"anchor": H.clone()}  # H0

    def penalty_terms(self, module, weight_decay, feature_decay, H, batch, scale):
        anchor = module.anchor if batch is None else module.anchor[:, batch]
        return [(0.5 * scale * feature_decay) * H.square().sum(), (0.5 * scale * self.beta) * (H - anchor).square().sum()]


@dataclass(frozen=True)
class FixedH(FeatureModel):
    """F = W_L ... W_1 h with the features h (d, m) frozen; depth 0 trains only W (the linear model of
    Thrampoulidis 2024: checked against cos(W_t, W^mm) -> 1 and W*'s finite part)."""

    features: np.ndarray | torch.Tensor = field(repr=False)
    depth: int = 0
    layer_init: str = "identity"
    name: ClassVar[str] = "fixed_h"
    trains_h: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_layers(self.depth, self.layer_init, 0, self.name)

    def given_h(self):
        return self.features

    def layers(self, dim, init_scale, generator, dtype):
        return _layer_start(self.layer_init, self.depth, dim, init_scale, generator, dtype)

    def transform(self, module, H):
        return _linear(module, H)

    def penalty_terms(self, module, weight_decay, feature_decay, H, batch, scale):
        return [(0.5 * weight_decay) * layer.square().sum() for layer in module.layers]


@dataclass(frozen=True)
class DeepReLU(DeepLinear):
    """F = relu(W_L relu(... relu(W_1 H))), every factor trained, + (lambda_W/2) sum_l ||W_l||^2 and
    (lambda_H/2)||H||^2: the deep unconstrained features model of Sukenik, Mondelli & Lampert (NeurIPS
    2023), who prove deep neural collapse optimal for binary MSE. Checked against
    (tests/ufm/test_features.py, depths 1-3): the best seeded GD run's objective is the deep linear
    orthogonal frame's (ufm.theory.imbalanced_mse_frame: nonnegative orthogonal class means pass the
    ReLU unchanged), and after every ReLU the features collapse to orthogonal class means with the
    frame's norms. H itself is not pinned (its class means' cosine differed between optimal runs)."""

    name: ClassVar[str] = "deep_relu"

    def transform(self, module, H):
        for layer in module.layers:
            H = (layer @ H).relu()
        return H

    def layer_outputs(self, module, H):
        out = [H]
        for layer in module.layers:
            out.append((layer @ out[-1]).relu())
        return out


# name -> the feature model's class (``train_ufm(features=NAME)``)
FEATURE_MODELS: dict[str, type[FeatureModel]] = {
    "free": FreeH, "layernorm": LayerNormH, "sphere": SphereH, "deep_linear": DeepLinear,
    "perturbed": Perturbed, "fixed_h": FixedH, "deep_relu": DeepReLU,
}
# train_ufm's and `collapse simulate`'s ``features`` names: the registry's, with "normalized" (the sphere
# on the features, the words or both) in place of "layernorm" and "sphere" (flags there)
FEATURE_NAMES = ("free", "deep_linear", "perturbed", "normalized", "fixed_h",
                 *(n for n in FEATURE_MODELS if n not in ("free", "deep_linear", "perturbed", "fixed_h", "layernorm", "sphere")))
