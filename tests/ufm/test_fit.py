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


def test_train_ufm_takes_family_objects_and_records_them():
    from ufm.features import DeepLinear
    from ufm.fit import FitOptions
    from ufm.losses import CrossEntropy, Focal
    from ufm.targets import one_hot
    from ufm.train import TrainConfig, train_ufm

    t = one_hot([2, 2, 2])
    a = train_ufm(t, 3, weight_decay=1e-3, steps=20, loss=CrossEntropy(0.1), features=DeepLinear(2),
                  device="cpu", seed=4, snapshots=[20])
    b = train_ufm(t, 3, weight_decay=1e-3, steps=20, label_smoothing=0.1, features="deep_linear", depth=2,
                  device="cpu", seed=4, snapshots=[20])
    assert a.history == b.history  # the same run, named by objects or by keywords
    assert type(a.config) is FitOptions and isinstance(b.config, TrainConfig)
    assert a.family["loss"] == {"name": "ce", "label_smoothing": 0.1} == b.family["loss"]
    assert a.family["features"] == {"name": "deep_linear", "depth": 2, "layer_init": "identity"}
    with pytest.raises(ValueError, match="label_smoothing belong"):
        train_ufm(t, 3, weight_decay=1e-3, steps=1, loss=Focal(), label_smoothing=0.1, device="cpu")
    with pytest.raises(ValueError, match="depth belong"):
        train_ufm(t, 3, weight_decay=1e-3, steps=1, features=DeepLinear(1), depth=2, device="cpu")
