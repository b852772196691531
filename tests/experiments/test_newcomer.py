"""Issue 12: what a newcomer meets first — usage, Ctrl-C, strict JSON, file modes, threads, reports
that interpret, and one-way layering."""

import ast
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.cli import main
from tests.lm_bridge.conftest import tiny_corpus, tiny_models  # noqa: F401 (fixtures)
from experiments.demo import render_demo, verdict_rows
from ufm import collapse_metrics, stats_from_features
from ufm.io import write_json
from ufm.threads import SMALL_WORK, set_threads, threads_for

ROOT = Path(__file__).resolve().parents[2]


def test_bare_collapse_prints_usage(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: collapse") and "collapse demo" in out and "--threads" in out


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(monkeypatch, capsys, tmp_path):
    import lm_bridge.measure

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lm_bridge.measure, "measure_folder", interrupted)
    (tmp_path / "c.txt").write_text("some text " * 50)
    model = tmp_path / "m"
    from tests.lm_bridge.conftest import save_tiny_model

    save_tiny_model(model, "gpt2")
    assert main(["measure", "--model", str(model), "--corpus", str(tmp_path / "c.txt"), "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert "interrupted; run the same command again to resume from the last checkpoint" in err
    assert "Traceback" not in err


def test_json_is_strict_and_says_why_a_value_is_undefined(tmp_path):
    stats = stats_from_features(np.array([[1.0, 2.0]] * 4), [0, 0, 1, 1], 2)
    m = collapse_metrics(stats, np.ones((2, 2))).to_dict()
    path = write_json(tmp_path / "m.json", dict(metrics=m, inf=math.inf, arr=np.array([1.0, np.nan])))

    def no_constants(name):
        raise AssertionError(f"bare {name} in JSON")

    data = json.loads(path.read_text(), parse_constant=no_constants)
    assert data["inf"] is None and data["arr"] == [1.0, None]
    assert data["metrics"]["etf_error"] is None
    assert "M M^T is zero" in data["metrics"]["undefined"]["etf_error"]
    assert "no classifier" not in data["metrics"]["undefined"].get("dual_cos_mean", "")
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # the usual mode, not 0600


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_threads_follow_the_work(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    import ufm.threads

    monkeypatch.setattr(ufm.threads, "_chosen", None)
    before = torch.get_num_threads()
    with threads_for(SMALL_WORK / 10) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert 1 <= ufm.threads.idle_cores(0.05) <= (os.cpu_count() or 1)
    monkeypatch.setattr(ufm.threads, "idle_cores", lambda interval=0.1: 3)  # as if 3 cores were idle
    with threads_for(SMALL_WORK * 10) as n:
        assert n == 3 and torch.get_num_threads() == 3  # big work: the idle cores
    assert torch.get_num_threads() == before  # restored
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    with threads_for(SMALL_WORK / 10) as n:
        assert n == 2  # the user's choice wins
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        set_threads(0)
    torch.set_num_threads(before)


def _measured(name, loss, cdnv, nc4, cos_std):
    metrics = dict(cdnv_mean=cdnv, cos_std=cos_std, log_norm_cov=0.1, gnc_log_std=0.2, unc_cov=0.3,
                   dual_cos_mean=0.4, etf_error=1.2, num_classes_kept=500)
    return dict(name=name, width=64, val_loss=loss, nc4_agreement=nc4, top1_accuracy=0.2, heldout_loss=loss,
                metrics=metrics, etf_error_random_means=1.41, figures=[])


def test_demo_report_gives_a_verdict_per_metric_with_its_baseline(tiny_models, tiny_corpus, tmp_path):
    from lm_bridge.compare import CompareConfig, compare_model
    from lm_bridge.corpus import Corpus
    from lm_bridge.models import load_model

    better, worse = _measured("big", 5.2, 0.5, 0.02, 0.1), _measured("small", 5.5, 3.5, 0.004, 0.05)
    rows = {r["key"]: r for r in verdict_rows([worse, better])}
    assert rows["cdnv_mean"]["seen"] == "lower" and rows["cdnv_mean"]["verdict"] == "agrees"
    assert rows["nc4_agreement"]["verdict"] == "agrees"
    assert rows["cos_std"]["seen"] == "higher" and rows["cos_std"]["verdict"] == "disagrees"
    summary = compare_model(load_model(tiny_models["gpt2"]), Corpus.open(tiny_corpus),
                            CompareConfig(min_count=2, max_contexts=30, block_size=32, steps=200, heatmap_size=10),
                            tmp_path, device="cpu", progress=False)
    report = render_demo([worse, better], summary)
    for r in rows.values():
        assert f"| {r['label']} |" in report
    assert "| CDNV (NC1, power 4) | 0.5 | 3.5 | lower | lower (0.92) | agrees |" in report
    assert "1/K' = 2.00e-03" in report and "top-1 accuracy is 0.2000" in report
    # The ETF error read against what the width allows (sqrt(2 - 2 sqrt(D/(K'-1))) at K' = 500, D = 64)
    # and against random means; the NC1 trace ratio is not called bounded (it is not).
    floor = math.sqrt(2 - 2 * math.sqrt(64 / 499))
    assert (f"ETF error 1.200: floor {floor:.3f} (the best 500 means can do in D = 64), random means 1.410: "
            f"{(1.2 - floor) / (1.41 - floor):.2f} of the way from the floor (0) to random (1)") in report
    assert "bounded by D/K" not in report and "has no upper bound" in report
    assert "shuffled control" in report and "on the same classes" in report
    # Model and UFM are measured on the same set of classes.
    assert summary["metrics"]["model"]["num_classes_kept"] == summary["metrics"]["ufm"]["num_classes_kept"]


def _imports(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_dependencies_run_one_way():
    """ufm <- lm_bridge <- experiments (with the command line): nothing below imports above."""
    assert not _imports("ufm") & {"lm_bridge", "experiments"}
    assert "experiments" not in _imports("lm_bridge")


def test_measure_takes_corpus_names(tiny_models, tiny_corpus, tmp_path, monkeypatch):
    import lm_bridge.data

    monkeypatch.setattr(lm_bridge.data, "fetch", lambda name, force=False: tiny_corpus)
    assert main(["measure", "--model", str(tiny_models["gpt2"]), "--corpus", "shakespeare", "--out",
                 str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["corpus"]["path"] == str(tiny_corpus)


def test_etf_error_reading_places_a_value_between_the_floor_and_random():
    from ufm.report import etf_error_reading

    # The demo's numbers: K' = 1669 classes in D = 64, random means 1.271, the model 1.381.
    floor = math.sqrt(2 - 2 * math.sqrt(64 / 1668))
    assert f"{floor:.3f}" == "1.268"
    text = etf_error_reading(1.381, 1669, 64, random=1.271)
    assert text.endswith("0.110 above random means, worse than no collapse at all") and "floor 1.268" in text
    mid = floor + 0.5 * (1.271 - floor)
    assert etf_error_reading(mid, 1669, 64, random=1.271).endswith("0.50 of the way from the floor (0) to random (1)")
    assert etf_error_reading(float("nan"), 1669, 64, random=1.271).startswith("floor 1.268")
