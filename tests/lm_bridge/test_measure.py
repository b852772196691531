"""lm_bridge.measure: measure_model, measured run folders, every layer, checkpoint series, and the
`collapse measure` command end to end (figures, resumption after SIGKILL)."""

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import signal
import torch

from experiments.cli import main
from lm_bridge.collect import CollectConfig, collect_nc4, collect_stats
from lm_bridge.corpus import Corpus, token_blocks
from lm_bridge.models import load_model
from tests.lm_bridge.conftest import LINES
from tests.lm_bridge.reference import assert_bit_identical, assert_same_stats, direct_layer_stats, reference_stats
from ufm import ClassStats, PRESETS, collapse_metrics, nc4_agreement, stats_from_features


def other_tokens(loaded, corpus) -> int:
    """Every labelled position of ``corpus`` at block size 20."""
    return sum(len(b) - 1 for b in token_blocks(corpus, loaded.tokenizer, 20))


def heldout_features(loaded, corpus, block_size):
    """(hidden states, argmax predictions, true next tokens) of every labelled held-out position."""
    feats, preds, labels = [], [], []
    with torch.no_grad():
        for block in token_blocks(corpus, loaded.tokenizer, block_size):
            out = loaded.model(input_ids=torch.tensor([block]), output_hidden_states=True)
            feats.append(out.hidden_states[-1][0, :-1])
            preds.append(out.logits[0, :-1].argmax(-1))
            labels.append(torch.tensor(block[1:]))
    return torch.cat(feats), torch.cat(preds), torch.cat(labels)


def test_measure_cli_writes_stats_metrics_and_figures(tiny_models, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["measure", "--model", str(tiny_models["gpt2"]), "--corpus", str(tiny_corpus), "--heldout",
               str(tiny_corpus / "doc0.txt"), "--out", str(out), "--block-size", "24", "--batch-size", "2",
               "--preset", "lc2024", "--device", "cpu", "--min-count", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "preset lc2024: CDNV power 4, global mean uniform, min_count 2, spread ddof 1" in printed
    assert "whose next token is a kept class" in printed
    stats = ClassStats.load(out / "stats.safetensors")
    loaded = load_model(tiny_models["gpt2"])
    assert_same_stats(stats, reference_stats(loaded, Corpus.open(tiny_corpus), 24), rtol=1e-10)
    report = json.loads((out / "metrics.json").read_text())
    options = report["metrics"]["options"]
    assert options == dict(PRESETS["lc2024"], min_count=2, tile_size=None, riesz_s=None, max_count=None)
    # metrics.json holds exactly the metrics of the saved statistics with the model's classifier.
    want = collapse_metrics(stats, loaded.classifier(), **options).to_dict()
    assert want["dual_cos_mean"] is not None
    for key, value in want.items():
        assert report["metrics"][key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key
    assert report["tokens"] == int(stats.sample_counts.sum())
    # NC4 as Wu & Papyan count it: held-out positions whose true next token is a kept class.
    h, pred, labels = heldout_features(loaded, Corpus.open(tiny_corpus / "doc0.txt"), 24)
    counts = torch.zeros(stats.label_space, dtype=torch.int64).index_put_((stats.ids,), stats.sample_counts)  # by token id
    kept = counts[labels] >= 2
    assert 0 < int(kept.sum()) < len(labels)  # the choice matters on this text
    assert report["nc4_positions"] == "kept" and report["nc4_tokens"] == int(kept.sum())
    assert report["nc4_agreement"] == nc4_agreement(h, pred, stats, labels=labels, min_count=2)
    assert report["model"]["identity"] == loaded.identity
    for name in ("dual_cos_hist.png", "norms_vs_frequency.png", "cdnv_sample.png"):
        assert (out / name).stat().st_size > 1000
    assert not list(out.glob("checkpoint*"))
    # Without a preset every held-out position counts, and the defaults are stated.
    assert main(["measure", "--model", str(tiny_models["gpt2"]), "--corpus", str(tiny_corpus), "--heldout",
                 str(tiny_corpus / "doc0.txt"), "--out", str(tmp_path / "plain"), "--block-size", "24",
                 "--device", "cpu"]) == 0
    assert "no preset (defaults; --preset lc2024" in capsys.readouterr().out
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert plain["nc4_positions"] == "all" and plain["nc4_tokens"] == len(labels)
    assert plain["nc4_agreement"] == nc4_agreement(h, pred, stats)


def test_measure_figures_plot_the_right_data(monkeypatch, tmp_path):
    """Figures are checked by the arrays they draw: the CDNV map of the most frequent classes
    (log10, diagonal blank), the norms against counts, the NC3 cosines (independent numpy)."""
    import matplotlib.axes

    from ufm.report import measure_figures

    rng = np.random.default_rng(0)
    k, d = 12, 5
    y = np.concatenate([np.arange(k), rng.integers(0, k, 300)])
    h = rng.normal(size=(k, d))[y] * 3 + rng.normal(size=(len(y), d))
    W = rng.normal(size=(k, d))
    stats = stats_from_features(h, y, k)
    drawn = {}

    def record(method: str, name: str):
        real = getattr(matplotlib.axes.Axes, method)

        def wrapper(self, *args, **kwargs):
            drawn[name] = [np.array(a) for a in args if not isinstance(a, str)]
            return real(self, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, method, wrapper)

    record("imshow", "cdnv")
    record("hist", "dual")
    record("loglog", "norms")
    measure_figures(stats, torch.as_tensor(W), tmp_path, cdnv_power=2.0, sample=6)
    counts = np.bincount(y, minlength=k)
    top = np.sort(np.argsort(-counts, kind="stable")[:6])
    mu = np.stack([h[y == c].mean(0) for c in range(k)])
    var = np.array([((h[y == c] - mu[c]) ** 2).sum(1).mean() for c in range(k)])
    want = np.full((6, 6), np.nan)
    for i, a in enumerate(top):
        for j, b in enumerate(top):
            if i != j:
                want[i, j] = np.log10((var[a] + var[b]) / (2 * np.sum((mu[a] - mu[b]) ** 2)))
    np.testing.assert_allclose(drawn["cdnv"][0], want, rtol=1e-10)
    m = mu - mu.mean(0)
    np.testing.assert_allclose(drawn["norms"][1], np.linalg.norm(m, axis=1), rtol=1e-10)
    np.testing.assert_allclose(drawn["norms"][0], counts, rtol=1e-12)
    cos = (W * m).sum(1) / np.linalg.norm(W, axis=1) / np.linalg.norm(m, axis=1)
    np.testing.assert_allclose(np.sort(drawn["dual"][0]), np.sort(cos), rtol=1e-10)


def test_measure_model_is_stats_metrics_and_nc4_with_the_preset(tiny_models, tiny_corpus):
    """measure_model, the demo's and the grid's one call, against its three parts run by hand."""
    from lm_bridge.measure import measure_model

    loaded = load_model(tiny_models["gpt2"])
    train, heldout = Corpus.open(tiny_corpus), Corpus.open(tiny_corpus / "doc0.txt")
    config = CollectConfig(block_size=20)
    m = measure_model(loaded, train, heldout, config, heldout_tokens=30, preset="lc2024")
    stats = collect_stats(loaded, train, config, progress=False).stats
    assert torch.equal(m.stats.means, stats.means) and torch.equal(m.stats.counts, stats.counts)
    want = collapse_metrics(stats, loaded.classifier(), **PRESETS["lc2024"]).to_dict()
    assert m.metrics.to_dict() == want and want["dual_error"] is not None
    nc4 = collect_nc4(loaded, heldout, stats, CollectConfig(block_size=20, max_tokens=30), progress=False,
                      min_count=1, positions="kept")
    assert (m.nc4.agreement, m.nc4.tokens, m.nc4.positions, m.nc4.loss) == (nc4.agreement, nc4.tokens, "kept", nc4.loss)
    assert 0 < m.nc4.tokens <= 30
    default = measure_model(loaded, train, heldout, config, heldout_tokens=30)  # lc2024 is the default
    assert default.metrics.to_dict() == want and default.nc4.positions == "kept"
    capped = measure_model(loaded, train, heldout, CollectConfig(block_size=20, max_tokens=40))
    assert capped.nc4.tokens <= 40 < other_tokens(loaded, heldout)  # without heldout_tokens: the config's cap
    other = measure_model(loaded, train, heldout, config, preset="papyan2020")
    assert other.nc4.positions == "all" and other.nc4.tokens > m.nc4.tokens
    assert other.metrics.options["center"] == "weighted" and m.metrics.options["center"] == "uniform"


def _killed_runs(model, corpus, out, kills, seed):
    """Start `collapse measure`, SIGKILL it at a random moment after its first checkpoint, ``kills``
    times; then let it finish. Returns the number of kills that landed mid-run."""
    rng = np.random.default_rng(seed)
    cmd = [sys.executable, "-m", "experiments.cli", "measure", "--model", str(model), "--corpus", str(corpus),
           "--out", str(out), "--block-size", "8", "--batch-size", "1", "--checkpoint-every", "1", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    landed = 0
    for _ in range(kills):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not (out / "checkpoint.safetensors").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.4)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait()
        if (out / "metrics.json").exists():
            break
    assert subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode == 0
    return landed


def test_measure_layers_all_writes_each_layer(tiny_models, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["measure", "--model", str(tiny_models["llama"]), "--corpus", str(tiny_corpus), "--layers", "all",
                 "--heldout", str(tiny_corpus / "doc1.txt"), "--block-size", "20", "--out", str(out),
                 "--device", "cpu"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert sorted(report["layers"], key=int) == ["0", "1", "2"]
    for i in range(3):
        stats = ClassStats.load(out / "layers" / f"layer_{i:02d}.safetensors")
        got = report["layers"][str(i)]["metrics"]
        want = collapse_metrics(stats).to_dict()
        assert got["cdnv_mean"] == pytest.approx(want["cdnv_mean"], rel=1e-12)
        assert got["dual_cos_mean"] is None  # NC3 belongs to the last hidden state and its classifier
        assert 0 <= report["layers"][str(i)]["nc4_agreement"] <= 1
    assert report["state_gib"] > 0 and "metrics_vs_depth.png" in report["figures"]
    assert "statistics state" in capsys.readouterr().out


def test_checkpoint_series_of_one_training_run(tiny_corpus, tmp_path, capsys):
    from lm_bridge.tokenizer import train_bpe_tokenizer
    from lm_bridge.train import TrainSpec, train_clm

    train, val = Corpus.open(tiny_corpus).split(every=4)
    spec = TrainSpec(depth=1, width=16, heads=2, epochs=3, batch_size=4, block_size=16, lr=1e-2)
    run = tmp_path / "run"
    results = train_clm(spec, train_bpe_tokenizer(LINES, 300), train, val, run, device="cpu", progress=False)
    out = tmp_path / "series"
    assert main(["measure", "--model", str(run), "--corpus", str(tiny_corpus), "--heldout", str(tiny_corpus / "doc3.txt"),
                 "--out", str(out), "--device", "cpu", "--preset", "lc2024", "--layers", "0"]) == 0
    rows = list(csv.DictReader((out / "series.csv").read_text().splitlines()))
    assert [r["name"] for r in rows] == ["epoch1", "epoch2", "epoch3"] and [r["step"] for r in rows] == ["1", "2", "3"]
    for r, trained in zip(rows, results):
        folder = json.loads((out / r["name"] / "metrics.json").read_text())
        assert float(r["cdnv_mean"]) == pytest.approx(folder["metrics"]["cdnv_mean"], rel=1e-12)
        assert float(r["val_loss"]) == pytest.approx(folder["val_loss"], rel=1e-12)
        assert list(folder["layers"]) == ["0"] and (out / r["name"] / "layers" / "layer_00.safetensors").is_file()
        assert folder["corpus"]["identity"] == json.loads((out / "epoch1" / "metrics.json").read_text())["corpus"]["identity"]
    assert len({r["identity"] for r in rows}) == 3  # three weights, three identities
    assert (out / "metrics_vs_step.png").stat().st_size > 0
    # The series is a table of models: collapse analyze reads it.
    assert main(["analyze", str(out / "series.csv"), "--loss", "val_loss", "--metrics", "cdnv_mean,nc4_agreement",
                 "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["metrics"]["cdnv_mean"]["n"] == 3
    # A run folder where one model is expected says which model folders it holds.
    capsys.readouterr()
    assert main(["measure", "--model", str(tmp_path), "--corpus", str(tiny_corpus), "--out", str(tmp_path / "x")]) == 2
    assert "not a model directory" in capsys.readouterr().err


@pytest.mark.parametrize("kills", [pytest.param(2), pytest.param(20, marks=pytest.mark.slow)])
def test_sigkilled_runs_resume_bit_identical_without_temp_files(kills, tiny_models, long_corpus, tmp_path):
    reference = tmp_path / "reference"
    assert main(["measure", "--model", str(tiny_models["gpt2"]), "--corpus", str(long_corpus), "--out", str(reference),
                 "--block-size", "8", "--batch-size", "1", "--device", "cpu"]) == 0
    out = tmp_path / "killed"
    landed = _killed_runs(tiny_models["gpt2"], long_corpus, out, kills, seed=kills)
    assert landed >= kills // 2  # most kills hit a running pass
    assert_bit_identical(ClassStats.load(out / "stats.safetensors"), ClassStats.load(reference / "stats.safetensors"))
    leftovers = sorted(p.name for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith("checkpoint"))
    assert leftovers == []


def test_per_class_nc4_nc5_and_max_count_equal_direct_computations(tiny_models, tiny_corpus, tmp_path):
    """classes.csv's NC4 hits and misses per true next token, NC5 against an out-of-distribution
    text and --max-count, each against numpy on output_hidden_states."""
    ood = tmp_path / "ood.txt"
    ood.write_text("zebra quantum 1999 xylophone !!! ??? " * 20)
    out = tmp_path / "run"
    assert main(["measure", "--model", str(tiny_models["gpt2"]), "--corpus", str(tiny_corpus), "--heldout",
                 str(tiny_corpus / "doc0.txt"), "--ood", str(ood), "--out", str(out), "--block-size", "24",
                 "--max-count", "6", "--layers", "all", "--device", "cpu"]) == 0
    loaded = load_model(tiny_models["gpt2"])
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["options"]["max_count"] == 6
    dense = reference_stats(loaded, Corpus.open(tiny_corpus), 24)
    counts = dense.sample_counts.numpy()
    kept = np.flatnonzero((counts >= 1) & (counts <= 6))
    assert 2 < len(kept) < int((counts > 0).sum())  # the filter dropped the commonest tokens
    assert report["metrics"]["num_classes_kept"] == len(kept)
    # NC4 per class, by true next token.
    h, pred, labels = (t.numpy() for t in heldout_features(loaded, Corpus.open(tiny_corpus / "doc0.txt"), 24))
    means = dense.means.numpy()[kept]
    ncc = kept[np.argmin(((h[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    rows = list(csv.DictReader((out / "classes.csv").read_text().splitlines()))
    assert [int(r["class_id"]) for r in rows] == kept.tolist()
    for r in rows:
        mine = labels == int(r["class_id"])
        assert int(r["nc4_hits"]) == int((ncc[mine] == pred[mine]).sum())
        assert int(r["nc4_misses"]) == int((ncc[mine] != pred[mine]).sum())
    assert sum(int(r["nc4_hits"]) + int(r["nc4_misses"]) for r in rows) == int(np.isin(labels, kept).sum()) > 0
    # NC5: the OOD mean of each state against its kept, centered class means.
    with torch.no_grad():
        states = [loaded.model(input_ids=torch.tensor([b]), output_hidden_states=True).hidden_states
                  for b in token_blocks(Corpus.open(ood), loaded.tokenizer, 24)]
    layer_refs = direct_layer_stats(loaded, Corpus.open(tiny_corpus), 24)

    def nc5(stats, i):
        mu = stats.means.numpy()[kept]
        g = mu.mean(0)
        o = torch.cat([s[i][0, :-1] for s in states]).double().numpy().mean(0) - g
        m = mu - g
        return np.mean(np.abs(m @ o) / (np.linalg.norm(m, axis=1) * np.linalg.norm(o)))

    assert report["nc5_ood"] == pytest.approx(nc5(dense, -1), rel=1e-6)
    assert 0 < report["nc5_ood"] < 1
    for i in (0, 1):
        assert report["layers"][str(i)]["nc5_ood"] == pytest.approx(nc5(layer_refs[i], i), rel=1e-6), i
