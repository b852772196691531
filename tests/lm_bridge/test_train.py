"""lm_bridge.train: seeded, load-independent, resumable training of small CLMs, measured after."""

import json

import pytest

from experiments.cli import main
from lm_bridge.corpus import Corpus
from lm_bridge.models import load_model
from lm_bridge.train import TrainSpec, train_clm


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


def _final_weights(path):
    return {k: v.clone() for k, v in load_model(path).model.state_dict().items()}


def test_killed_training_resumes_mid_epoch_bit_identical(tokenizer, tiny_corpus, tmp_path, monkeypatch):
    """A state every 2 steps; a run killed right after its third (mid-epoch 1... 2) resumes at that
    step and ends with the uninterrupted run's weights, bit for bit, on the CPU."""
    import torch

    import lm_bridge.train as train_mod

    train, val = Corpus.open(tiny_corpus).split(every=4)
    whole = train_clm(SPEC, tokenizer, train, val, tmp_path / "whole", device="cpu", progress=False,
                      checkpoint_every=2)
    real, saved = train_mod._save_state, []

    def killed_after_the_third_state(path, state):
        real(path, state)
        saved.append((state["epoch"], state["step"]))
        if len(saved) == 3:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train_mod, "_save_state", killed_after_the_third_state)
    with pytest.raises(KeyboardInterrupt):
        train_clm(SPEC, tokenizer, train, val, tmp_path / "run", device="cpu", progress=False, checkpoint_every=2)
    assert saved[-1][1] > 0  # killed mid-epoch: the state is at a step inside an epoch
    monkeypatch.setattr(train_mod, "_save_state", real)
    resumed = train_clm(SPEC, tokenizer, train, val, tmp_path / "run", device="cpu", progress=False,
                        checkpoint_every=2)
    assert [r.val_loss for r in resumed] == [r.val_loss for r in whole]
    assert [r.train_loss for r in resumed] == [r.train_loss for r in whole]
    a, b = _final_weights(tmp_path / "whole" / "epoch2"), _final_weights(tmp_path / "run" / "epoch2")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="checkpoint_every must be an integer >= 0"):
        train_clm(SPEC, tokenizer, train, val, tmp_path / "x", device="cpu", checkpoint_every=-1)


def _train_rank(rank, corpus_dir, init_file, out_dir, spec_dict):
    import torch
    import torch.distributed as dist

    from tests.lm_bridge.conftest import LINES
    from lm_bridge.tokenizer import train_bpe_tokenizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    train, val = Corpus.open(corpus_dir).split(every=4)
    train_clm(TrainSpec(**spec_dict), train_bpe_tokenizer(LINES, 300), train, val, out_dir, device="cpu",
              progress=False)
    dist.destroy_process_group()


def test_two_gloo_ranks_train_the_model_of_one_process(tokenizer, tiny_corpus, tmp_path):
    """DDP on 2 CPU ranks: each rank half of every batch (the last, odd batch too), the gradient
    all-reduced. Equal to one process up to the order of float32 sums: 1e-5 after every step."""
    import torch
    import torch.multiprocessing as mp

    spec = TrainSpec(**{**SPEC.__dict__, "batch_size": 3})  # odd batches: unequal shares, weighted
    train, val = Corpus.open(tiny_corpus).split(every=4)
    one = train_clm(spec, tokenizer, train, val, tmp_path / "one", device="cpu", progress=False)
    mp.spawn(_train_rank, args=(str(tiny_corpus), str(tmp_path / "init"), str(tmp_path / "ddp"), spec.__dict__),
             nprocs=2, join=True)
    info = json.loads((tmp_path / "ddp" / "epoch2" / "training.json").read_text())
    assert info["world_size"] == 2 and info["precision"] == "float32"
    assert info["val_loss"] == pytest.approx(one[-1].val_loss, rel=1e-5)
    assert info["train_loss"] == pytest.approx(one[-1].train_loss, rel=1e-5)
    a, b = _final_weights(tmp_path / "one" / "epoch2"), _final_weights(tmp_path / "ddp" / "epoch2")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
