import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from scipy.stats import ortho_group

from tests.conftest import requires_cuda
from tests.ufm.reference import naive_metrics, naive_stats
from ufm import MetricOptions, PRESETS, collapse_metrics, stats_from_features
from ufm.metrics import nc1_trace_ratio


def samples(k=40, d=16, n=800, seed=0, weighted=True):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # every class seen
    h = rng.normal(size=(n, d)) * 0.7 + rng.normal(size=(k, d))[y] * 2
    w = rng.uniform(0.2, 3.0, n) if weighted else None
    classifier = rng.normal(size=(k, d)) + rng.normal(size=(k, d))
    return h, y, w, classifier


METRIC_KEYS = [
    "nc1_trace_ratio", "nc1_quotient", "cdnv_mean", "cdnv_std", "norm_mean", "norm_cov", "log_norm_cov", "norm_sq_cov", "cos_mean",
    "cos_std", "etf_error", "gnc_log_mean", "gnc_log_std",
]
NC3_KEYS = ["dual_cos_mean", "dual_cos_std", "unc_cov", "dual_error"]
# The peer library's NC3 variants: dot products (not scale-free) and distances of the unit vectors.
DUAL_KEYS = NC3_KEYS + ["dot_mean", "dot_std", "unc_dot_cov", "dual_dist_mean", "dual_dist_std"]


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(cdnv_power=4.0, center="uniform"),
        dict(center="weighted", riesz_s=1.5),
        dict(min_count=20, tile_size=7),
        dict(cdnv_power=3.0, tile_size=1),
        dict(PRESETS["lc2024"]),
        dict(spread_ddof=1, center="weighted", min_count=20),
    ],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_metrics_equal_naive_float64(options, weighted):
    h, y, w, W = samples(weighted=weighted)
    got = collapse_metrics(stats_from_features(h, y, 40, w), W, **options).to_dict()
    want = naive_metrics(h, y, 40, w, W, **{k: v for k, v in options.items() if k != "tile_size"})
    assert got["num_classes_kept"] == want["num_classes_kept"]
    assert got["num_pairs"] == want["num_pairs"]
    keys = METRIC_KEYS + DUAL_KEYS + (["riesz_mean", "riesz_std"] if "riesz_s" in options else [])
    for key in keys:
        assert got[key] == pytest.approx(want[key], rel=1e-9), key
    if options.get("min_count") == 20:
        assert 2 <= got["num_classes_kept"] < 40  # the option really dropped classes


def test_options_and_presets_are_recorded():
    h, y, w, W = samples()
    stats = stats_from_features(h, y, 40, w)
    lc = collapse_metrics(stats, W, **PRESETS["lc2024"])
    assert lc.options == {"cdnv_power": 4.0, "center": "uniform", "min_count": 1, "tile_size": None,
                          "riesz_s": None, "spread_ddof": 1}
    assert MetricOptions.preset("lc2024") == MetricOptions(cdnv_power=4.0, center="uniform", min_count=1,
                                                          spread_ddof=1)
    assert lc.cdnv_mean != collapse_metrics(stats, W).cdnv_mean
    assert collapse_metrics(stats).dual_error is None
    with pytest.raises(ValueError, match="unknown metric preset 'nope'; known: papyan2020, lc2024$"):
        MetricOptions.preset("nope")
    # Every computed metric finite: only the options left unset are explained (a survivor of the
    # mutation run turned `or` into `and`, which explains every finite number too).
    want = {"riesz_mean": "riesz_s was not set", "riesz_std": "riesz_s was not set"}
    assert lc.undefined() == want and lc.to_dict()["undefined"] == want


def test_lc2024_spreads_are_bessel_corrected_and_pairs_are_not():
    """Wu & Papyan's code: spreads over classes with ddof 1 (a factor sqrt(K/(K-1))), pairs ddof 0."""
    h, y, w, W = samples()
    stats = stats_from_features(h, y, 40, w)
    base = collapse_metrics(stats, W, cdnv_power=4.0).to_dict()
    lc = collapse_metrics(stats, W, **PRESETS["lc2024"]).to_dict()
    factor = math.sqrt(40 / 39)
    for key in ("norm_cov", "log_norm_cov", "norm_sq_cov", "dual_cos_std", "unc_cov"):
        assert lc[key] == pytest.approx(base[key] * factor, rel=1e-12), key
    for key in ("cdnv_mean", "cdnv_std", "cos_mean", "cos_std", "gnc_log_mean", "gnc_log_std", "etf_error",
                "dual_error", "norm_mean", "dual_cos_mean", "nc1_trace_ratio"):
        assert lc[key] == pytest.approx(base[key], rel=1e-12), key
    # The squared-norm CoV is another number than the CoV of norms (their table reports it).
    assert abs(lc["norm_sq_cov"] - lc["norm_cov"]) > 0.05 * lc["norm_cov"]
    with pytest.raises(ValueError, match="spread_ddof must be 0 or 1"):
        collapse_metrics(stats, spread_ddof=2)


def _stats(h, y, w, k=40):
    return stats_from_features(h, y, k, w)


@given(perm_seed=st.integers(0, 10_000), tile=st.integers(1, 45))
def test_class_permutation_and_tiling_invariance(perm_seed, tile):
    h, y, w, W = samples(seed=3)
    perm = np.random.default_rng(perm_seed).permutation(40)
    base = collapse_metrics(_stats(h, y, w), W).to_dict()
    # Relabel class c as perm[c]: the classifier's row for c moves to perm[c] too.
    W_perm = np.empty_like(W)
    W_perm[perm] = W
    moved = collapse_metrics(_stats(h, perm[y], w), W_perm, tile_size=tile).to_dict()
    for key in METRIC_KEYS + DUAL_KEYS:
        assert moved[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12), key


@given(seed=st.integers(0, 10_000))
def test_rotation_invariance(seed):
    h, y, w, W = samples(seed=4)
    q = ortho_group.rvs(16, random_state=seed)
    base = collapse_metrics(_stats(h, y, w), W, riesz_s=1.0).to_dict()
    rot = collapse_metrics(_stats(h @ q.T, y, w), W @ q.T, riesz_s=1.0).to_dict()
    for key in METRIC_KEYS + DUAL_KEYS + ["riesz_mean", "riesz_std"]:
        assert rot[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12), key


SCALE_FREE = [
    "nc1_trace_ratio", "nc1_quotient", "cdnv_mean", "cdnv_std", "norm_cov", "cos_mean", "cos_std", "etf_error",
    "gnc_log_mean", "gnc_log_std", *NC3_KEYS, "unc_dot_cov", "dual_dist_mean", "dual_dist_std",
]


@given(scale=st.floats(1e-3, 1e3), w_scale=st.floats(1e-3, 1e3))
def test_scale_free_metrics_ignore_global_scaling(scale, w_scale):
    h, y, w, W = samples(seed=5)
    base = collapse_metrics(_stats(h, y, w), W).to_dict()  # CDNV power 2 is scale-free
    scaled = collapse_metrics(_stats(h * scale, y, w), W * w_scale).to_dict()
    for key in SCALE_FREE:
        assert scaled[key] == pytest.approx(base[key], rel=1e-8, abs=1e-12), key
    assert scaled["norm_mean"] == pytest.approx(base["norm_mean"] * scale, rel=1e-10)


def simplex_etf(k: int, d: int, seed: int = 0) -> np.ndarray:
    """k unit vectors in R^d (d >= k-1) with pairwise cosine -1/(k-1), randomly rotated."""
    e = np.eye(k) - 1.0 / k  # rows: a simplex ETF in the (k-1)-dim subspace orthogonal to 1
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    basis = np.linalg.svd(e)[2][: k - 1]  # (k-1, k) orthonormal rows spanning the rows of e
    coords = e @ basis.T  # (k, k-1)
    q = ortho_group.rvs(d, random_state=seed)[: k - 1]  # (k-1, d)
    return coords @ q


def test_simplex_etf_and_perfect_collapse_are_exact():
    k, d = 10, 12
    means = simplex_etf(k, d) * 5.0 + 1.0  # any offset: the uniform global mean removes it
    y = np.repeat(np.arange(k), 4)
    m = collapse_metrics(_stats(means[y], y, None, k), means - means.mean(0))
    assert m.etf_error == pytest.approx(0.0, abs=1e-12)
    assert m.cos_mean == pytest.approx(-1 / (k - 1), abs=1e-13) and m.etf_cos_target == -1 / (k - 1)
    assert m.cos_std == pytest.approx(0.0, abs=1e-13)
    assert m.norm_cov == pytest.approx(0.0, abs=1e-13)
    assert m.cdnv_mean == 0.0 and m.cdnv_std == 0.0  # every class collapsed to its mean
    assert m.nc1_trace_ratio == 0.0
    assert m.dual_error == pytest.approx(0.0, abs=1e-12)
    assert m.dual_cos_mean == pytest.approx(1.0, abs=1e-13) and m.unc_cov == pytest.approx(0.0, abs=1e-12)
    # A simplex ETF's normalized means are sqrt(2k/(k-1)) apart: the log kernel is constant.
    assert m.gnc_log_mean == pytest.approx(-0.5 * math.log(2 * k / (k - 1)), abs=1e-13)


def test_more_classes_than_dimensions_gives_finite_gnc():
    h, y, w, _ = samples(k=50, d=3, n=500)
    m = collapse_metrics(_stats(h, y, w, k=50), riesz_s=1.0)
    assert m.num_classes_kept == 50 > 3 + 1
    for v in (m.gnc_log_mean, m.gnc_log_std, m.riesz_mean, m.riesz_std, m.etf_error):
        assert math.isfinite(v)
    assert m.etf_error > 0.1  # no simplex ETF exists in 3 dimensions for 50 classes


def test_coincident_means_give_infinite_cdnv():
    h = np.array([[0.0, 1.0], [0.0, 3.0], [0.0, 1.0], [0.0, 3.0], [5.0, 0.0], [6.0, 0.0]])
    m = collapse_metrics(_stats(h, [0, 0, 1, 1, 2, 2], None, k=3))
    assert m.cdnv_mean == math.inf
    reasons = m.undefined()
    assert reasons["cdnv_mean"] == "two kept classes have the same mean (distance 0): infinite CDNV"
    assert reasons["dual_error"] == reasons["unc_cov"] == "no classifier was given"


def test_means_at_the_global_mean_say_why_they_are_undefined():
    # Every class mean at the origin: no between-class scatter, no ETF error to normalize.
    h = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    m = collapse_metrics(_stats(h, [0, 0, 1, 1], None, k=2), center="weighted")
    assert math.isnan(m.etf_error)
    reasons = m.undefined()
    assert reasons["etf_error"] == "every class mean equals the global mean: M M^T is zero"
    assert reasons["gnc_log_mean"].endswith("or a mean equals the global mean")
    assert reasons["cos_mean"] == "a kept class mean equals the global mean (no direction), or all do (no spread)"
    assert reasons["cdnv_mean"] == "two kept classes have the same mean (distance 0): infinite CDNV"
    assert reasons["dual_cos_mean"] == reasons["dual_error"] == "no classifier was given"
    # The pseudo-inverse of a zero S_B is zero: Tr(S_W S_B^+) = 0, not 0/0.
    assert nc1_trace_ratio(torch.eye(2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64)) == 0.0


def test_tile_size_is_recorded_and_changes_nothing_else():
    h, y, w, W = samples(k=12, d=4, n=100)
    stats = _stats(h, y, w, k=12)
    tiled, whole = collapse_metrics(stats, W, tile_size=5), collapse_metrics(stats, W)
    assert tiled.options["tile_size"] == 5 and whole.options["tile_size"] is None
    for key, value in whole.to_dict().items():
        if key not in ("options", "undefined") and value is not None:
            assert tiled.to_dict()[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_a_long_sweep_warns_with_its_expected_hours(monkeypatch):
    import ufm.metrics as metrics_module

    monkeypatch.setattr(metrics_module, "expected_sweep_seconds", lambda k, d, device: 1000 * 3600.0)
    stats = _stats(*samples(k=5, d=3, n=40)[:3], k=5)
    with pytest.warns(UserWarning, match=r"5 kept classes \(D = 3\) is expected to take ~1000\.0 h on cpu"):
        collapse_metrics(stats)


def test_bad_inputs():
    h, y, w, W = samples()
    stats = _stats(h, y, w)
    with pytest.raises(ValueError, match=r"classifier must have shape \(40, 16\)"):
        collapse_metrics(stats, W[:5])
    bad = W.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="classifier contains 1 NaN"):
        collapse_metrics(stats, bad)
    with pytest.raises(ValueError, match="only 1 class"):
        collapse_metrics(_stats(h[:5], np.zeros(5, int), None, k=3))
    with pytest.raises(ValueError, match="only 0 class"):
        collapse_metrics(stats, min_count=10_000)
    with pytest.raises(ValueError, match="center must be 'uniform' or 'weighted'"):
        collapse_metrics(stats, center="median")
    with pytest.raises(ValueError, match="min_count must be an integer >= 1"):
        collapse_metrics(stats, min_count=0)
    with pytest.raises(ValueError, match="cdnv_power must be a positive number"):
        collapse_metrics(stats, cdnv_power=-1)
    with pytest.raises(TypeError, match="stats must be ClassStats"):
        collapse_metrics(h)


@requires_cuda
@pytest.mark.gpu
def test_cuda_sweep_equals_cpu():
    h, y, w, W = samples()
    cpu = collapse_metrics(_stats(h, y, w), W, riesz_s=1.0).to_dict()
    gpu = collapse_metrics(_stats(h, y, w).to("cuda"), torch.as_tensor(W, device="cuda"), riesz_s=1.0,
                           tile_size=16).to_dict()
    for key in METRIC_KEYS + DUAL_KEYS:
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-9), key


@given(
    # D >= 2: in one dimension three centered means always share a direction, so the log kernel is
    # infinite by construction (reported as NaN with its reason; a degenerate case, not a property).
    k=st.integers(2, 12), d=st.integers(2, 6), extra=st.integers(0, 60), seed=st.integers(0, 2**31 - 1),
    zero_share=st.sampled_from([0.0, 0.2, 0.5]), empty=st.integers(0, 3), min_count=st.integers(1, 3),
    center=st.sampled_from(["uniform", "weighted"]), ddof=st.sampled_from([0, 1]), tile=st.integers(1, 13),
)
def test_drawn_data_equals_the_naive_reference(k, d, extra, seed, zero_share, empty, min_count, center, ddof, tile):
    """Hypothesis draws the data too: sizes, weights with zeros, empty classes, min_count, center."""
    from hypothesis import assume

    rng = np.random.default_rng(seed)
    present = k - min(empty, k - 2)  # the last classes get no samples at all
    y = np.concatenate([np.arange(present), rng.integers(0, present, extra)])
    h = rng.normal(size=(len(y), d)) + rng.normal(size=(k, d))[y] * 2
    w = rng.uniform(0.2, 2.0, len(y))
    w[rng.random(len(y)) < zero_share] = 0.0
    W = rng.normal(size=(k, d))
    keep = w > 0
    assume(keep.any())  # all weights 0: no statistics at all (a documented error)
    stats = stats_from_features(h, y, k, w)
    assume(int((stats.sample_counts >= min_count).sum()) >= 2)
    got = collapse_metrics(stats, W, cdnv_power=2.0, center=center, min_count=min_count, spread_ddof=ddof,
                           tile_size=tile).to_dict()
    want = naive_metrics(h[keep], y[keep], k, w[keep], W, center=center, min_count=min_count, spread_ddof=ddof)
    assert got["num_classes_kept"] == want["num_classes_kept"]
    for key in METRIC_KEYS + DUAL_KEYS:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-7, atol=1e-10, equal_nan=True, err_msg=key)


@given(scale=st.floats(1e-2, 1e2), w_scale=st.floats(1e-2, 1e2))
def test_dot_products_scale_with_both_factors(scale, w_scale):
    h, y, w, W = samples(seed=5)
    base = collapse_metrics(_stats(h, y, w), W).to_dict()
    scaled = collapse_metrics(_stats(h * scale, y, w), W * w_scale).to_dict()
    for key in ("dot_mean", "dot_std"):
        assert scaled[key] == pytest.approx(base[key] * scale * w_scale, rel=1e-9), key


def test_class_table_equals_a_dense_computation():
    """ufm.class_table against loops over a dense distance matrix (shares no code with the package)."""
    from ufm import class_table

    h, y, w, W = samples(seed=6)
    stats = _stats(h, y, w)
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
    stats = _stats(h, y, w)
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


def test_identical_class_means_give_nan_not_an_exception():
    h = np.array([[1.0, 2.0]] * 4)
    m = collapse_metrics(stats_from_features(h, [0, 0, 1, 1], 2), np.ones((2, 2)))
    assert np.isnan(m.norm_cov) and np.isnan(m.cos_mean) and np.isnan(m.etf_error)
    assert np.isnan(m.cdnv_mean)  # 0 / 0: both variances 0 and the distance 0


def test_a_vocabulary_sized_sweep_states_its_expected_time():
    from ufm.metrics import expected_sweep_seconds

    cpu = torch.device("cpu")
    assert expected_sweep_seconds(50_257, 768, cpu) == pytest.approx(31.5, rel=1e-9)  # the benchmark's figure
    assert expected_sweep_seconds(1_000_000, 768, cpu) / 3600 > 3  # K ~ 10^6: hours
    rng = np.random.default_rng(0)
    stats = stats_from_features(rng.normal(size=(30, 3)), np.arange(30), 30)
    import ufm.metrics as metrics_module

    with pytest.warns(UserWarning, match=r"all-pairs sweep over 30 kept classes .* expected to take"):
        old = metrics_module.LONG_SWEEP_SECONDS
        metrics_module.LONG_SWEEP_SECONDS = 0.0
        try:
            collapse_metrics(stats)
        finally:
            metrics_module.LONG_SWEEP_SECONDS = old
