"""Fixtures and helpers shared by the ufm tests: the subspace-collapse experiment's language (Zhao et
al.'s panels at a CPU size), its convex regularization path, and statistics of drawn samples."""

import pytest

from ufm.convex import LogitsProblem
from ufm.stats import stats_from_features
from ufm.targets import random_supports

SHARED = dict(num_contexts=60, vocab_size=30, support_size=(2, 5), probs="zipf", num_patterns=6, seed=0)
PATH = (1e-2, 1e-3, 1e-4, 1e-5)


@pytest.fixture(scope="session")
def shared_language():
    return random_supports(**SHARED)


@pytest.fixture(scope="session")
def convex_path(shared_language):
    return [r.solution for r in LogitsProblem(shared_language).path(list(PATH))]


def drawn_stats(h, y, w, k=40):
    """ClassStats of samples drawn by tests.ufm.reference.samples (k classes)."""
    return stats_from_features(h, y, k, w)
