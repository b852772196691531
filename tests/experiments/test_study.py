"""Studies: specs checked before anything runs, a local pool and a real SLURM cluster giving the
same table, interruptions (SIGKILL of the launcher, scancel of a job) that lose nothing."""

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.study import SpecError, load_spec, run_study, study_status
from tests.lm_bridge.conftest import repeated_corpus
from tests.slurm_cluster import missing, slurm_cluster
from ufm.io import FolderBusyError, folder_lock

SPEC = """name = "tiny"
[data]
corpus = "{corpus}"
vocab_size = 300
[train]
epochs = 2
heads = 2
batch_size = 4
block_size = 16
lr = 1e-2
checkpoint_every = 3
[[train.grid]]
depth = 1
width = {widths}
[measure]
layers = "all"
batch_size = 4
figures = false
[local]
workers = 2
[slurm]
mem_gb = 1
timeout_min = 10
array_parallelism = 4
"""


@pytest.fixture(scope="module")
def study_corpus(tmp_path_factory):
    return repeated_corpus(tmp_path_factory.mktemp("study_corpus"), 4, 3)


def write_spec(folder: Path, corpus: Path, widths="[16, 32]", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.toml"
    path.write_text(SPEC.format(corpus=corpus, widths=widths) + extra)
    return path


def read_rows(path: Path) -> dict:
    rows = list(csv.DictReader(path.read_text().splitlines()))
    return {(r["run"], r["epoch"], r["layer"]): r for r in rows}


def assert_same_table(a: Path, b: Path, rtol=1e-9, runs: int = 2):
    """Table ``a`` holds the rows of ``runs`` runs of the tiny spec (0: every row of ``b``), each
    equal to the same row of table ``b``."""
    ra, rb = read_rows(a), read_rows(b)
    assert len(ra) == runs * 2 * 3 if runs else ra.keys() == rb.keys()
    assert set(ra) <= set(rb)
    for key, row in ra.items():
        other = rb[key]
        assert row.keys() == other.keys(), key
        for col, value in row.items():
            try:
                x, y = float(value), float(other[col])
            except ValueError:
                assert value == other[col], (key, col)
                continue
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=rtol, abs=1e-300), (key, col)


@pytest.fixture(scope="module")
def local_study(tmp_path_factory, study_corpus):
    """The two-run study, uninterrupted, under the local launcher: the reference table."""
    root = tmp_path_factory.mktemp("local_study")
    spec = write_spec(root, study_corpus)
    report = run_study(spec, root / "out", launcher="local", device="cpu")
    return spec, root / "out", report


def test_a_local_study_writes_one_row_per_run_checkpoint_and_layer(local_study):
    from lm_bridge.models import load_model
    from ufm import ClassStats, PRESETS, collapse_metrics

    spec, out, report = local_study
    assert report.counts["done"] == 6 and len(report.units) == 6  # 2 runs + 2 x 2 checkpoints
    rows = read_rows(out / "results.csv")
    assert len(rows) == 2 * 2 * 3  # runs x epochs x (the final state and the 2 hidden states of depth 1)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["run", "source", "arch", "depth", "width"] and header[-1] == "unit"
    row = rows[("d1-w32-wd0-s0", "2", "final")]
    # A row is the checkpoint's own measurement: its statistics, the lc2024 preset, its head.
    stats = ClassStats.load(out / "measure" / "d1-w32-wd0-s0" / "epoch2" / "stats.safetensors")
    want = collapse_metrics(stats, load_model(out / "runs" / "d1-w32-wd0-s0" / "epoch2").classifier(),
                            **PRESETS["lc2024"])
    assert float(row["cdnv_mean"]) == pytest.approx(want.cdnv_mean, rel=1e-12)
    assert int(row["step"]) == 2 * int(rows[("d1-w32-wd0-s0", "1", "final")]["step"]) > 0
    assert float(row["val_loss"]) > 0 and 0 <= float(row["nc4_agreement"]) <= 1
    assert (out / "report.md").is_file() and (out / "metrics_vs_loss.png").stat().st_size > 1000
    assert (out / "metrics_vs_depth.png").is_file()
    # A second run finds everything done and runs nothing.
    before = {p: p.stat().st_mtime_ns for p in out.glob("units/*/result.json")}
    again = run_study(spec, out, launcher="local", device="cpu")
    assert again.counts["done"] == 6 and {p: p.stat().st_mtime_ns for p in out.glob("units/*/result.json")} == before


def test_bad_specs_and_launchers_are_refused_before_anything_runs(tmp_path, study_corpus, monkeypatch):
    spec = write_spec(tmp_path / "a", study_corpus)
    spec.write_text(spec.read_text().replace("lr = 1e-2", "lr = 1e-2\nlearning_rate = 3"))
    with pytest.raises(SpecError, match=r"\[train\]: unknown key\(s\) learning_rate"):
        load_spec(spec)
    empty = write_spec(tmp_path / "b", study_corpus, widths="[]")
    with pytest.raises(SpecError, match="expand to no run"):
        load_spec(empty)
    gone = write_spec(tmp_path / "c", tmp_path / "no-such-corpus")
    with pytest.raises(Exception, match="no-such-corpus"):
        run_study(gone, tmp_path / "c" / "out", device="cpu")
    assert not (tmp_path / "c" / "out" / "units").exists()
    models = write_spec(tmp_path / "d", study_corpus, extra='[models]\npaths = ["/no/such/model"]\n')
    with pytest.raises(SpecError, match=r"\[models\] path /no/such/model does not exist"):
        load_spec(models)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    ok = write_spec(tmp_path / "e", study_corpus)
    with pytest.raises(SpecError, match="--launcher slurm needs SLURM's sbatch and squeue on PATH"):
        run_study(ok, tmp_path / "e" / "out", launcher="slurm", device="cpu")
    assert not (tmp_path / "e" / "out").exists()
    with pytest.raises(SpecError, match="no study spec 'nope'"):
        load_spec("nope")


def test_the_simulate_stage_is_the_ufm_of_the_study_s_own_contexts(tmp_path, study_corpus):
    """[simulate]: a UFM trained on the distinct contexts of the training text (the study's
    tokenizer), one row of the table, equal to building the targets and training it directly."""
    import numpy as np

    from lm_bridge.corpus import Corpus, document_ids
    from transformers import PreTrainedTokenizerFast
    from ufm import PRESETS, train_ufm
    from ufm.targets import from_token_stream

    spec = tmp_path / "sim.toml"
    spec.write_text(f'name = "sim"\n[data]\ncorpus = "{study_corpus}"\nvocab_size = 300\n[simulate]\n'
                    "context_length = 1\nmin_count = 2\nmax_contexts = 40\nmax_tokens = 600\n"
                    "[simulate.ufm]\ndim = 16\nweight_decay = 1e-3\nsteps = 300\n")
    report = run_study(spec, tmp_path / "out", device="cpu")
    assert report.counts["done"] == 1 and report.note.startswith("not analyzed")  # one row: nothing to fit
    (row,) = read_rows(tmp_path / "out" / "results.csv").values()
    assert row["source"] == "ufm" and row["val_loss"] == ""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tmp_path / "out" / "tokenizer")
    ids = [t for text in Corpus.open(study_corpus).split()[0].documents() for t in document_ids(text, tokenizer)][:600]
    targets, _ = from_token_stream(ids, 1, vocab_size=len(tokenizer), min_count=2, max_contexts=40)
    direct = train_ufm(targets, 16, weight_decay=1e-3, steps=300, device="cpu").metrics(**PRESETS["lc2024"])
    for key in ("cos_std", "etf_error", "dual_cos_mean", "nc1_trace_ratio"):
        assert float(row[key]) == pytest.approx(getattr(direct, key), rel=1e-9), key
    assert int(row["num_classes_kept"]) == direct.num_classes_kept
    # Tokens that follow exactly the same contexts share a class mean: an infinite CDNV, an empty cell.
    assert (row["cdnv_mean"] == "") == (not np.isfinite(direct.cdnv_mean))
    bad = tmp_path / "bad.toml"
    bad.write_text(spec.read_text().replace("steps = 300", "steps = 300\nwidth = 3"))
    with pytest.raises(SpecError, match=r"\[simulate.ufm\]: unknown key\(s\) width"):
        load_spec(bad)


def test_the_local_pool_gives_each_worker_a_gpu_of_its_own(tmp_path, study_corpus, monkeypatch):
    """With GPUs (here: two, as the pool is told) each worker sees one, CUDA_VISIBLE_DEVICES set
    before anything initializes CUDA; the jobs record it. (On this CPU-only machine torch then
    finds no usable device and the units run on the CPU.)"""
    import experiments.study.launchers as launchers

    assert launchers.gpu_count("cpu") == 0  # a study on the CPU pins nothing
    monkeypatch.setattr(launchers, "gpu_count", lambda device: 2)
    spec = tmp_path / "sim.toml"
    spec.write_text(f'name = "gpus"\n[data]\ncorpus = "{study_corpus}"\nvocab_size = 300\n[simulate]\n'
                    "context_length = 1\nmin_count = 2\nmax_contexts = 20\nmax_tokens = 300\n"
                    "[simulate.ufm]\ndim = 8\nweight_decay = 1e-3\nsteps = 20\n[local]\nworkers = 4\n")
    report = run_study(spec, tmp_path / "out", device="auto")
    assert report.counts["done"] == 1
    status = json.loads(next((tmp_path / "out").glob("units/simulate-*/status.json")).read_text())
    assert status["gpus"] in ("0", "1")


def test_two_runs_of_one_study_at_once_are_refused(tmp_path, study_corpus):
    spec = write_spec(tmp_path, study_corpus)
    with folder_lock(tmp_path / "out", "collapse study run"):
        with pytest.raises(FolderBusyError, match="in use by another collapse study run"):
            run_study(spec, tmp_path / "out", device="cpu")


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "experiments.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_a_sigkilled_launcher_loses_nothing_and_a_failed_unit_waits_for_retry(tmp_path, study_corpus, local_study):
    """SIGKILL of `collapse study run` mid-study; the next run finishes it to the uninterrupted
    table. A unit that raised stays failed (status names its log) until --retry-failed."""
    _, reference, _ = local_study
    spec = write_spec(tmp_path, study_corpus, widths="[16]")
    out = tmp_path / "out"
    proc = _cli("study", "run", str(spec), "--out", str(out), "--device", "cpu")
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("units/measure-*/result.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = study_status(spec, out)
    assert 0 < partial.counts["done"] < 3
    report = run_study(spec, out, device="cpu")
    assert report.counts["done"] == 3
    assert_same_table(out / "results.csv", reference / "results.csv", runs=1)
    # A failure (its checkpoint is gone): the next run leaves it until asked.
    ckpt, hidden = out / "runs" / "d1-w16-wd0-s0" / "epoch1", tmp_path / "hidden"
    done = next(out.glob("units/measure-d1-w16-wd0-s0-epoch1-*"))
    (done / "result.json").unlink()
    shutil.move(ckpt, hidden)
    failed = run_study(spec, out, device="cpu")
    unit = next(u for u in failed.units if u.name == "d1-w16-wd0-s0/epoch1")
    assert failed.states[unit.identity] == "failed"
    assert "checkpoint" in failed.details[unit.identity] and str(done / "log.txt") in failed.details[unit.identity]
    shutil.move(hidden, ckpt)
    assert run_study(spec, out, device="cpu").states[unit.identity] == "failed"  # not retried unasked
    assert main(["study", "run", str(spec), "--out", str(out), "--retry-failed", "--device", "cpu"]) == 0
    assert_same_table(out / "results.csv", reference / "results.csv", runs=1)


needs_slurm = pytest.mark.skipif(missing() is not None, reason=missing() or "")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


@needs_slurm
def test_slurm_study_equals_the_local_one_and_survives_a_killed_launcher_and_a_cancelled_job(cluster, tmp_path, study_corpus, local_study,
                                                                       capsys):
    """The same study through submitit on a real single-node SLURM cluster: the same table. Then
    a study interrupted twice, its launcher SIGKILLed and a running measure job cancelled
    (scancel): status names the cancelled unit, and the next run completes the same table."""
    _, reference, _ = local_study
    spec = write_spec(tmp_path / "a", study_corpus, widths="[16]")
    report = run_study(spec, tmp_path / "a" / "out", launcher="slurm", device="cpu")
    assert report.counts["done"] == 3
    assert_same_table(tmp_path / "a" / "out" / "results.csv", reference / "results.csv", runs=1)
    jobs = sorted(p.read_text() for p in (tmp_path / "a" / "out").glob("units/*/slurm_job"))
    assert len(jobs) == 3 and sum("_" in j for j in jobs) == 2  # the run's two measurements: one job array

    # Interrupted twice: the launcher is SIGKILLed while a measurement job runs, then that job is
    # cancelled; its sibling and the queue run on without a launcher.
    from experiments.study.launchers import queued

    spec = write_spec(tmp_path / "b", study_corpus, widths="[32]")
    out = tmp_path / "b" / "out"
    proc = _cli("study", "run", str(spec), "--out", str(out), "--launcher", "slurm", "--device", "cpu")
    deadline, victim = time.time() + 180, None
    while time.time() < deadline and victim is None:
        for status in out.glob("units/measure-*/status.json"):
            st = json.loads(status.read_text())
            if st.get("state") == "running" and st.get("slurm_job") and (status.parent / "slurm_job").is_file():
                victim = status.parent
                break
        time.sleep(0.2)
    assert victim is not None, "no measure job started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    target = (victim / "slurm_job").read_text().strip()
    subprocess.run(["scancel", target], check=True)
    # This test cluster tracks processes by parentage (proctrack/linuxproc): a cancelled step's
    # Python process can outlive the cancel (submitit lets SIGTERM pass) and finish a tiny unit. The
    # test kills it as SLURM's SIGKILL does where cgroups track the job.
    try:
        os.kill(json.loads((victim / "status.json").read_text())["pid"], signal.SIGKILL)
    except ProcessLookupError:
        pass
    jobs = [p.read_text().strip() for p in out.glob("units/*/slurm_job")]
    while time.time() < deadline and queued(jobs):
        time.sleep(0.5)
    after = study_status(spec, out)
    cancelled = next(u for u in after.units if after.states[u.identity] == "interrupted")
    assert f"SLURM job {target}" in after.details[cancelled.identity] and victim.name == cancelled.folder_name
    assert after.counts["done"] == 2  # the training run and the other measurement finished on their own
    assert main(["study", "status", str(spec), "--out", str(out)]) == 0
    assert "interrupted" in capsys.readouterr().out
    final = run_study(spec, out, launcher="slurm", device="cpu")
    assert final.counts["done"] == 3
    assert_same_table(out / "results.csv", reference / "results.csv", runs=1)


@needs_slurm
@pytest.mark.slow  # minutes: 4 runs x 2 epochs on Shakespeare, every layer, twice
def test_the_shipped_lc_small_study_gives_one_table_under_both_launchers(cluster, tmp_path):
    local = run_study("lc-small", tmp_path / "local", launcher="local", device="cpu")
    slurm = run_study("lc-small", tmp_path / "slurm", launcher="slurm", device="cpu")
    assert local.counts["done"] == slurm.counts["done"] == len(local.units) == 13  # 4 runs x (1 + 2), the UFM
    rows = read_rows(tmp_path / "local" / "results.csv")
    assert len(rows) == len(read_rows(tmp_path / "slurm" / "results.csv")) == 2 * (3 * 3 + 4) + 1  # d1: 3 states, d2: 4; the UFM
    assert_same_table(tmp_path / "slurm" / "results.csv", tmp_path / "local" / "results.csv", runs=0)
    assert (tmp_path / "local" / "report.md").is_file() and (tmp_path / "slurm" / "report.md").is_file()
