"""The command line answers at once and names what is wrong: help without loading torch, flags
refused by argparse or by the object that knows why, unwritable outputs, busy folders, corrupt
models, mixed series, resumed runs that say so."""

import csv
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import REGISTRY, module_of
from experiments.cli import build_parser, main
from lm_bridge.collect import CollectConfig, collect_stats
from lm_bridge.corpus import Corpus
from lm_bridge.models import load_model
from tests.lm_bridge.conftest import save_tiny_model, tiny_corpus, tiny_models  # noqa: F401 (fixtures)
from ufm.io import folder_lock

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "scipy", "matplotlib", "cvxpy")


@pytest.mark.parametrize("argv", [["--help"], [], ["simulate", "--help"], ["measure", "--help"],
                                  ["experiment", "--help"], ["analyze", "--help"]])
def test_help_loads_none_of_the_numerics(argv):
    """`collapse --help` took 17-21 s on a loaded machine because every command imported torch,
    transformers, scipy and matplotlib first; help and usage now load none of them."""
    code = ("import sys\nfrom experiments.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print('loaded:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "loaded:", argv


def test_experiment_help_lists_every_experiment(capsys):
    # every experiment module is registered, and every registered name has its module
    files = {p.stem for p in (Path(__file__).parents[2] / "experiments").glob("*.py")} - {"__init__", "_common", "cli", "demo"}
    assert {module_of(name).split(".")[1] for name in REGISTRY} == files
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    out = capsys.readouterr().out
    for name, what in REGISTRY.items():
        assert f"{name} " in out and what in out


def test_every_train_option_has_help_with_its_default():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        if action.dest in ("help",):
            continue
        assert action.help, action.dest
        if action.dest not in ("out", "device", "seed"):
            assert "default" in action.help, action.dest


@pytest.mark.parametrize("argv, match", [
    (["--classes", "1"], "argument --classes: must be an integer >= 2, got 1"),
    (["--support", "a,b"], "argument --support: takes k or k_min,k_max (integers), got 'a,b'"),
    (["--support", "3,2"], "needs 1 <= k_min <= k_max"),
    (["--dim", "0"], "argument --dim: must be an integer >= 1"),
    (["--snapshots", "-2"], "argument --snapshots: must be an integer >= 0"),
])
def test_simulate_flags_out_of_range_are_usage_errors(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", *argv, "--steps", "5", "--device", "cpu"])
    assert exit_.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["--device", "tpu"], "unknown device 'tpu': use auto, cpu, cuda or cuda:N"),
    (["--radius", "2"], "--radius belongs to --features normalized (the sphere), not --features free"),
    (["--normalize", "words", "--features", "deep_linear", "--depth", "1"],
     "--normalize belongs to --features normalized (the sphere), not --features deep_linear"),
    (["--dim", "100000000"], "d=100000000 (float64) needs about"),
])
def test_simulate_refuses_what_it_would_ignore_or_cannot_run(argv, match, capsys):
    assert main(["simulate", *argv, "--steps", "5"]) == 2
    assert match in capsys.readouterr().err


def test_simulate_on_the_sphere_takes_its_flags(tmp_path):
    out = tmp_path / "s"
    assert main(["simulate", "--features", "normalized", "--radius", "2", "--normalize", "words", "--steps", "20",
                 "--device", "cpu", "--out", str(out)]) == 0
    config = json.loads((out / "ufm.json").read_text())["config"]
    assert config["radius"] == 2.0 and config["normalize"] == "words"


def test_a_full_disk_is_named_and_leaves_the_old_outputs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--steps", "5", "--device", "cpu", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # the write itself succeeds; the flush to disk fails
    assert main(["simulate", "--steps", "7", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device (the disk is full: free space or choose another --out)" in err
    assert "nothing already written was changed" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_output_that_cannot_be_a_folder_is_named(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main(["simulate", "--steps", "5", "--device", "cpu", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert "file.txt" in err and "Not a directory" in err and "Traceback" not in err


def _measure(model, corpus, out, *extra):
    return main(["measure", "--model", str(model), "--corpus", str(corpus), "--block-size", "32",
                 "--batch-size", "4", "--device", "cpu", "--checkpoint-every", "0", "--out", str(out), *extra])


def test_measure_layers_that_name_nothing_are_refused(tiny_models, tiny_corpus, tmp_path, capsys):
    for spec in (",", "-1", "1,1"):
        assert _measure(tiny_models["gpt2"], tiny_corpus, tmp_path / "m", "--layers", spec) == 2
    err = capsys.readouterr().err
    assert "--layers ',' names no hidden state: give 'all' or indices 0..2" in err
    assert "--layers '-1' names no hidden state" in err and "names a hidden state twice" in err


def test_a_second_measure_into_a_busy_folder_is_refused(tiny_models, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "m"
    with folder_lock(out, "collapse measure"):  # what a running measure holds
        assert _measure(tiny_models["gpt2"], tiny_corpus, out) == 2
    err = capsys.readouterr().err
    assert f"{out} is in use by another collapse measure (pid {os.getpid()})" in err
    assert not (out / "metrics.json").exists()
    assert _measure(tiny_models["gpt2"], tiny_corpus, out) == 0  # the lock goes with its holder


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_weights_file_is_named(damage, tiny_models, tiny_corpus, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_models["gpt2"], model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100] if damage == "truncated" else b"")
    assert _measure(model, tiny_corpus, tmp_path / "m") == 2
    err = capsys.readouterr().err
    assert "the model weights cannot be read (a truncated, empty or foreign weights file?)" in err


def test_a_series_of_two_tokenizers_is_refused_unless_allowed(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    save_tiny_model(run / "step1", "gpt2", vocab_size=300)
    save_tiny_model(run / "step2", "gpt2", vocab_size=400)
    assert _measure(run, tiny_corpus, tmp_path / "m") == 2
    err = capsys.readouterr().err
    assert "the checkpoints have 2 different tokenizers: step1 (" in err and "--allow-mixed" in err
    assert not (tmp_path / "m").exists()  # refused before any pass
    assert _measure(run, tiny_corpus, tmp_path / "m", "--allow-mixed") == 0
    assert (tmp_path / "m" / "series.csv").is_file()


def test_a_resumed_measure_says_so(tiny_models, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "m"
    loaded = load_model(tiny_models["gpt2"])
    config = CollectConfig(block_size=32, batch_size=4, checkpoint_every=0)
    first = collect_stats(loaded, Corpus.open(tiny_corpus), config, checkpoint=out / "checkpoint.safetensors",
                          progress=False)  # an interrupted run leaves its checkpoint (here: every block)
    assert _measure(tiny_models["gpt2"], tiny_corpus, out) == 0
    printed = capsys.readouterr().out
    assert f"resumed from {out}/checkpoint.safetensors: {first.blocks} of {first.blocks} blocks" in printed


def test_train_writes_usual_modes_and_says_when_it_resumes(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "clm"
    argv = ["train", "--corpus", str(tiny_corpus), "--depth", "1", "--width", "16", "--heads", "2", "--epochs", "1",
            "--vocab-size", "300", "--block-size", "16", "--batch-size", "4", "--device", "cpu", "--out", str(out)]
    old = os.umask(0o022)
    try:
        assert main(argv) == 0
    finally:
        os.umask(old)
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert modes["epoch1"] == 0o755 and modes["epoch1/model.safetensors"] == 0o644, modes
    assert {m for p, m in modes.items() if (out / p).is_file()} == {0o644}
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "resumed the run in" in printed and "epoch(s) 1 were finished by an earlier run" in printed
    (out / "state.pt").write_bytes(b"garbage")
    assert main(argv) == 2
    assert "state.pt is not a readable resume state" in capsys.readouterr().err


def test_a_series_flags_checkpoints_with_the_same_weights(tiny_models, tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    for step in ("step1", "step2"):
        shutil.copytree(tiny_models["gpt2"], run / step)  # one model served under two step names
    save_tiny_model(run / "step3", "gpt2", seed=1)
    assert _measure(run, tiny_corpus, tmp_path / "m") == 0
    assert "checkpoint step2 has the same content identity" in capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "m" / "series.csv").read_text().splitlines()))
    assert [r["same_weights_as"] for r in rows] == ["", "step1", ""]


def test_a_folder_of_one_checkpoint_says_it_is_a_single_model(tiny_models, tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_models["gpt2"], run / "step5")
    assert _measure(run, tiny_corpus, tmp_path / "m") == 0
    assert f"{run} holds one checkpoint (step5): measured as a single model" in capsys.readouterr().out
    assert (tmp_path / "m" / "metrics.json").is_file() and not (tmp_path / "m" / "series.csv").exists()


def test_measure_writes_a_per_class_table_for_every_state(tiny_models, tiny_corpus, tmp_path):
    from ufm import ClassStats, class_table

    out = tmp_path / "m"
    assert _measure(tiny_models["gpt2"], tiny_corpus, out, "--layers", "all") == 0
    loaded = load_model(tiny_models["gpt2"])
    want = class_table(ClassStats.load(out / "stats.safetensors"), loaded.classifier())
    rows = list(csv.DictReader((out / "classes.csv").read_text().splitlines()))
    assert [int(r["class_id"]) for r in rows] == want.class_id.tolist()
    assert [float(r["nc3_cos"]) for r in rows] == pytest.approx(want.nc3_cos.tolist(), rel=1e-12)
    for i in range(3):
        layer = list(csv.DictReader((out / "layers" / f"layer_{i:02d}_classes.csv").read_text().splitlines()))
        assert layer and layer[0]["nc3_cos"] == "nan"  # the classifier meets the last state only


def test_simulate_offers_the_registries_members_and_their_parameters(tmp_path, capsys):
    from dataclasses import fields

    from ufm.features import FEATURE_NAMES
    from ufm.losses import LOSSES

    sim = build_parser()._subparsers._group_actions[0].choices["simulate"]
    actions = {a.dest: a for a in sim._actions}
    assert list(actions["loss"].choices) == list(LOSSES) and list(actions["features"].choices) == list(FEATURE_NAMES)
    assert {f.name for cls in LOSSES.values() for f in fields(cls)} <= set(actions)  # every loss parameter a flag
    # a registered loss with its own parameter runs from the command line, and its flag belongs to it alone
    argv = ["simulate", "--loss", "focal", "--gamma", "1.5", "--steps", "30", "--snapshots", "1", "--device", "cpu",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    assert json.loads((tmp_path / "ufm.json").read_text())["family"]["loss"] == {"name": "focal", "gamma": 1.5}
    assert main(["simulate", "--gamma", "1.5", "--steps", "1", "--device", "cpu"]) == 2
    assert "--gamma belongs to --loss focal, not --loss ce" in capsys.readouterr().err
    assert main(["simulate", "--features", "deep_relu", "--depth", "2", "--steps", "20", "--device", "cpu"]) == 0
