"""ufm.pairwise: the tiled all-pairs sweep: any tile size, class order or device gives the same
metrics, the tile is recorded, and a long sweep says how long it will take."""

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from tests.conftest import requires_cuda
from tests.ufm.conftest import drawn_stats
from tests.ufm.reference import DUAL_KEYS, METRIC_KEYS, samples
from ufm import collapse_metrics


@given(perm_seed=st.integers(0, 10_000), tile=st.integers(1, 45))
def test_class_permutation_and_tiling_invariance(perm_seed, tile):
    h, y, w, W = samples(seed=3)
    perm = np.random.default_rng(perm_seed).permutation(40)
    base = collapse_metrics(drawn_stats(h, y, w), W).to_dict()
    # Relabel class c as perm[c]: the classifier's row for c moves to perm[c] too.
    W_perm = np.empty_like(W)
    W_perm[perm] = W
    moved = collapse_metrics(drawn_stats(h, perm[y], w), W_perm, tile_size=tile).to_dict()
    for key in METRIC_KEYS + DUAL_KEYS:
        assert moved[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12), key


def test_tile_size_is_recorded_and_changes_nothing_else():
    h, y, w, W = samples(k=12, d=4, n=100)
    stats = drawn_stats(h, y, w, k=12)
    tiled, whole = collapse_metrics(stats, W, tile_size=5), collapse_metrics(stats, W)
    assert tiled.options["tile_size"] == 5 and whole.options["tile_size"] is None
    for key, value in whole.to_dict().items():
        if key not in ("options", "undefined") and value is not None:
            assert tiled.to_dict()[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_a_long_sweep_warns_with_its_expected_hours(monkeypatch):
    import ufm.metrics as metrics_module

    monkeypatch.setattr(metrics_module, "expected_sweep_seconds", lambda k, d, device: 1000 * 3600.0)
    stats = drawn_stats(*samples(k=5, d=3, n=40)[:3], k=5)
    with pytest.warns(UserWarning, match=r"5 kept classes \(D = 3\) is expected to take ~1000\.0 h on cpu"):
        collapse_metrics(stats)


@requires_cuda
@pytest.mark.gpu
def test_cuda_sweep_equals_cpu():
    h, y, w, W = samples()
    cpu = collapse_metrics(drawn_stats(h, y, w), W, riesz_s=1.0).to_dict()
    gpu = collapse_metrics(drawn_stats(h, y, w).to("cuda"), torch.as_tensor(W, device="cuda"), riesz_s=1.0,
                           tile_size=16).to_dict()
    for key in METRIC_KEYS + DUAL_KEYS:
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-9), key
