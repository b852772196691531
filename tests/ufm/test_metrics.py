import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from scipy.stats import ortho_group

from tests.ufm.conftest import drawn_stats
from tests.ufm.reference import DUAL_KEYS, METRIC_KEYS, NC3_KEYS, naive_metrics, samples
from ufm import MetricOptions, PRESETS, StatsAccumulator, collapse_metrics, ood_orthogonality, stats_from_features
from ufm.metrics import nc1_trace_ratio


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
        dict(min_count=12, max_count=22),
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
    if options.get("min_count") == 20 or "max_count" in options:
        assert 2 <= got["num_classes_kept"] < 40  # the option really dropped classes


def test_options_and_presets_are_recorded():
    h, y, w, W = samples()
    stats = stats_from_features(h, y, 40, w)
    lc = collapse_metrics(stats, W, **PRESETS["lc2024"])
    assert lc.options == {"cdnv_power": 4.0, "center": "uniform", "min_count": 1, "tile_size": None,
                          "riesz_s": None, "spread_ddof": 1, "max_count": None}
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


@given(seed=st.integers(0, 10_000))
def test_rotation_invariance(seed):
    h, y, w, W = samples(seed=4)
    q = ortho_group.rvs(16, random_state=seed)
    base = collapse_metrics(drawn_stats(h, y, w), W, riesz_s=1.0).to_dict()
    rot = collapse_metrics(drawn_stats(h @ q.T, y, w), W @ q.T, riesz_s=1.0).to_dict()
    for key in METRIC_KEYS + DUAL_KEYS + ["riesz_mean", "riesz_std"]:
        assert rot[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12), key


SCALE_FREE = [
    "nc1_trace_ratio", "nc1_quotient", "nc1_svd", "cdnv_mean", "cdnv_std", "norm_cov", "cos_mean", "cos_std", "etf_error",
    "gnc_log_mean", "gnc_log_std", *NC3_KEYS, "unc_dot_cov", "dual_dist_mean", "dual_dist_std",
]


@given(scale=st.floats(1e-3, 1e3), w_scale=st.floats(1e-3, 1e3))
def test_scale_free_metrics_ignore_global_scaling(scale, w_scale):
    h, y, w, W = samples(seed=5)
    base = collapse_metrics(drawn_stats(h, y, w), W).to_dict()  # CDNV power 2 is scale-free
    scaled = collapse_metrics(drawn_stats(h * scale, y, w), W * w_scale).to_dict()
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
    m = collapse_metrics(drawn_stats(means[y], y, None, k), means - means.mean(0))
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
    m = collapse_metrics(drawn_stats(h, y, w, k=50), riesz_s=1.0)
    assert m.num_classes_kept == 50 > 3 + 1
    for v in (m.gnc_log_mean, m.gnc_log_std, m.riesz_mean, m.riesz_std, m.etf_error):
        assert math.isfinite(v)
    assert m.etf_error > 0.1  # no simplex ETF exists in 3 dimensions for 50 classes


def test_coincident_means_give_infinite_cdnv():
    h = np.array([[0.0, 1.0], [0.0, 3.0], [0.0, 1.0], [0.0, 3.0], [5.0, 0.0], [6.0, 0.0]])
    m = collapse_metrics(drawn_stats(h, [0, 0, 1, 1, 2, 2], None, k=3))
    assert m.cdnv_mean == math.inf
    reasons = m.undefined()
    assert reasons["cdnv_mean"] == "two kept classes have the same mean (distance 0): infinite CDNV"
    assert reasons["dual_error"] == reasons["unc_cov"] == "no classifier was given"


def test_means_at_the_global_mean_say_why_they_are_undefined():
    # Every class mean at the origin: no between-class scatter, no ETF error to normalize.
    h = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    m = collapse_metrics(drawn_stats(h, [0, 0, 1, 1], None, k=2), center="weighted")
    assert math.isnan(m.etf_error)
    reasons = m.undefined()
    assert reasons["etf_error"] == "every class mean equals the global mean: M M^T is zero"
    assert reasons["gnc_log_mean"].endswith("or a mean equals the global mean")
    assert reasons["cos_mean"] == "a kept class mean equals the global mean (no direction), or all do (no spread)"
    assert reasons["cdnv_mean"] == "two kept classes have the same mean (distance 0): infinite CDNV"
    assert reasons["dual_cos_mean"] == reasons["dual_error"] == "no classifier was given"
    # The pseudo-inverse of a zero S_B is zero: Tr(S_W S_B^+) = 0, not 0/0.
    assert nc1_trace_ratio(torch.eye(2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64)) == 0.0


def test_bad_inputs():
    h, y, w, W = samples()
    stats = drawn_stats(h, y, w)
    with pytest.raises(ValueError, match=r"classifier must have shape \(40, 16\)"):
        collapse_metrics(stats, W[:5])
    bad = W.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="classifier contains 1 NaN"):
        collapse_metrics(stats, bad)
    with pytest.raises(ValueError, match="only 1 class"):
        collapse_metrics(drawn_stats(h[:5], np.zeros(5, int), None, k=3))
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
    base = collapse_metrics(drawn_stats(h, y, w), W).to_dict()
    scaled = collapse_metrics(drawn_stats(h * scale, y, w), W * w_scale).to_dict()
    for key in ("dot_mean", "dot_std"):
        assert scaled[key] == pytest.approx(base[key] * scale * w_scale, rel=1e-9), key


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


def test_sparse_statistics_give_the_dense_metrics_with_the_full_classifier():
    """Statistics that hold only the classes seen, measured against a classifier with a row per
    class of the vocabulary, give the dense statistics' metrics (rows picked by class id)."""
    h, y, w, W = samples()
    rng = np.random.default_rng(4)
    ids = np.sort(rng.choice(5000, 40, replace=False))
    W_big = rng.normal(size=(5000, W.shape[1]))
    W_big[ids] = W
    sparse = StatsAccumulator(5000, h.shape[1], sparse=True).update(h, ids[y], w).compute()
    assert sparse.num_classes == 40
    dense = collapse_metrics(stats_from_features(h, y, 40, w), W, **PRESETS["lc2024"]).to_dict()
    got = collapse_metrics(sparse, W_big, **PRESETS["lc2024"]).to_dict()
    for key in METRIC_KEYS + DUAL_KEYS:
        assert got[key] == pytest.approx(dense[key], rel=1e-12), key
    with pytest.raises(ValueError, match=r"classifier must have shape \(5000, 16\)"):
        collapse_metrics(sparse, W)


def test_nc1_svd_is_k_times_the_trace_ratio_at_full_rank_and_max_count_is_checked():
    h, y, w, W = samples()
    m = collapse_metrics(stats_from_features(h, y, 40, w))
    assert m.nc1_svd == pytest.approx(40 * m.nc1_trace_ratio, rel=1e-9)  # S_B has rank min(K-1, D) = 16
    with pytest.raises(ValueError, match="max_count=3 is below min_count=5"):
        MetricOptions(min_count=5, max_count=3)


@pytest.mark.parametrize("center", ["uniform", "weighted"])
def test_nc5_equals_a_direct_numpy_computation(center):
    """NC5 (NECO): the mean |cos| between centered class means and the centered OOD mean."""
    h, y, w, _ = samples()
    stats = stats_from_features(h, y, 40, w)
    ood = np.random.default_rng(9).normal(size=(500, 16)) + 0.3  # (N_ood, D)
    mu = stats.means.numpy()
    n = stats.counts.numpy()
    g = mu.mean(0) if center == "uniform" else (n[:, None] * mu).sum(0) / n.sum()
    m, o = mu - g, ood.mean(0) - g
    want = np.mean(np.abs(m @ o) / (np.linalg.norm(m, axis=1) * np.linalg.norm(o)))
    got = ood_orthogonality(stats, ood.mean(0), center=center)
    assert got == pytest.approx(want, rel=1e-12)
    # Four classes span 3 directions of R^16: an OOD mean orthogonal to them scores 0, one along
    # a class direction scores the mean |cos| of that direction with the others.
    few = stats_from_features(h[y < 4], y[y < 4], 4)
    mu4 = few.means.numpy()
    m4 = mu4 - mu4.mean(0)
    q, _ = np.linalg.qr(np.concatenate([m4.T, np.eye(16)], axis=1))  # q[:, 3:] is orthogonal to the means
    assert ood_orthogonality(few, mu4.mean(0) + 5 * q[:, 5]) == pytest.approx(0.0, abs=1e-12)
    cos = m4 @ m4[0] / (np.linalg.norm(m4, axis=1) * np.linalg.norm(m4[0]))
    assert ood_orthogonality(few, mu4.mean(0) + 2 * m4[0]) == pytest.approx(np.abs(cos).mean(), rel=1e-12)
