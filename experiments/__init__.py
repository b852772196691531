"""Runnable reproductions, one module per figure or table: ``collapse experiment NAME``."""

# name on the command line -> module in this package
REGISTRY = {
    "etf": "experiments.etf",
    "seli": "experiments.seli",
    "subspace-collapse": "experiments.subspace_collapse",
    "regularization-path": "experiments.regularization_path",
    "implicit-bias": "experiments.implicit_bias",
    "linguistic-collapse": "experiments.linguistic_collapse",
    "feature-collapse": "experiments.feature_collapse",
    "deep-linear": "experiments.deep_linear",
    "perturbation": "experiments.perturbation",
    "mixup": "experiments.mixup",
    "softmax-code": "experiments.softmax_code",
    "linear-model": "experiments.linear_model",
    "semantic-geometry": "experiments.semantic_geometry",
    "convergence-regime": "experiments.convergence_regime",
}
