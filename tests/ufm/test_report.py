"""The bridge's figures: labelled axes, whole-number depth and step axes, the CDNV power on its
colour scale, epochs called epochs."""

from pathlib import Path

import numpy as np
import pytest
import torch

import ufm.report as report
from lm_bridge.measure import step_label
from tests.figures import figure_problems
from ufm import stats_from_features


@pytest.fixture
def captured(monkeypatch):
    figures = {}
    real = report.save_figure

    def keep(fig, path):
        figures[Path(path).name] = fig
        fig.canvas.draw()  # ticks are placed at draw time
        return real(fig, path)

    monkeypatch.setattr(report, "save_figure", keep)
    return figures


def test_depth_panels_have_whole_number_ticks_and_labels(captured, tmp_path):
    rows = [dict(cdnv_mean=1.0 / (i + 1), cos_std=0.1 * i) for i in range(4)]
    report.metric_panels([0, 1, 2, 3], rows, [("cdnv_mean", "CDNV", True), ("cos_std", "std cos", False)],
                         tmp_path / "depth.png", xlabel="hidden state", title="m: by depth")
    fig = captured["depth.png"]
    assert figure_problems(fig) == []
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_measure_figures_are_labelled_and_name_the_cdnv_power(captured, tmp_path):
    rng = np.random.default_rng(0)
    stats = stats_from_features(rng.normal(size=(400, 6)), rng.integers(0, 20, 400), 20)
    names = report.measure_figures(stats, torch.randn(20, 6, dtype=torch.float64), tmp_path, cdnv_power=4.0,
                                   title="tiny/epoch2")
    assert names == ["dual_cos_hist.png", "norms_vs_frequency.png", "cdnv_sample.png"]
    for name in names:
        assert figure_problems(captured[name]) == [], name
        assert captured[name].axes[0].get_title().startswith("tiny/epoch2: ")
    bar = [ax for ax in captured["cdnv_sample.png"].axes if ax.get_label() == "<colorbar>"][0]
    assert bar.get_ylabel() == "log10 CDNV (distance power 4)"


def test_a_series_of_epochs_is_drawn_against_epochs():
    assert step_label({"training.json:epoch"}) == "epoch"
    assert step_label({"trainer_state.json:global_step"}) == "training step"
    assert step_label({"name"}).startswith("step (the number in each checkpoint's name)")
