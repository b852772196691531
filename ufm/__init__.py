"""Collapse Lab's science core: statistics, neural-collapse metrics, the NTP simulator and theory.

``ufm.convex`` (cvxpy) is imported on first use: it costs ~2 s that most callers never need.
"""

import importlib

from . import feature_collapse, losses, targets, theory
from .metrics import PRESETS, CollapseMetrics, MetricOptions, collapse_metrics, nc1_trace_ratio, variability_ratio
from .nc4 import NC4Accumulator, nc4_agreement, nearest_class_mean
from .stats import ClassStats, StatsAccumulator, StatsFileError, stats_from_features
from .targets import NTPTargets
from .train import TrainConfig, UFMResult, train_ufm

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ClassStats",
    "CollapseMetrics",
    "MetricOptions",
    "NC4Accumulator",
    "NTPTargets",
    "StatsAccumulator",
    "StatsFileError",
    "TrainConfig",
    "UFMResult",
    "collapse_metrics",
    "convex",
    "feature_collapse",
    "losses",
    "nc1_trace_ratio",
    "nc4_agreement",
    "nearest_class_mean",
    "stats_from_features",
    "targets",
    "theory",
    "train_ufm",
    "variability_ratio",
]


def __getattr__(name: str):
    if name == "convex":
        return importlib.import_module(".convex", __name__)
    raise AttributeError(f"module 'ufm' has no attribute {name!r}")
