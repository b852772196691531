import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from tests.conftest import requires_cuda
from tests.ufm.reference import naive_stats
from ufm import ClassStats, StatsAccumulator, StatsFileError, stats_from_features
from ufm.io import atomic_write
from ufm.stats import load_accumulators, save_accumulators

FIELDS = ("counts", "sample_counts", "means", "var_traces", "within_scatter")


def random_samples(n=600, k=40, d=16, weighted=True, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    h = rng.normal(size=(n, d)) + rng.normal(size=(k, d))[y] * 3 + offset
    w = rng.uniform(0.1, 2.0, n) if weighted else None
    return h, y, w


def assert_stats_close(a: ClassStats, b, rtol):
    for name in FIELDS:
        x = getattr(a, name).cpu().numpy()
        y = b[name] if isinstance(b, dict) else getattr(b, name).cpu().numpy()
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.abs(y).max(), err_msg=name)


@pytest.mark.parametrize("weighted", [False, True])
def test_stats_match_naive_float64(weighted):
    h, y, w = random_samples(weighted=weighted)
    stats = stats_from_features(h, y, 40, w)
    assert_stats_close(stats, naive_stats(h, y, 40, w), rtol=1e-12)
    assert stats.means.dtype == torch.float64 and stats.sample_counts.dtype == torch.int64
    assert stats.total == pytest.approx(len(y) if w is None else w.sum(), rel=1e-14)


def test_large_offset_does_not_cancel():
    # Raw-sum formulas lose everything here (offset^2 / var ~ 1e16); Chan merges do not.
    h, y, _ = random_samples(n=400, k=5, d=4, weighted=False, offset=1e8)
    acc = StatsAccumulator(5, 4)
    for part in np.array_split(np.arange(len(y)), 13):
        acc.update(h[part], y[part])
    assert_stats_close(acc.compute(), naive_stats(h, y, 5), rtol=1e-6)


@given(
    cuts=st.lists(st.integers(0, 300), max_size=8),
    order=st.permutations(range(4)),
    seed=st.integers(0, 1000),
)
def test_any_batch_split_and_merge_order_equals_one_pass(cuts, order, seed):
    h, y, w = random_samples(n=300, k=40, d=16, seed=seed)
    whole = stats_from_features(h, y, 40, w)
    bounds = sorted(set([0, 300, *cuts]))
    batches = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    # Batches go round-robin into 4 shards; the shards merge in a random order.
    shards = [StatsAccumulator(40, 16) for _ in range(4)]
    for i, sl in enumerate(batches):
        shards[i % 4].update(h[sl], y[sl], w[sl])
    merged = StatsAccumulator(40, 16)
    for i in order:
        merged.merge(shards[i])
    assert_stats_close(merged.compute(), whole, rtol=1e-12)


def test_zero_weight_samples_contribute_nothing():
    h, y, w = random_samples()
    w[::3] = 0.0
    keep = w > 0
    assert_stats_close(stats_from_features(h, y, 40, w), stats_from_features(h[keep], y[keep], 40, w[keep]), 1e-13)


def test_empty_and_single_sample_classes_are_defined():
    h = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    stats = stats_from_features(h, [0, 0, 2], 4)
    assert stats.counts.tolist() == [2.0, 0.0, 1.0, 0.0]
    assert stats.sample_counts.tolist() == [2, 0, 1, 0]
    assert stats.var_traces.tolist() == [2.0, 0.0, 0.0, 0.0]  # deviations (+-1, +-1): (2 + 2) / 2
    assert stats.means[1].tolist() == [0.0, 0.0] and stats.means[2].tolist() == [5.0, 6.0]


def test_from_stats_resumes_exactly():
    h, y, w = random_samples()
    first = StatsAccumulator(40, 16).update(h[:250], y[:250], w[:250]).compute()
    resumed = StatsAccumulator.from_stats(first).update(h[250:], y[250:], w[250:])
    assert_stats_close(resumed.compute(), stats_from_features(h, y, 40, w), rtol=1e-12)


def test_save_load_roundtrip(tmp_path):
    h, y, w = random_samples()
    stats = stats_from_features(h, y, 40, w)
    stats = ClassStats(**{f: getattr(stats, f) for f in FIELDS}, metadata={"model": "tiny", "n": 3})
    path = stats.save(tmp_path / "sub" / "stats.safetensors")
    loaded = ClassStats.load(path)
    for name in FIELDS:
        assert torch.equal(getattr(loaded, name), getattr(stats, name)), name
    assert loaded.metadata == {"model": "tiny", "n": 3}
    assert [p.name for p in path.parent.iterdir()] == ["stats.safetensors"]  # no temp file left


def test_load_truncated_file(tmp_path):
    path = stats_from_features(*random_samples()[:2], 40).save(tmp_path / "s.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(StatsFileError, match="truncated or corrupt|truncated"):
        ClassStats.load(path)
    path.write_bytes(data[:5])
    with pytest.raises(StatsFileError, match="too short"):
        ClassStats.load(path)


def test_load_foreign_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a statistics file at all")
    with pytest.raises(StatsFileError, match="not a statistics file"):
        ClassStats.load(text)
    from safetensors.torch import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(3)}, str(other))
    with pytest.raises(StatsFileError, match="not a Collapse Lab statistics file"):
        ClassStats.load(other)
    with pytest.raises(FileNotFoundError, match="no statistics file"):
        ClassStats.load(tmp_path / "missing.safetensors")


def test_load_other_format_version(tmp_path):
    from safetensors.torch import save_file

    stats = stats_from_features(*random_samples()[:2], 40)
    path = tmp_path / "s.safetensors"
    header = {"format": "collapse-lab/class-stats", "version": "99", "metadata": "{}"}
    save_file({f: getattr(stats, f) for f in FIELDS}, str(path), metadata=header)
    with pytest.raises(StatsFileError, match="format version 99"):
        ClassStats.load(path)


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "stats.safetensors"
    stats_from_features(*random_samples()[:2], 40).save(path)
    before = path.read_bytes()

    def disk_full(tmp):
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, disk_full)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["stats.safetensors"]


@pytest.mark.parametrize(
    "features, labels, weights, error, match",
    [
        (np.zeros((4, 3)), [0, 1, 2, 3], None, ValueError, r"features must have shape \(\*, 16\)"),
        (np.zeros((4, 16)), [0, 1, 2], None, ValueError, r"labels must have shape \(4,\)"),
        (np.zeros((4, 16)), [0, 1, 2, 40], None, ValueError, r"labels must lie in \[0, 40\)"),
        (np.zeros((4, 16)), [0, -1, 2, 3], None, ValueError, r"labels must lie in \[0, 40\)"),
        (np.zeros((4, 16)), [0.0, 1.0, 2.0, 3.0], None, TypeError, "labels must be integers"),
        (np.full((4, 16), np.nan), [0, 1, 2, 3], None, ValueError, "features contains 64 NaN or Inf"),
        (np.full((4, 16), np.inf), [0, 1, 2, 3], None, ValueError, "features contains 64 NaN or Inf"),
        (np.zeros((4, 16)), [0, 1, 2, 3], [1.0, -1.0, 1.0, 1.0], ValueError, "weights must be non-negative"),
        (np.zeros((4, 16)), [0, 1, 2, 3], [1.0, 1.0], ValueError, r"weights must have shape \(4,\)"),
        (np.zeros((4, 16)), [0, 1, 2, 3], [1.0, np.nan, 1.0, 1.0], ValueError, "weights contains 1 NaN"),
    ],
)
def test_bad_batches_raise_and_leave_state_unchanged(features, labels, weights, error, match):
    h, y, w = random_samples()
    acc = StatsAccumulator(40, 16).update(h, y, w)
    before = acc.compute()
    with pytest.raises(error, match=match):
        acc.update(features, labels, weights)
    assert_stats_close(acc.compute(), before, rtol=0)


def test_empty_inputs():
    with pytest.raises(ValueError, match="features is empty"):
        stats_from_features(np.zeros((0, 3)), np.zeros(0, np.int64), 4)
    acc = StatsAccumulator(4, 3).update(np.zeros((0, 3)), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="no samples were accumulated"):
        acc.compute()


def test_checkpoint_round_trip_is_exact_and_refuses_an_inconsistent_state(tmp_path):
    h, y, w = random_samples(n=50, k=4, d=3)
    accs = {"final": StatsAccumulator(4, 3).update(h, y, w), "1": StatsAccumulator(4, 3).update(2 * h, y)}
    save_accumulators(tmp_path / "ckpt.safetensors", accs, {"blocks_done": 3})
    loaded, metadata = load_accumulators(tmp_path / "ckpt.safetensors")
    assert metadata["blocks_done"] == 3 and set(loaded) == {"final", "1"}
    for name, acc in accs.items():
        for key, value in acc.state().items():
            assert torch.equal(loaded[name].state()[key], value), (name, key)
    accs["1"]._m2 = torch.zeros(5, dtype=torch.float64)  # one class too many
    save_accumulators(tmp_path / "bad.safetensors", accs, {})
    with pytest.raises(StatsFileError, match=r"bad.safetensors holds an inconsistent accumulator state: state 'm2'"):
        load_accumulators(tmp_path / "bad.safetensors")


def test_errors_name_the_argument_and_copies_keep_the_metadata(tmp_path):
    with pytest.raises(ValueError, match=r"features must have shape \(N, D\), got \(3,\)"):
        stats_from_features(np.zeros(3), [0, 1, 2], 3)
    with pytest.raises(TypeError, match="weights must be a tensor or array, got list"):
        StatsAccumulator(2, 2).update(np.zeros((2, 2)), [0, 1], weights=["a", "b"])
    good = stats_from_features(np.eye(3), [0, 1, 2], 3)
    with pytest.raises(ValueError, match="sample_counts must have shape"):
        ClassStats(good.counts, good.sample_counts[:2], good.means, good.var_traces, good.within_scatter)
    tagged = ClassStats(good.counts, good.sample_counts, good.means, good.var_traces, good.within_scatter,
                        metadata={"model": "m"})
    assert tagged.to("cpu").metadata == {"model": "m"}
    path = tmp_path / "header.safetensors"  # a header length that fits, then bytes that are not JSON
    path.write_bytes((16).to_bytes(8, "little") + b"{not json at all" + b"\0" * 8)
    with pytest.raises(StatsFileError, match="is not a statistics file \\(unreadable header\\)"):
        ClassStats.load(path)


def test_bad_construction_and_merge():
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        StatsAccumulator(0, 3)
    with pytest.raises(ValueError, match=r"cannot merge statistics of \(K=5, D=3\)"):
        StatsAccumulator(4, 3).merge(StatsAccumulator(5, 3))
    with pytest.raises(TypeError, match="can only merge a StatsAccumulator, got str"):
        StatsAccumulator(4, 3).merge("stats")
    good = stats_from_features(np.eye(3), [0, 1, 2], 3)
    with pytest.raises(ValueError, match=r"within_scatter must have shape \(3, 3\)"):
        ClassStats(good.counts, good.sample_counts, good.means, good.var_traces, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="means contains 1 NaN"):
        bad = good.means.clone()
        bad[0, 0] = float("nan")
        ClassStats(good.counts, good.sample_counts, bad, good.var_traces, good.within_scatter)


@requires_cuda
@pytest.mark.gpu
def test_cuda_accumulator_equals_naive():
    h, y, w = random_samples()
    acc = StatsAccumulator(40, 16, device="cuda")
    for part in np.array_split(np.arange(len(y)), 7):
        acc.update(torch.as_tensor(h[part], device="cuda"), torch.as_tensor(y[part], device="cuda"),
                   torch.as_tensor(w[part], device="cuda"))
    assert_stats_close(acc.compute().to("cpu"), naive_stats(h, y, 40, w), rtol=1e-12)


def _v2_file(tmp_path):
    stats = stats_from_features(np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 4, 4)
    return stats, stats.save(tmp_path / "stats.safetensors")


def _rewrite(path, tensors=None, **header):
    """The file with its header fields replaced (and, optionally, other tensors): a hand edit."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta, data = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta.update(header)
    meta = {k: v for k, v in meta.items() if v is not None}
    save_file(tensors or data, str(path), metadata=meta)


def test_a_file_relabelled_version_1_is_still_checked(tmp_path):
    stats, path = _v2_file(tmp_path)
    tampered = {"counts": stats.counts, "sample_counts": stats.sample_counts, "means": stats.means + 1.0,
                "var_traces": stats.var_traces, "within_scatter": stats.within_scatter}
    _rewrite(path, tampered, version="1")  # the checksum of the old tensors stays in the header
    with pytest.raises(StatsFileError, match="do not match the checksum"):
        ClassStats.load(path)


def test_a_true_version_1_file_loads_with_a_warning_that_it_is_unverified(tmp_path):
    stats, path = _v2_file(tmp_path)
    _rewrite(path, version="1", sha256=None)
    with pytest.warns(UserWarning, match="version-1 statistics file, which has no checksum"):
        loaded = ClassStats.load(path)
    assert torch.equal(loaded.means, stats.means)


def test_float32_statistics_are_widened_and_give_the_float64_metrics(tmp_path):
    from ufm import collapse_metrics

    stats, path = _v2_file(tmp_path)
    narrow = {k: getattr(stats, k).float() for k in ("counts", "means", "var_traces", "within_scatter")}
    _rewrite(path, dict(narrow, sample_counts=stats.sample_counts.int()), sha256=None, version="1")
    with pytest.warns(UserWarning):
        loaded = ClassStats.load(path)
    assert loaded.means.dtype == torch.float64 and loaded.sample_counts.dtype == torch.int64
    direct = ClassStats(**narrow, sample_counts=stats.sample_counts.int())
    want = collapse_metrics(ClassStats(**{k: v.double() for k, v in narrow.items()}, sample_counts=stats.sample_counts))
    for got in (collapse_metrics(loaded), collapse_metrics(direct)):
        assert got.cdnv_mean == pytest.approx(want.cdnv_mean, rel=1e-12)
        assert got.etf_error == pytest.approx(want.etf_error, rel=1e-12)


def test_a_flipped_byte_in_a_stats_file_is_an_error(tmp_path):
    rng = np.random.default_rng(0)
    stats = stats_from_features(rng.normal(size=(50, 4)), rng.integers(0, 5, 50), 5)
    path = stats.save(tmp_path / "s.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-9] ^= 0x01  # one bit of the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(StatsFileError, match="do not match the checksum"):
        ClassStats.load(path)


@given(
    cuts=st.lists(st.integers(0, 300), max_size=8),
    order=st.permutations(range(4)),
    seed=st.integers(0, 1000),
)
def test_sparse_rows_equal_the_dense_statistics_of_the_classes_seen(cuts, order, seed):
    """Rows allocated as classes are first seen (in any order, by batches, shards and merges, sparse
    and dense mixed) give the dense statistics without their empty classes."""
    h, y, w = random_samples(n=300, k=40, d=16, seed=seed)
    big = 100_000  # a vocabulary of which the samples see 40 classes, scattered over it
    ids = np.random.default_rng(seed).choice(big, 40, replace=False)
    dense = stats_from_features(h, ids[y], big, w).compact()
    bounds = sorted(set([0, 300, *cuts]))
    shards = [StatsAccumulator(big, 16, sparse=i != 2) for i in range(4)]  # shard 2 is dense
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        shards[i % 4].update(h[a:b], ids[y[a:b]], w[a:b])
    merged = StatsAccumulator(big, 16, sparse=True)
    for i in order:
        merged.merge(shards[i])
    stats = merged.compute()
    assert stats.class_ids.tolist() == sorted(ids.tolist()) and stats.num_labels == big
    assert_stats_close(stats, dense, rtol=1e-12)
    assert torch.equal(stats.ids, dense.ids) and merged.state()["mean"].shape == (40, 16)


def test_shared_rows_fold_one_batch_into_several_states_and_round_trip(tmp_path):
    from ufm.stats import ClassRows

    h, y, w = random_samples(n=200, k=30, d=8, seed=3)
    rows = ClassRows(5000, sparse=True)
    a, b = StatsAccumulator(5000, 8, rows=rows, capacity=4), StatsAccumulator(5000, 8, rows=rows)
    labels = y * 97  # class ids up to 2813
    for part in np.array_split(np.arange(200), 7):
        batch = rows.batch(labels[part], w[part])  # the label work, once for both states
        a.fold(h[part], batch)
        b.fold(h[part] ** 2, batch)
    assert rows.size == 30 and a._n.shape[0] >= 30  # grew from 4
    assert_stats_close(a.compute(), stats_from_features(h, labels, 5000, w).compact(), rtol=1e-12)
    assert_stats_close(b.compute(), stats_from_features(h ** 2, labels, 5000, w).compact(), rtol=1e-12)
    stats = a.compute(metadata=dict(model="m"))
    back = ClassStats.load(stats.save(tmp_path / "sparse.safetensors"))
    assert torch.equal(back.class_ids, stats.class_ids) and back.num_labels == 5000 and back.label_space == 5000
    resumed = StatsAccumulator.from_stats(back)
    assert_stats_close(resumed.compute(), stats, rtol=0)
    again = StatsAccumulator.from_state(a.state())
    assert_stats_close(again.compute(), stats, rtol=0)
    # A state that did not see the classes another state added to the shared rows holds them empty.
    c = StatsAccumulator(5000, 8, rows=rows)
    c.fold(h[:20], rows.batch(labels[:20]))
    rows.batch([4999])  # only the map learns the class
    assert c.compute().class_ids.tolist() == sorted(set(labels[:20].tolist()))
    assert StatsAccumulator.from_state(c.state()).compute().num_classes == len(set(labels[:20].tolist()))
    with pytest.raises(ValueError, match=r"class_ids must be strictly increasing class ids in \[0, 5000\)"):
        ClassStats(stats.counts, stats.sample_counts, stats.means, stats.var_traces, stats.within_scatter,
                   class_ids=stats.class_ids.flip(0), num_labels=5000)
    with pytest.raises(ValueError, match="class_ids need num_labels"):
        ClassStats(stats.counts, stats.sample_counts, stats.means, stats.var_traces, stats.within_scatter,
                   class_ids=stats.class_ids)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5000\)"):
        a.update(h[:3], [1, 2, 5000])


def test_near_collapsed_features_keep_their_tiny_variance():
    """Welford's product form adds no raw moments: features a 1e-7 spread around means of norm ~10
    keep their variance to the accuracy of a two-pass computation."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 3000)
    h = rng.normal(size=(6, 32))[y] * 10 + 1e-7 * rng.normal(size=(3000, 32))
    acc = StatsAccumulator(6, 32, sparse=True)
    for part in np.array_split(np.arange(3000), 17):
        acc.update(h[part], y[part])
    assert_stats_close(acc.compute(), naive_stats(h, y, 6), rtol=1e-7)
