import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from ufm.targets import NTPTargets, from_token_stream, one_hot, random_supports


def test_from_arrays_dense_and_sparse_agree():
    rng = np.random.default_rng(0)
    P = rng.random((6, 4)) * (rng.random((6, 4)) < 0.5)
    P[0] += 0.1
    P /= P.sum(0)
    pi = np.array([0.1, 0.2, 0.3, 0.4])
    a, b = NTPTargets.from_arrays(pi, P), NTPTargets.from_arrays(pi, sp.csc_matrix(P))
    np.testing.assert_array_equal(a.dense(), P)
    np.testing.assert_array_equal(b.dense(), P)
    np.testing.assert_array_equal(a.support(), (P > 0).astype(float))
    assert a.entropy == pytest.approx(-(pi * (P * np.log(np.where(P > 0, P, 1))).sum(0)).sum(), rel=1e-14)


def test_one_hot_counts():
    t = one_hot([3, 1, 2])
    assert (t.vocab_size, t.num_contexts) == (3, 6)
    np.testing.assert_array_equal(t.dense().argmax(0), [0, 0, 0, 1, 2, 2])
    assert t.entropy == 0.0 and np.allclose(t.pi, 1 / 6)


def test_random_supports_shared_patterns():
    t = random_supports(12, 20, (2, 4), probs="zipf", num_patterns=3, seed=2)
    groups = t.support_groups()
    assert sorted(len(g) for g in groups) == [4, 4, 4]
    assert np.all((t.support_sizes >= 2) & (t.support_sizes <= 4))
    np.testing.assert_allclose(t.dense().sum(0), 1.0, rtol=1e-14)
    assert t.entropy > 0


def test_token_stream_contexts_are_empirical():
    stream = [0, 1, 2, 0, 1, 3, 0, 1, 2, 4]
    t, contexts = from_token_stream(stream, 2)
    j = contexts.index((0, 1))
    P = t.dense()
    assert P[2, j] == pytest.approx(2 / 3) and P[3, j] == pytest.approx(1 / 3)
    assert t.pi[j] == pytest.approx(3 / 8)  # (0, 1) is 3 of the 8 windows
    t2, contexts2 = from_token_stream(stream, 2, min_count=2)
    assert contexts2 == [(0, 1), (1, 2)]  # (1, 2) is followed by 0 and by 4
    np.testing.assert_allclose(t2.pi, [3 / 5, 2 / 5], rtol=1e-14)


def test_support_graph_components():
    P = np.zeros((4, 3))
    P[0, 0] = P[1, 0] = 0.5
    P[1, 1] = 1.0
    P[3, 2] = 1.0
    g = NTPTargets.from_arrays(np.full(3, 1 / 3), P).support_graph()
    assert nx.is_bipartite(g) and g.number_of_edges() == 4
    assert nx.number_connected_components(g) == 3  # {c0, c1, t0, t1}, {c2, t3}, {t2}


@pytest.mark.parametrize(
    "pi, P, match",
    [
        ([0.5, 0.5], [[0.5, 1.0], [0.4, 0.0]], "column 0 sums to 0.9"),
        ([0.5, 0.5], [[1.5, 1.0], [-0.5, 0.0]], "negative probabilities"),
        ([0.5, 0.5], [[np.nan, 1.0], [0.5, 0.0]], "NaN or Inf"),
        ([0.6, 0.6], [[1.0, 1.0], [0.0, 0.0]], "pi must be a distribution"),
        ([-0.5, 1.5], [[1.0, 1.0], [0.0, 0.0]], "pi must be finite and non-negative"),
        ([1.0], [[1.0, 1.0], [0.0, 0.0]], "P has 2 columns .* pi has 1"),
        ([], np.zeros((0, 0)), "at least one context and one token"),
        (np.ones(2) / 2, np.zeros((0, 2)), "at least one context and one token|column 0 sums"),
    ],
)
def test_bad_targets(pi, P, match):
    with pytest.raises(ValueError, match=match):
        NTPTargets.from_arrays(pi, P)


def test_bad_builders():
    with pytest.raises(ValueError, match="counts must be positive integers"):
        one_hot([2, 0])
    with pytest.raises(ValueError, match="support_size must lie in"):
        random_supports(4, 3, 5)
    with pytest.raises(ValueError, match="probs must be 'uniform' or 'zipf'"):
        random_supports(4, 3, 2, probs="gauss")
    with pytest.raises(ValueError, match="needs more than context_length=3 tokens"):
        from_token_stream([1, 2, 3], 3)


def test_ids_and_sizes_that_are_not_whole_numbers_are_refused():
    with pytest.raises(ValueError, match=r"token ids must be integers, got 0.3"):
        from_token_stream([0.3, 0.6, 1, 2, 0.3, 0.6], 1)  # int64 would make 0.3 and 0.6 the same token 0
    assert from_token_stream([0.0, 1.0, 2.0, 0.0, 1.0], 1)[0].vocab_size == 3  # whole floats are ids
    for bad in (-5, 2.5, 0):
        with pytest.raises(ValueError, match="vocab_size must be an integer >= 1"):
            from_token_stream([0, 1, 2, 0, 1], 1, vocab_size=bad)
    with pytest.raises(ValueError, match=r"vocab_size \(V\) must be an integer >= 1, got 2.5"):
        NTPTargets(np.ones(2) / 2, np.array([0, 1]), np.array([0, 1]), np.ones(2), 2.5)
    with pytest.raises(ValueError, match="tokens must be integer ids, got dtype float64"):
        NTPTargets(np.ones(2) / 2, np.array([0.0, 1.0]), np.array([0, 1]), np.ones(2), 2)
    with pytest.raises(ValueError, match=r"pi must be a 1-D numpy array, got shape \(1, 2\)"):
        NTPTargets(np.ones((1, 2)) / 2, np.array([0, 1]), np.array([0, 1]), np.ones(2), 2)
    with pytest.raises(ValueError, match=r"pi must have shape \(m,\), got \(2, 2\)"):
        NTPTargets.from_arrays(np.ones((2, 2)) / 4, np.eye(2))


def test_random_supports_gives_the_patterns_it_is_asked_for():
    for seed in range(20):  # V = 6, k = 2: 15 possible supports, so 8 random draws often repeat one
        assert random_supports(40, 6, 2, num_patterns=8, seed=seed).describe()["num_support_patterns"] == 8
    with pytest.raises(ValueError, match="num_patterns=9 is more than the 5 contexts"):
        random_supports(5, 10, 2, num_patterns=9)
    with pytest.raises(ValueError, match=r"num_patterns=5 distinct supports of size 1..1 do not exist among V=3 tokens \(there are 3\)"):
        random_supports(6, 3, 1, num_patterns=5)
