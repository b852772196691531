"""Collapse Lab's science core: statistics, neural-collapse metrics, the NTP simulator and theory."""

from .metrics import PRESETS, CollapseMetrics, MetricOptions, collapse_metrics, nc1_trace_ratio
from .nc4 import NC4Accumulator, nc4_agreement, nearest_class_mean
from .stats import ClassStats, StatsAccumulator, StatsFileError, stats_from_features

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ClassStats",
    "CollapseMetrics",
    "MetricOptions",
    "NC4Accumulator",
    "StatsAccumulator",
    "StatsFileError",
    "collapse_metrics",
    "nc1_trace_ratio",
    "nc4_agreement",
    "nearest_class_mean",
    "stats_from_features",
]
