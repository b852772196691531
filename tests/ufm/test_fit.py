"""ufm.fit: the one training loop of the UFM family, and train_ufm over it."""

import json
import math

import numpy as np
import pytest

from tests.ufm.pin_runs import PINNED, cases, run_case


def _close(got, want, path=""):
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        if math.isnan(want):
            assert math.isnan(got), path
        else:
            assert got == pytest.approx(want, rel=1e-10, abs=1e-12), path
    else:
        assert got == want, path


@pytest.mark.parametrize("name", sorted(cases()))
def test_seeded_runs_equal_the_runs_pinned_before_the_seam(name):
    targets, kwargs = cases()[name]
    _close(run_case(targets, kwargs), json.loads(PINNED.read_text())[name], name)
