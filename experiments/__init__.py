"""Runnable reproductions, one module per figure or table: ``collapse experiment NAME``."""

# The experiments, registered once: name on the command line -> what it reproduces (for
# `collapse experiment --help`; kept here, so that listing them imports none of them). The module is
# the name with underscores (``module_of``); its ``main`` comes from ``_common.experiment``.
REGISTRY = {
    "etf": "balanced one-hot -> simplex ETF (NC1-NC3 against steps)",
    "seli": "imbalanced one-hot -> SELI; minority collapse against the imbalance ratio",
    "subspace-collapse": "Zhao et al.'s panels on a synthetic language of shared supports",
    "regularization-path": "||L_lambda||_* against ln(1/lambda), slope ||L_mm||_*",
    "implicit-bias": "plain GD without weight decay: ||L_t||_* against ln t, CE - H ~ c/t",
    "linguistic-collapse": "a grid of CLMs on Shakespeare, metrics against validation loss",
    "feature-collapse": "Laurent et al.: {uniform, Zipf} x {LayerNorm, none}, and the synonym language",
    "deep-linear": "imbalanced MSE, depths 0-3: the orthogonal frame in every layer",
    "perturbation": "Tirer et al. in their regime: Theorem 4.2 by an exact Jacobian, Corollary 3.2 at large beta",
    "mixup": "mixup UFM with a fixed ETF classifier: the features' span",
    "softmax-code": "normalized UFM with K > d + 1: rho(W) against the K-gon / simplex / cross-polytope",
    "linear-model": "fixed H, GD: cos(W_t, W^mm) rising toward 1",
    "semantic-geometry": "S~'s spectrum, learning order, orthant concepts; Brown words against POS",
    "convergence-regime": "a transformer trained to the entropy bound on Brown's finite contexts, next to the UFM",
    "label-smoothing": "Guo et al.: the smoothed CE's closed-form optimum; faster, stronger NC1 and its curvature",
    "depth-low-rank": "deep linear CE UFM: collapse against lower-rank codes by depth and K (Schatten-2/F ridge)",
}


def module_of(name: str) -> str:
    """The module that runs experiment ``name``."""
    return f"experiments.{name.replace('-', '_')}"
