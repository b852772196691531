"""Silent cases across ufm's APIs are errors that name the problem (ufm.validate and its callers)."""

import numpy as np
import pytest
import torch

from ufm import ClassStats, StatsAccumulator
from ufm.targets import NTPTargets, one_hot
from ufm.train import train_ufm


def test_api_silent_cases_are_errors():
    acc = StatsAccumulator(3, 2)
    with pytest.raises(TypeError, match="features must be real numbers, got dtype torch.complex"):
        acc.update(torch.ones(2, 2, dtype=torch.complex128), [0, 1])
    with pytest.raises(TypeError, match="features must be real numbers, got dtype torch.bool"):
        acc.update(torch.ones(2, 2, dtype=torch.bool), [0, 1])
    big = np.array([1e308, 0.5e308])
    acc.update(np.ones((2, 2)), [0, 1], weights=big)
    before = acc.state()["n"].clone()
    with pytest.raises(ValueError, match="weights overflow"):
        acc.update(np.ones((2, 2)), [0, 1], weights=big)
    assert torch.equal(acc.state()["n"], before)  # refused before the state was poisoned
    with pytest.raises(ValueError, match="var_traces must be non-negative"):
        ClassStats(torch.ones(2), torch.ones(2, dtype=torch.int64), torch.zeros(2, 2), torch.tensor([1.0, -1.0]),
                   torch.zeros(2, 2))
    with pytest.raises(ValueError, match="duplicate \\(token, context\\)"):
        NTPTargets(np.array([0.5, 0.5]), np.array([0, 0, 1]), np.array([0, 0, 1]), np.array([0.5, 0.5, 1.0]), 3)
    with pytest.raises(ValueError, match=r"l_mm must have shape \(V, m\) = \(2, 4\)"):
        train_ufm(one_hot([2, 2]), 2, weight_decay=1e-3, steps=1, l_mm=np.zeros((4, 2)), device="cpu")
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        train_ufm(one_hot([2, 2]), 2, weight_decay=float("inf"), steps=1, device="cpu")
    from ufm.convex import LogitsProblem

    with pytest.raises(ValueError, match="lambda must be positive and finite"):
        LogitsProblem(one_hot([1, 1])).solve(float("inf"))
