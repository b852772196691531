"""ufm.classes: per-class rows (CDNV row means, nearest classes, dual vectors) reduced inside the
metrics' own pairwise sweep."""

import numpy as np
import pytest

from tests.ufm.conftest import drawn_stats
from tests.ufm.reference import naive_stats, samples
from ufm import collapse_metrics


def test_class_table_equals_a_dense_computation():
    """ufm.class_table against loops over a dense distance matrix (shares no code with the package)."""
    from ufm import class_table

    h, y, w, W = samples(seed=6)
    stats = drawn_stats(h, y, w)
    for options in (dict(), dict(cdnv_power=4.0, center="weighted", min_count=20, tile_size=7)):
        table = class_table(stats, W, **options)
        s = naive_stats(h, y, 40, w)
        kept = np.flatnonzero(s["sample_counts"] >= options.get("min_count", 1))
        mu, n, var = s["means"][kept], s["counts"][kept], s["var_traces"][kept]
        g = mu.mean(0) if options.get("center", "uniform") == "uniform" else (n[:, None] * mu).sum(0) / n.sum()
        m, wk = mu - g, W[kept]
        p = options.get("cdnv_power", 2.0)
        assert table.class_id.tolist() == kept.tolist()
        np.testing.assert_allclose(table.count, n, rtol=1e-12)
        np.testing.assert_allclose(table.norm, np.linalg.norm(m, axis=1), rtol=1e-10)
        np.testing.assert_allclose(table.dot, (wk * m).sum(1), rtol=1e-10)
        np.testing.assert_allclose(table.nc3_cos, [wk[c] @ m[c] / np.linalg.norm(wk[c]) / np.linalg.norm(m[c])
                                                   for c in range(len(kept))], rtol=1e-10)
        np.testing.assert_allclose(table.dual_distance, [np.linalg.norm(wk[c] / np.linalg.norm(wk[c]) - m[c] / np.linalg.norm(m[c]))
                                                         for c in range(len(kept))], rtol=1e-10)
        for c in range(len(kept)):
            others = [j for j in range(len(kept)) if j != c]
            d = np.array([np.linalg.norm(mu[c] - mu[j]) for j in others])
            assert table.cdnv_row_mean[c] == pytest.approx(np.mean((var[c] + var[others]) / (2 * d ** p)), rel=1e-8)
            assert table.nearest_class[c] == kept[others[int(np.argmin(d))]]
            assert table.nearest_distance[c] == pytest.approx(d.min(), rel=1e-8)
        assert sorted(table.frequency_rank.tolist()) == list(range(1, len(kept) + 1))
        assert table.count[table.frequency_rank == 1][0] == n.max()
    lines = table.to_csv().splitlines()
    assert lines[0].startswith("class_id,count,frequency_rank,norm,nc3_cos,dot,dual_distance") and len(lines) == len(kept) + 1


def test_metrics_and_classes_share_one_sweep_and_equal_the_two_calls():
    """The per-class rows ride along the metrics' own sweep: the metrics are the same numbers as
    collapse_metrics', the table the same as class_table's."""
    from ufm import class_table, metrics_and_classes

    h, y, w, W = samples(seed=7)
    stats = drawn_stats(h, y, w)
    options = dict(cdnv_power=4.0, center="weighted", min_count=20, tile_size=9)
    metrics, table = metrics_and_classes(stats, W, **options)
    assert metrics.to_dict() == collapse_metrics(stats, W, **options).to_dict()
    alone = class_table(stats, W, **{k: v for k, v in options.items()})
    for name in ("cdnv_row_mean", "nearest_class", "nearest_distance", "nc3_cos", "frequency_rank"):
        np.testing.assert_array_equal(getattr(table, name), getattr(alone, name))
    # Tiles of 9 and of 1024 give the same per-class rows (each pair visited once, from either side).
    wide = class_table(stats, W, cdnv_power=4.0, center="weighted", min_count=20)
    np.testing.assert_allclose(wide.cdnv_row_mean, table.cdnv_row_mean, rtol=1e-12)
    np.testing.assert_array_equal(wide.nearest_class, table.nearest_class)
