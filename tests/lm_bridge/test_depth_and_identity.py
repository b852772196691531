"""Issue 11: every layer in one pass, checkpoint series, identities that cannot be fooled, and the
bridge's refusals (each would otherwise give a wrong answer with exit code 0)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import lm_bridge.collect as collect
from experiments.cli import main
from lm_bridge.collect import CollectConfig, CollectError, collect_nc4, collect_stats
from lm_bridge.corpus import Corpus, CorpusError, token_blocks
from lm_bridge.models import ModelLoadError, load_model
from ufm import ClassStats, StatsAccumulator, StatsFileError, collapse_metrics, nc4_agreement, stats_from_features
from ufm.targets import NTPTargets, one_hot
from ufm.train import train_ufm

from .conftest import LINES, save_tiny_model
from .test_bridge import FAMILIES, assert_bit_identical, assert_same_stats


def direct_layer_stats(loaded, corpus, block_size):
    """Every entry of output_hidden_states, one block at a time, no hooks and no padding."""
    feats, labels = {}, []
    with torch.no_grad():
        for block in token_blocks(corpus, loaded.tokenizer, block_size):
            ids = torch.tensor([block])
            for i, h in enumerate(loaded.model(input_ids=ids, output_hidden_states=True).hidden_states):
                feats.setdefault(i, []).append(h[0, :-1].double())
            labels.append(ids[0, 1:])
    y = torch.cat(labels)
    return {i: stats_from_features(torch.cat(f), y, loaded.vocab_size) for i, f in feats.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_in_one_pass_equals_output_hidden_states(family, tiny_models, tiny_corpus):
    # float64 weights: padded batches of 3 and single blocks then agree to rounding (in float32 the
    # different GEMM shapes move inner layers by ~1e-8 relative).
    loaded = load_model(tiny_models[family], dtype=torch.float64)
    corpus = Corpus.open(tiny_corpus)
    config = CollectConfig(block_size=20, batch_size=3, layers=(0, 1, 2))
    result = collect_stats(loaded, corpus, config, progress=False)
    want = direct_layer_stats(loaded, corpus, 20)
    assert sorted(result.layers) == [0, 1, 2] == sorted(want)
    for i in range(3):
        assert_same_stats(result.layers[i], want[i], rtol=1e-10)
    # The last entry is the unembedding's input (after the final norm).
    assert_same_stats(result.stats, want[2], rtol=1e-10)
    # NC4 per layer: each hidden state against its own layer's means.
    nc4 = collect_nc4(loaded, corpus, result.stats, config, layer_stats=result.layers, progress=False)
    feats, preds, logits_all, targets = {}, [], [], []
    with torch.no_grad():
        for block in token_blocks(corpus, loaded.tokenizer, 20):
            out = loaded.model(input_ids=torch.tensor([block]), output_hidden_states=True)
            for i, h in enumerate(out.hidden_states):
                feats.setdefault(i, []).append(h[0, :-1])
            preds.append(out.logits[0, :-1].argmax(-1))
            logits_all.append(out.logits[0, :-1].double())
            targets.append(torch.tensor(block[1:]))
    pred = torch.cat(preds)
    for i in range(3):
        assert nc4.layers[i] == nc4_agreement(torch.cat(feats[i]), pred, result.layers[i])
    loss = torch.nn.functional.cross_entropy(torch.cat(logits_all), torch.cat(targets))
    assert nc4.loss == pytest.approx(float(loss), rel=1e-9)


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


def test_layers_that_cannot_fit_are_refused_before_the_pass(tiny_models, tiny_corpus, monkeypatch):
    loaded = load_model(tiny_models["gpt2"])
    monkeypatch.setattr(collect, "free_memory", lambda device: 3 * 2**29)
    monkeypatch.setattr(collect, "state_bytes", lambda k, d: 2**30)
    calls = []
    monkeypatch.setattr(collect, "forward_features", lambda *a, **k: calls.append(1))
    with pytest.raises(CollectError, match=r"3 statistics states of K=\d+ x D=16 float64 need 3.00 GiB, "
                                           r"more than 50% of the 1.50 GiB free on cpu"):
        collect_stats(loaded, Corpus.open(tiny_corpus), CollectConfig(block_size=20, layers=(0, 1)), progress=False)
    assert calls == []
    with pytest.raises(CollectError, match=r"layer\(s\) \[7\] do not exist: .* hidden states 0..2"):
        collect_stats(loaded, Corpus.open(tiny_corpus), CollectConfig(block_size=20, layers=(7,)), progress=False)


def _rank_layers(rank, model_dir, corpus_dir, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    result = collect_stats(load_model(model_dir, dtype=torch.float64), Corpus.open(corpus_dir),
                           CollectConfig(block_size=12, batch_size=2, layers=(0, 1, 2)), progress=False)
    for i, stats in result.layers.items():
        stats.save(f"{out_dir}/rank{rank}_layer{i}.safetensors")
    dist.destroy_process_group()


def test_two_ranks_with_layers_equal_one_process(tiny_models, tiny_corpus, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_layers, args=(str(tiny_models["gpt-neo"]), str(tiny_corpus), str(tmp_path / "init"),
                                 str(tmp_path)), nprocs=2, join=True)
    single = collect_stats(load_model(tiny_models["gpt-neo"], dtype=torch.float64), Corpus.open(tiny_corpus),
                           CollectConfig(block_size=12, batch_size=2, layers=(0, 1, 2)), progress=False)
    # Ranks see other batch compositions than one process (block i goes to rank i % 2), and the
    # model's float64 GEMMs differ by ~1e-11 relative across batch shapes: hence 1e-9.
    for rank in range(2):
        for i in range(3):
            assert_same_stats(ClassStats.load(tmp_path / f"rank{rank}_layer{i}.safetensors"), single.layers[i],
                              rtol=1e-9)


def test_killed_layer_run_resumes_bit_identical(tiny_models, tiny_corpus, tmp_path, monkeypatch):
    loaded = load_model(tiny_models["gpt2"])
    corpus = Corpus.open(tiny_corpus)
    config = CollectConfig(block_size=10, batch_size=2, checkpoint_every=2, layers=(0, 2))
    whole = collect_stats(loaded, corpus, config, progress=False)
    real, calls = collect.forward_features, {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] in (3, 6):
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(collect, "forward_features", dies)
    ckpt = tmp_path / "ckpt.safetensors"
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            collect_stats(loaded, corpus, config, checkpoint=ckpt, progress=False)
    resumed = collect_stats(loaded, corpus, config, checkpoint=ckpt, progress=False)
    assert resumed.resumed_blocks > 0
    assert_bit_identical(resumed.stats, whole.stats)
    for i in (0, 2):
        assert_bit_identical(resumed.layers[i], whole.layers[i])
    with pytest.raises(CollectError, match="belongs to another run"):  # other layers: another setting
        collect_stats(loaded, corpus, CollectConfig(block_size=10, batch_size=2, layers=(1,)), checkpoint=ckpt,
                      progress=False)


# ---- checkpoint series -------------------------------------------------------------------------


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


# ---- identity ------------------------------------------------------------------------------------


def test_identity_is_the_content_of_weights_and_tokenizer(tiny_corpus, tmp_path):
    a = load_model(save_tiny_model(tmp_path / "a", "gpt2", seed=0))
    b = load_model(save_tiny_model(tmp_path / "b", "gpt2", seed=1))  # same config, other weights
    assert a.identity != b.identity and a.identity_seconds >= 0
    c_dir = save_tiny_model(tmp_path / "c", "gpt2", seed=0)
    assert load_model(c_dir).identity == a.identity  # same content, other folder
    tok = json.loads((c_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[5:7]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two tokens swap ids: another tokenizer
    (c_dir / "tokenizer.json").write_text(json.dumps(tok))
    assert load_model(c_dir).identity != a.identity
    # A killed run of one model is not resumed by the other.
    config = CollectConfig(block_size=12, checkpoint_every=1)
    ckpt = tmp_path / "ckpt.safetensors"
    collect_stats(a, Corpus.open(tiny_corpus), config, checkpoint=ckpt, progress=False)
    with pytest.raises(CollectError, match="belongs to another run"):
        collect_stats(b, Corpus.open(tiny_corpus), config, checkpoint=ckpt, progress=False)


def test_a_flipped_byte_in_a_stats_file_is_an_error(tmp_path):
    rng = np.random.default_rng(0)
    stats = stats_from_features(rng.normal(size=(50, 4)), rng.integers(0, 5, 50), 5)
    path = stats.save(tmp_path / "s.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-9] ^= 0x01  # one bit of the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(StatsFileError, match="do not match the checksum"):
        ClassStats.load(path)


# ---- refusals ------------------------------------------------------------------------------------


def test_models_that_are_not_causal_lms_are_refused(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForMaskedLM

    bert = tmp_path / "bert"
    BertForMaskedLM(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                               vocab_size=300)).save_pretrained(bert)
    load_model(tiny_models["gpt2"]).tokenizer.save_pretrained(bert)
    with pytest.raises(ModelLoadError, match="not a causal language model: its architecture is BertForMaskedLM"):
        load_model(bert)
    headless = save_tiny_model(tmp_path / "headless", "llama")
    weights = load_file(headless / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, headless / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="no lm_head.weight: the unembedding would be freshly initialized"):
        load_model(headless)
    no_tok = save_tiny_model(tmp_path / "no_tok", "gpt2")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (no_tok / f).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="has no tokenizer files"):
        load_model(no_tok)
    other_tok = save_tiny_model(tmp_path / "other_tok", "gpt2", vocab_size=300)
    from transformers import AutoModelForCausalLM

    from .conftest import tiny_config

    AutoModelForCausalLM.from_config(tiny_config("gpt2", 1000)).save_pretrained(other_tok)  # 1000 rows, 300 tokens
    with pytest.raises(ModelLoadError, match="less than half the unembedding's 1000 rows"):
        load_model(other_tok)


def test_text_that_is_not_text_is_refused(tiny_models, tmp_path, capsys):
    loaded = load_model(tiny_models["gpt2"])
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "blob.txt").write_bytes(bytes(range(256)) * 50)
    with pytest.raises(CorpusError, match="looks like a binary file"):
        Corpus.open(tmp_path / "bin").identity()
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "a.txt").write_bytes(("caf\xe9 na\xefve " * 20).encode("latin-1"))
    with pytest.raises(CorpusError, match=r"holds 40 byte sequence\(s\) that are not UTF-8; pass errors='replace'"):
        collect_stats(loaded, Corpus.open(tmp_path / "latin"), CollectConfig(block_size=8), progress=False)
    replaced = collect_stats(loaded, Corpus.open(tmp_path / "latin", errors="replace"), CollectConfig(block_size=8),
                             progress=False)
    assert replaced.tokens > 0
    assert main(["measure", "--model", str(tiny_models["gpt2"]), "--corpus", str(tmp_path / "latin"),
                 "--out", str(tmp_path / "o"), "--block-size", "8"]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert main(["measure", "--model", str(tiny_models["gpt2"]), "--corpus", str(tmp_path / "latin"),
                 "--errors", "replace", "--out", str(tmp_path / "o"), "--block-size", "8"]) == 0


def test_bad_settings_are_refused_before_the_pass(tiny_models, tiny_corpus, tmp_path, capsys):
    loaded = load_model(tiny_models["gpt2"])
    corpus = Corpus.open(tiny_corpus)
    with pytest.raises(CollectError, match="block size 100 exceeds the 64 positions"):
        collect_stats(loaded, corpus, CollectConfig(block_size=100), progress=False)
    assert collect_stats(loaded, corpus, CollectConfig(), progress=False).stats.metadata["resolved_block_size"] == 64
    for bad, match in ((dict(batch_size=0), "batch size must be a positive integer"),
                       (dict(batch_size=-2), "batch size must be a positive integer"),
                       (dict(max_tokens=0), "max tokens must be a positive integer"),
                       (dict(max_tokens=-5), "max tokens must be a positive integer")):
        with pytest.raises(CollectError, match=match):
            CollectConfig(**bad)
    base = ["measure", "--model", str(tiny_models["gpt2"]), "--corpus", str(tiny_corpus)]
    assert main(base + ["--out", str(tmp_path / "a"), "--batch-size", "0"]) == 2
    assert "batch size must be a positive integer" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b"), "--heldout", str(tmp_path / "nowhere")]) == 2
    assert "is neither a known corpus" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # checked before the pass: nothing written
    # --out holding a finished run of another model is refused unless --overwrite.
    assert main(base + ["--out", str(tmp_path / "c")]) == 0
    other = ["measure", "--model", str(tiny_models["llama"]), "--corpus", str(tiny_corpus), "--out", str(tmp_path / "c")]
    assert main(other) == 2
    assert "holds a finished run of another model" in capsys.readouterr().err
    assert main(other + ["--overwrite"]) == 0
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["model"]["identity"] == \
        load_model(tiny_models["llama"]).identity


def test_train_then_measure_with_defaults(tiny_corpus, tmp_path):
    """The README's path: `collapse train` then `collapse measure` on its epoch folder, no block size
    given (the trained model has 16 positions... the measure default is the model's maximum)."""
    assert main(["train", "--corpus", str(tiny_corpus), "--depth", "1", "--width", "16", "--heads", "2",
                 "--epochs", "1", "--block-size", "16", "--batch-size", "4", "--vocab-size", "300",
                 "--out", str(tmp_path / "clm"), "--device", "cpu"]) == 0
    assert main(["measure", "--model", str(tmp_path / "clm" / "epoch1"), "--corpus", str(tiny_corpus),
                 "--out", str(tmp_path / "m"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert report["collect"]["resolved_block_size"] == report["model"]["max_positions"]


# ---- the API's silent cases ---------------------------------------------------------------------


def test_api_silent_cases_are_errors():
    acc = StatsAccumulator(3, 2)
    with pytest.raises(TypeError, match="features must be real numbers, got dtype torch.complex"):
        acc.update(torch.ones(2, 2, dtype=torch.complex128), [0, 1])
    with pytest.raises(TypeError, match="features must be real numbers, got dtype torch.bool"):
        acc.update(torch.ones(2, 2, dtype=torch.bool), [0, 1])
    big = np.array([1e308, 0.5e308])
    acc.update(np.ones((2, 2)), [0, 1], weights=big)
    before = acc.state()["n"].clone()
    with pytest.raises(ValueError, match="weights overflow"):
        acc.update(np.ones((2, 2)), [0, 1], weights=big)
    assert torch.equal(acc.state()["n"], before)  # refused before the state was poisoned
    with pytest.raises(ValueError, match="var_traces must be non-negative"):
        ClassStats(torch.ones(2), torch.ones(2, dtype=torch.int64), torch.zeros(2, 2), torch.tensor([1.0, -1.0]),
                   torch.zeros(2, 2))
    with pytest.raises(ValueError, match="duplicate \\(token, context\\)"):
        NTPTargets(np.array([0.5, 0.5]), np.array([0, 0, 1]), np.array([0, 0, 1]), np.array([0.5, 0.5, 1.0]), 3)
    with pytest.raises(ValueError, match=r"l_mm must have shape \(V, m\) = \(2, 4\)"):
        train_ufm(one_hot([2, 2]), 2, weight_decay=1e-3, steps=1, l_mm=np.zeros((4, 2)), device="cpu")
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        train_ufm(one_hot([2, 2]), 2, weight_decay=float("inf"), steps=1, device="cpu")
    from ufm.convex import LogitsProblem

    with pytest.raises(ValueError, match="lambda must be positive and finite"):
        LogitsProblem(one_hot([1, 1])).solve(float("inf"))


def test_identical_class_means_give_nan_not_an_exception():
    h = np.array([[1.0, 2.0]] * 4)
    m = collapse_metrics(stats_from_features(h, [0, 0, 1, 1], 2), np.ones((2, 2)))
    assert np.isnan(m.norm_cov) and np.isnan(m.cos_mean) and np.isnan(m.etf_error)
    assert np.isnan(m.cdnv_mean)  # 0 / 0: both variances 0 and the distance 0


def test_a_vocabulary_sized_sweep_states_its_expected_time():
    from ufm.metrics import expected_sweep_seconds

    cpu = torch.device("cpu")
    assert expected_sweep_seconds(50_257, 768, cpu) == pytest.approx(31.5, rel=1e-9)  # the benchmark's figure
    assert expected_sweep_seconds(1_000_000, 768, cpu) / 3600 > 3  # K ~ 10^6: hours
    rng = np.random.default_rng(0)
    stats = stats_from_features(rng.normal(size=(30, 3)), np.arange(30), 30)
    import ufm.metrics as metrics_module

    with pytest.warns(UserWarning, match=r"all-pairs sweep over 30 kept classes .* expected to take"):
        old = metrics_module.LONG_SWEEP_SECONDS
        metrics_module.LONG_SWEEP_SECONDS = 0.0
        try:
            collapse_metrics(stats)
        finally:
            metrics_module.LONG_SWEEP_SECONDS = old


# ---- crash and resume ----------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    for i in range(6):
        (root / f"doc{i}.txt").write_text(" ".join(LINES * 12) + f" part {i}")
    return root


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
