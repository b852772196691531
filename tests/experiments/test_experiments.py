import json

import pytest

from lm_bridge.cli import main


@pytest.mark.parametrize("name", ["etf", "seli", "subspace-collapse", "regularization-path"])
def test_experiment_quick_runs_write_results_and_figures(name, tmp_path):
    assert main(["experiment", name, "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["experiment"] == name and config["quick"] is True
    assert results["figures"] and all((tmp_path / f).stat().st_size > 5000 for f in results["figures"])


def test_quick_etf_reaches_the_simplex(tmp_path):
    main(["experiment", "etf", "--quick", "--device", "cpu", "--out", str(tmp_path)])
    final = json.loads((tmp_path / "results.json").read_text())["final_metrics"]
    assert final["etf_error"] < 1e-6 and final["nc1_trace_ratio"] < 1e-6


def test_simulate_and_metrics_commands(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--targets", "shared", "--steps", "300", "--device", "cpu", "--out", str(out)]) == 0
    assert "step 300" in capsys.readouterr().out
    assert main(["metrics", str(out / "stats.safetensors"), "--preset", "lc2024"]) == 0
    assert "stats.safetensors" in capsys.readouterr().out


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["experiment", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_text("not statistics")
    assert main(["metrics", str(tmp_path / "junk.safetensors")]) == 2
    assert "not a statistics file" in capsys.readouterr().err
