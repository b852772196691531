"""The UFM family's classifiers: the word embeddings W (V, d) that meet the features, learned or fixed,
with an optional free bias b (V,) in the logits (never regularized).

    LearnedClassifier()                 W trained, + (lambda_W/2)||W||^2
    LearnedClassifier(norm="layernorm") rows LN(w_z), W not regularized (Laurent et al. 2024)
    LearnedClassifier(norm="sphere")    rows radius w_z/||w_z||, W not regularized (Jiang et al. 2024)
    FixedClassifier(embeddings)         W frozen at ``embeddings`` (e.g. a simplex ETF: ufm.theory.etf_classifier)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .features import as_matrix, layer_norm_columns, sphere_columns
from .model import hold
from .theory import etf_classifier


@dataclass(frozen=True)
class LearnedClassifier:
    bias: bool = False
    norm: str | None = None  # None | "layernorm" | "sphere"
    radius: float = 1.0  # norm "sphere": the rows' norm
    trains: bool = field(default=True, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.norm not in (None, "layernorm", "sphere"):
            raise ValueError(f"norm must be None, 'layernorm' or 'sphere', got {self.norm!r}")
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"radius must be positive, got {self.radius}")

    def start(self, drawn: torch.Tensor, vocab_size: int, dim: int) -> torch.Tensor:
        return drawn

    def words(self, W: torch.Tensor) -> torch.Tensor:
        if self.norm == "layernorm":
            return layer_norm_columns(W.T).T
        return sphere_columns(W.T, self.radius).T if self.norm == "sphere" else W

    def penalty_terms(self, W: torch.Tensor, weight_decay: float) -> list:
        return [(0.5 * weight_decay) * W.square().sum()] if self.norm is None else []

    def describe(self) -> dict:
        return dict(name="learned", bias=self.bias, norm=self.norm, radius=self.radius)


@dataclass(frozen=True)
class FixedClassifier:
    embeddings: np.ndarray | torch.Tensor | str = field(repr=False)  # (V, d), or "etf": a simplex ETF (d >= V - 1)
    bias: bool = False
    trains: bool = field(default=False, init=False, repr=False)

    def start(self, drawn: torch.Tensor, vocab_size: int, dim: int) -> torch.Tensor:
        if isinstance(self.embeddings, str):
            if self.embeddings != "etf":
                raise ValueError(f"classifier must be a (V, d) array or 'etf', got {self.embeddings!r}")
            return torch.as_tensor(etf_classifier(vocab_size, dim), dtype=drawn.dtype)
        return as_matrix(self.embeddings, "classifier", (vocab_size, dim), "(V, d)").to(drawn.dtype).clone()

    def words(self, W: torch.Tensor) -> torch.Tensor:
        return W

    def penalty_terms(self, W: torch.Tensor, weight_decay: float) -> list:
        return []

    def describe(self) -> dict:
        return dict(name="fixed", bias=self.bias)


Classifier = LearnedClassifier | FixedClassifier


class Words(torch.nn.Module):
    """A classifier built for a problem: W (V, d) (a parameter, or a buffer when fixed) and the bias."""

    def __init__(self, classifier: Classifier, W: torch.Tensor):
        super().__init__()
        self.classifier = classifier
        hold(self, "W", W, trains=classifier.trains)
        self.bias = torch.nn.Parameter(torch.zeros(W.shape[0], dtype=W.dtype)) if classifier.bias else None

    def words(self) -> torch.Tensor:
        return self.classifier.words(self.W)

    def penalty_terms(self, weight_decay: float) -> list:
        return self.classifier.penalty_terms(self.W, weight_decay) if self.classifier.trains else []
