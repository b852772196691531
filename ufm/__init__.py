"""Collapse Lab's science core: statistics, neural-collapse metrics, the NTP simulator and theory.

Names are loaded on first use (PEP 562): ``import ufm`` costs nothing, so a command line that only
parses its flags never loads torch, and ``ufm.convex`` (cvxpy, ~2 s) is loaded only by its callers.
"""

from ._lazy import lazy_names

__version__ = "0.1.0"

# public name -> the module that defines it
_NAMES = {
    "PRESETS": "presets",
    "TableAnalysis": "analysis",
    "TableError": "analysis",
    "analyze_table": "analysis",
    "read_table": "analysis",
    "resolve_device": "validate",
    "ClassTable": "classes",
    "class_table": "classes",
    "metrics_and_classes": "classes",
    "CollapseMetrics": "metrics",
    "MetricOptions": "metrics",
    "collapse_metrics": "metrics",
    "nc1_trace_ratio": "metrics",
    "variability_ratio": "metrics",
    "ood_orthogonality": "metrics",
    "nc1_svd": "metrics",
    "NC4Accumulator": "nc4",
    "nc4_agreement": "nc4",
    "nearest_class_mean": "nc4",
    "ClassRows": "stats",
    "ClassStats": "stats",
    "StatsAccumulator": "stats",
    "StatsFileError": "stats",
    "stats_from_features": "stats",
    "NTPTargets": "targets",
    "FitOptions": "fit",
    "TrainConfig": "train",
    "UFMResult": "train",
    "train_ufm": "train",
}
_MODULES = ("convex", "feature_collapse", "losses", "targets", "theory")

__all__ = sorted([*_NAMES, *_MODULES])

__getattr__, __dir__ = lazy_names(__name__, _NAMES, _MODULES)
