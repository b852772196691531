"""Every figure an experiment test saves is checked for what a reader needs: labelled axes, a
labelled colour scale for every image, and a title naming what it shows."""

import pytest

import experiments._common as common
from tests.figures import figure_problems


@pytest.fixture(autouse=True)
def _check_every_figure(monkeypatch):
    real = common.save_figure
    seen = {}

    def checked(fig, path):
        seen[path.name] = figure_problems(fig)
        return real(fig, path)

    monkeypatch.setattr(common, "save_figure", checked)
    yield
    bad = {name: p for name, p in seen.items() if p}
    assert not bad, f"figures lacking labels: {bad}"
