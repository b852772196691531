"""The names outside checks call, with the shapes they promise."""

import numpy as np
import pytest

import ufm


def test_public_names_and_shapes():
    P = np.array([[0.5, 0.0, 1.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    t = ufm.NTPTargets.from_arrays(np.ones(3) / 3, P)
    assert ufm.targets.one_hot([2, 3]).num_contexts == 5
    assert ufm.convex.ntp_svm(t.support()).shape == (3, 3)
    assert ufm.convex.solve_logits(t, 0.1).shape == (3, 3)
    assert ufm.theory.sparse_component(t).shape == (3, 3)
    r = ufm.train_ufm(t, 2, weight_decay=1e-3, steps=5, device="cpu", seed=0)
    assert r.W.shape == (3, 2) and r.H.shape == (2, 3)
    stats = ufm.stats_from_features(np.eye(4), [0, 1, 2, 2], 3)
    keys = set(ufm.collapse_metrics(stats, np.arange(12.0).reshape(3, 4)).to_dict())
    assert {"nc1_trace_ratio", "cdnv_mean", "cdnv_std", "norm_cov", "log_norm_cov", "cos_mean", "cos_std",
            "etf_error", "gnc_log_mean", "gnc_log_std", "dual_cos_mean", "unc_cov", "dual_error",
            "num_classes_kept", "options"} <= keys
    assert isinstance(ufm.StatsAccumulator(3, 4), ufm.StatsAccumulator) and ufm.ClassStats
    # Tr S_W / Tr S_B: within = (0 + 0 + 2 * 0.25) / 4 (class 2's samples sit 0.5 from their mean on
    # two axes), between = mean squared distance of the 3 means to their mean.
    means = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0.5, 0.5]])
    between = ((means - means.mean(0)) ** 2).sum() / 3
    assert ufm.variability_ratio(stats) == pytest.approx((2 * 0.5 / 4) / between, rel=1e-12)
    # An empty class takes no part in S_B: the same samples with an unused label give the same ratio.
    gap = ufm.stats_from_features(np.eye(4), [0, 1, 3, 3], 4)
    assert ufm.variability_ratio(gap) == pytest.approx(ufm.variability_ratio(stats), rel=1e-12)
    assert {"ce", "mse"} <= set(ufm.losses.LOSSES)


def test_a_classifier_orthogonal_to_every_mean_has_no_dual_error():
    stats = ufm.stats_from_features(np.eye(4), [0, 1, 2, 2], 3)
    m = ufm.collapse_metrics(stats, np.ones((3, 4)))  # W M^T = 0: nothing to normalize
    assert np.isnan(m.dual_error) and np.isfinite(m.etf_error)
