import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.ufm.reference import naive_nc4
from ufm import NC4Accumulator, nc4_agreement, stats_from_features
from ufm import nc4 as nc4_module


def setup(k=30, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    y = np.concatenate([np.arange(k), rng.integers(0, k, 400)])
    stats = stats_from_features(centers[y] + rng.normal(size=(len(y), d)), y, k)
    held = rng.integers(0, k, 500)
    h = centers[held] + rng.normal(size=(500, d)) * 2
    pred = np.where(rng.random(500) < 0.7, held, rng.integers(0, k, 500))  # a noisy "model"
    return stats, h, pred


def test_nc4_matches_brute_force():
    stats, h, pred = setup()
    got = nc4_agreement(h, pred, stats)
    want = naive_nc4(h, pred, stats.means.numpy(), np.arange(30))
    assert got == want and 0.3 < got < 1.0


def test_nc4_uses_kept_classes_only(monkeypatch):
    stats, h, pred = setup()
    min_count = int(np.sort(stats.sample_counts.numpy())[10]) + 1  # drops at least 11 classes
    kept = np.flatnonzero(stats.sample_counts.numpy() >= min_count)
    assert 0 < len(kept) < 30
    # Tiny class tiles exercise the running minimum across tiles.
    monkeypatch.setattr(nc4_module, "_BLOCK_ENTRIES", 500 * 3)
    got = nc4_agreement(h, pred, stats, min_count=min_count)
    assert got == naive_nc4(h, pred, stats.means.numpy(), kept)
    assert got != nc4_agreement(h, pred, stats)


def test_nc4_with_labels_counts_only_kept_true_classes():
    """Wu & Papyan's NC4: held-out positions whose true next class was never kept are left out."""
    stats, h, pred = setup()
    labels = np.random.default_rng(7).integers(0, 30, 500)
    min_count = int(np.sort(stats.sample_counts.numpy())[10]) + 1
    kept = np.flatnonzero(stats.sample_counts.numpy() >= min_count)
    got = nc4_agreement(h, pred, stats, labels=labels, min_count=min_count)
    assert got == naive_nc4(h, pred, stats.means.numpy(), kept, labels)
    assert got != nc4_agreement(h, pred, stats, min_count=min_count)  # the labels changed the count
    acc = NC4Accumulator(stats, min_count=min_count).update(h, pred, labels)
    assert acc.total == int(np.isin(labels, kept).sum()) < 500
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 30\)"):
        acc.update(h, pred, labels + 30)
    with pytest.raises(ValueError, match=r"labels must have shape \(500,\)"):
        acc.update(h, pred, labels[:3])


@given(cuts=st.lists(st.integers(0, 500), max_size=6))
def test_streaming_split_equals_whole(cuts):
    stats, h, pred = setup(seed=1)
    bounds = sorted({0, 500, *cuts})
    shards = [NC4Accumulator(stats), NC4Accumulator(stats)]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        shards[i % 2].update(h[a:b], pred[a:b])
    merged = shards[1].merge(shards[0])
    assert merged.total == 500
    assert merged.compute() == nc4_agreement(h, pred, stats)


def test_nc4_bad_inputs():
    stats, h, pred = setup()
    acc = NC4Accumulator(stats)
    with pytest.raises(ValueError, match=r"features must have shape \(\*, 8\)"):
        acc.update(h[:, :3], pred)
    with pytest.raises(ValueError, match=r"predictions must lie in \[0, 30\)"):
        acc.update(h, pred + 30)
    with pytest.raises(ValueError, match=r"predictions must have shape \(500,\)"):
        acc.update(h, pred[:4])
    with pytest.raises(ValueError, match="features contains 4000 NaN"):
        acc.update(np.full_like(h, np.nan), pred)
    with pytest.raises(ValueError, match="no held-out samples"):
        acc.compute()
    with pytest.raises(ValueError, match="no class has at least min_count=100000"):
        NC4Accumulator(stats, min_count=100_000)


def test_nc4_hits_and_misses_per_class_equal_a_direct_count():
    """Per true next class: positions where the nearest kept mean is the model's prediction (hits)
    and where it is not (misses); streamed in parts and merged, on sparse statistics."""
    stats, h, pred = setup()
    labels = np.random.default_rng(3).integers(0, 30, 500)
    lo, hi = int(np.sort(stats.sample_counts.numpy())[5]), int(np.sort(stats.sample_counts.numpy())[-5])
    kept = np.flatnonzero((stats.sample_counts.numpy() >= lo) & (stats.sample_counts.numpy() <= hi))
    assert 0 < len(kept) < 30
    means = stats.means.numpy()[kept]
    ncc = kept[np.argmin(((h[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]  # (500,) direct
    sparse = stats.compact()
    parts = [NC4Accumulator(sparse, min_count=lo, max_count=hi) for _ in range(2)]
    parts[0].update(h[:200], pred[:200], labels[:200], only_kept=False)
    parts[1].update(h[200:], pred[200:], labels[200:], only_kept=False)
    acc = parts[0].merge(parts[1])
    ids, hits, misses = (t.numpy() for t in acc.per_class())
    assert ids.tolist() == kept.tolist()
    for c, hit, miss in zip(ids, hits, misses):
        mine = labels == c
        assert hit == int((ncc[mine] == pred[mine]).sum()) and miss == int((ncc[mine] != pred[mine]).sum()), c
    assert acc.total == 500 and acc.agree == int((ncc == pred).sum())  # only_kept=False: every position
    assert hits.sum() + misses.sum() == int(np.isin(labels, kept).sum())
    assert nc4_agreement(h, pred, sparse, min_count=lo, max_count=hi) == acc.compute()
