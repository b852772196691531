"""lm_bridge.collect: the one pass into ClassStats (every layer, resumable, ranks merged) against the
model's own hidden states, and the NC4 pass."""

import json

import numpy as np
import pytest
import torch

import lm_bridge.collect as collect
from experiments.cli import main
from lm_bridge.collect import CollectConfig, CollectError, collect_nc4, collect_stats
from lm_bridge.corpus import Corpus, document_ids, token_blocks
from lm_bridge.models import load_model
from tests.conftest import requires_cuda
from tests.lm_bridge.reference import (assert_bit_identical, assert_same_stats, direct_layer_stats,
                                       reference_stats)
from ufm import ClassStats, StatsAccumulator, nc4_agreement, stats_from_features
from ufm.stats import load_accumulators


def _rank_main(rank, model_dir, corpus_dir, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    loaded = load_model(model_dir, dtype=torch.float64)
    result = collect_stats(loaded, Corpus.open(corpus_dir), CollectConfig(block_size=12, batch_size=2),
                           progress=False)
    result.stats.save(f"{out_dir}/rank{rank}.safetensors")
    dist.destroy_process_group()


FAMILIES = ["gpt2", "gpt-neo", "llama"]


@pytest.mark.parametrize("family", FAMILIES)
def test_collected_stats_equal_hidden_states(family, tiny_models, tiny_corpus):
    loaded = load_model(tiny_models[family])
    assert loaded.classifier().shape == (loaded.vocab_size, 16)
    result = collect_stats(loaded, Corpus.open(tiny_corpus), CollectConfig(block_size=24, batch_size=3),
                           progress=False)
    assert_same_stats(result.stats, reference_stats(loaded, Corpus.open(tiny_corpus), 24), rtol=1e-10)
    blocks = list(token_blocks(Corpus.open(tiny_corpus), loaded.tokenizer, 24))
    assert result.tokens == sum(len(b) - 1 for b in blocks) and result.blocks == len(blocks)
    assert len(loaded.unembedding._forward_pre_hooks) == 0  # the hook removed itself


def test_nc4_pass_equals_direct_computation(tiny_models, tiny_corpus):
    loaded = load_model(tiny_models["llama"])
    corpus = Corpus.open(tiny_corpus)
    blocks = [torch.tensor(b) for b in token_blocks(corpus, loaded.tokenizer, 20)]
    with torch.no_grad():  # a head that predicts the commonest next token where h leans its way: accuracy > 0
        common = int(torch.cat([b[1:] for b in blocks]).mode().values)
        h = torch.cat([loaded.model(input_ids=b[None], output_hidden_states=True).hidden_states[-1][0] for b in blocks])
        loaded.model.lm_head.weight.zero_()
        loaded.model.lm_head.weight[common] = h.mean(0)
    stats = collect_stats(loaded, corpus, CollectConfig(block_size=20), progress=False).stats
    result = collect_nc4(loaded, corpus, stats, CollectConfig(block_size=20, batch_size=2), progress=False)
    feats, preds, losses, hits = [], [], [], []
    with torch.no_grad():
        for block in token_blocks(corpus, loaded.tokenizer, 20):
            out = loaded.model(input_ids=torch.tensor([block]), output_hidden_states=True)
            feats.append(out.hidden_states[-1][0, :-1])
            preds.append(out.logits[0, :-1].argmax(-1))
            targets = torch.tensor(block[1:])
            losses.append(torch.nn.functional.cross_entropy(out.logits[0, :-1].double(), targets, reduction="none"))
            hits.append(preds[-1] == targets)
    assert result.agreement == nc4_agreement(torch.cat(feats), torch.cat(preds), stats)
    assert result.tokens == sum(len(f) for f in feats)
    # The model's validation loss and top-1 accuracy over the same positions.
    assert result.loss == pytest.approx(float(torch.cat(losses).mean()), rel=1e-6)
    assert result.accuracy == pytest.approx(float(torch.cat(hits).double().mean()), abs=1e-12)
    assert 0 < result.accuracy < 1


def test_killed_run_resumes_to_the_same_statistics(tiny_models, tiny_corpus, tmp_path, monkeypatch):
    import lm_bridge.collect as collect

    loaded = load_model(tiny_models["gpt-neo"])
    corpus = Corpus.open(tiny_corpus)
    config = CollectConfig(block_size=12, batch_size=2, checkpoint_every=2)
    whole = collect_stats(loaded, corpus, config, progress=False)
    real, calls = collect.forward_features, {"n": 0}

    def dies_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(collect, "forward_features", dies_after_three)
    ckpt = tmp_path / "ckpt.safetensors"
    with pytest.raises(KeyboardInterrupt):
        collect_stats(loaded, corpus, config, checkpoint=ckpt, progress=False)
    assert load_accumulators(ckpt)[1]["blocks_done"] == 6
    monkeypatch.setattr(collect, "forward_features", real)
    resumed = collect_stats(loaded, corpus, config, checkpoint=ckpt, progress=False)
    assert resumed.resumed_blocks == 6 and resumed.tokens == whole.tokens
    assert_bit_identical(resumed.stats, whole.stats)


def test_checkpoints_land_every_n_blocks_and_a_finished_run_is_not_redone(tiny_models, tiny_corpus, tmp_path,
                                                                          monkeypatch):
    import lm_bridge.collect as collect

    loaded = load_model(tiny_models["gpt2"])
    corpus = Corpus.open(tiny_corpus)
    config = CollectConfig(block_size=12, batch_size=1, checkpoint_every=2)
    real, saved = collect.save_accumulators, []

    def recording(path, accs, meta):
        saved.append(meta["blocks_done"])
        return real(path, accs, meta)

    monkeypatch.setattr(collect, "save_accumulators", recording)
    ckpt = tmp_path / "ckpt.safetensors"
    first = collect_stats(loaded, corpus, config, checkpoint=ckpt, progress=False)
    assert first.blocks >= 3
    assert saved == [*range(2, first.blocks + 1, 2), first.blocks]  # every 2 blocks, and once at the end
    assert first.stats.metadata["corpus"] == str(corpus.root) and first.stats.metadata["blocks"] == first.blocks
    again = collect_stats(loaded, corpus, config, checkpoint=ckpt, progress=False)
    assert again.resumed_blocks == first.blocks and again.tokens == first.tokens
    assert_bit_identical(again.stats, first.stats)


def test_state_bytes_are_the_accumulator_state():
    from lm_bridge.collect import state_bytes

    state = StatsAccumulator(7, 3).state()
    assert state_bytes(7, 3) == sum(t.numel() * t.element_size() for t in state.values())
    assert CollectConfig(batch_size=1).batch_size == 1
    with pytest.raises(CollectError, match="batch size must be a positive integer, got 0"):
        CollectConfig(batch_size=0)


def test_checkpoint_of_another_model_is_refused(tiny_models, tiny_corpus, tmp_path):
    corpus = Corpus.open(tiny_corpus)
    config = CollectConfig(block_size=12, checkpoint_every=1)
    ckpt = tmp_path / "ckpt.safetensors"
    collect_stats(load_model(tiny_models["gpt2"]), corpus, config, checkpoint=ckpt, progress=False)
    with pytest.raises(CollectError, match="belongs to another run"):
        collect_stats(load_model(tiny_models["llama"]), corpus, config, checkpoint=ckpt, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("a different corpus entirely, with other words in it " * 5)
    with pytest.raises(CollectError, match="belongs to another run"):
        collect_stats(load_model(tiny_models["gpt2"]), Corpus.open(other), config, checkpoint=ckpt, progress=False)


def test_full_disk_during_checkpoint_keeps_the_previous_one(tiny_models, tiny_corpus, tmp_path, monkeypatch):
    import ufm.stats

    loaded = load_model(tiny_models["gpt2"])
    ckpt = tmp_path / "ckpt.safetensors"
    real, calls = ufm.stats.save_file, {"n": 0}

    def disk_full_on_second(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            open(filename, "wb").write(b"partial")
            raise OSError(28, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ufm.stats, "save_file", disk_full_on_second)
    with pytest.raises(OSError, match="No space left"):
        collect_stats(loaded, Corpus.open(tiny_corpus), CollectConfig(block_size=12, batch_size=2, checkpoint_every=1),
                      checkpoint=ckpt, progress=False)
    assert load_accumulators(ckpt)[1]["blocks_done"] == 2  # the first checkpoint (one batch), intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_nan_hidden_states_name_the_batch(tiny_models, tiny_corpus):
    loaded = load_model(tiny_models["gpt2"])
    with torch.no_grad():
        loaded.model.transformer.ln_f.weight.fill_(float("nan"))
    with pytest.raises(CollectError, match=r"NaN or Inf hidden states in batch 0, blocks 0\.\.1 of this rank \(final\)"):
        collect_stats(loaded, Corpus.open(tiny_corpus), CollectConfig(block_size=12, batch_size=2), progress=False)


def test_token_accounting_is_exact(tiny_models, tiny_corpus):
    tok = load_model(tiny_models["gpt2"]).tokenizer
    corpus = Corpus.open(tiny_corpus)
    stream = sum((document_ids(p.read_text(), tok) for p in sorted(tiny_corpus.glob("*.txt"))), [])
    assert stream.count(tok.eos_token_id) >= 4  # one EOS closes each document
    blocks = list(token_blocks(corpus, tok, 10))
    assert sum(blocks, []) == stream[: len(sum(blocks, []))]
    assert all(len(b) == 10 for b in blocks[:-1]) and 2 <= len(blocks[-1]) <= 10
    tail = len(stream) % 10
    assert len(sum(blocks, [])) == len(stream) - (tail if tail == 1 else 0)
    capped = list(token_blocks(corpus, tok, 10, max_tokens=25))
    assert [len(b) for b in capped] == [10, 10, 5]


def test_two_gloo_ranks_equal_one_process(tiny_models, tiny_corpus, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(str(tiny_models["gpt2"]), str(tiny_corpus), str(tmp_path / "init"), str(tmp_path)),
             nprocs=2, join=True)
    single = collect_stats(load_model(tiny_models["gpt2"], dtype=torch.float64), Corpus.open(tiny_corpus),
                           CollectConfig(block_size=12, batch_size=2), progress=False)
    # Ranks batch other blocks together than one process does (block i goes to rank i % 2), and the
    # forward pass rounds differently across batch shapes and padding masks (in float32 a feature moved
    # by one ulp, 1.5e-8, with transformers 5.24): the model runs in float64, the counts must be equal.
    for rank in range(2):
        merged = ClassStats.load(tmp_path / f"rank{rank}.safetensors")
        assert merged.metadata["tokens"] == single.tokens
        assert torch.equal(merged.counts, single.stats.counts) and torch.equal(merged.sample_counts, single.stats.sample_counts)
        assert_same_stats(merged, single.stats, rtol=1e-9)
    assert np.isclose(merged.total, single.stats.total)


def test_rank_zero_of_two_in_process(tiny_models, tiny_corpus, monkeypatch):
    """The multi-rank paths of collect_stats and collect_nc4 in one process: rank 0 of two, whose
    collectives report an empty second rank (the gloo tests run real ranks, in processes a coverage
    tool cannot follow). Rank 0 takes the even blocks."""
    import lm_bridge.collect as collect

    loaded = load_model(tiny_models["gpt2"], dtype=torch.float64)
    corpus = Corpus.open(tiny_corpus)
    monkeypatch.setattr(collect, "_rank_world", lambda: (0, 2))
    monkeypatch.setattr(collect.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(collect.dist, "all_gather_object", lambda out, obj: out.__setitem__(slice(None), [obj, (None, 0, 0)]))
    monkeypatch.setattr(collect.dist, "all_reduce", lambda t: t)
    even = [torch.tensor(b) for b in token_blocks(corpus, loaded.tokenizer, 12)][::2]
    feats, losses = [], []
    with torch.no_grad():
        for ids in even:
            out = loaded.model(input_ids=ids[None], output_hidden_states=True)
            feats.append(out.hidden_states[-1][0, :-1])
            losses.append(torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[1:], reduction="none"))
    result = collect_stats(loaded, corpus, CollectConfig(block_size=12, batch_size=2), progress=False)
    assert (result.blocks, result.tokens) == (len(even), sum(len(b) - 1 for b in even))
    assert_same_stats(result.stats, stats_from_features(torch.cat(feats), torch.cat([b[1:] for b in even]),
                                                        loaded.vocab_size), rtol=1e-10)
    nc4 = collect_nc4(loaded, corpus, result.stats, CollectConfig(block_size=12, batch_size=2), progress=False)
    assert nc4.tokens == result.tokens
    assert nc4.loss == pytest.approx(float(torch.cat(losses).mean()), rel=1e-10)


def test_rank_merge_is_one_pass_over_every_rank(monkeypatch):
    """The rank merge in-process, with three simulated ranks (the gloo test runs it for real, in spawned
    processes no coverage tool follows): every rank's state is merged, a rank that saw no tokens
    sends none, and blocks and tokens are summed."""
    from types import SimpleNamespace

    from lm_bridge import collect

    k, d = 5, 3
    g = torch.Generator().manual_seed(0)
    h = torch.randn(30, d, dtype=torch.float64, generator=g)  # (N, D)
    y = torch.randint(0, k, (30,), generator=g)  # (N,)

    def accumulators(rows):  # the final layer and a layer of other features, as collect keeps them
        return {collect.FINAL: StatsAccumulator(k, d).update(h[rows], y[rows]),
                2: StatsAccumulator(k, d).update(h[rows].square(), y[rows])}

    sent = []
    others = [(None, 1, 0), ({n: a.state() for n, a in accumulators(slice(12, 30)).items()}, 3, 18)]

    def all_gather_object(out, obj):
        sent.append(obj)
        out[:] = [obj, *others]

    monkeypatch.setattr(collect.dist, "get_world_size", lambda: 3)
    monkeypatch.setattr(collect.dist, "all_gather_object", all_gather_object)
    loaded = SimpleNamespace(vocab_size=k, hidden_size=d, device=torch.device("cpu"))
    merged, blocks, tokens = collect._merge_ranks(accumulators(slice(0, 12)), 2, 12, loaded)
    assert (blocks, tokens) == (6, 30)
    assert set(merged) == {collect.FINAL, 2}
    for name, features in ((collect.FINAL, h), (2, h.square())):
        assert_same_stats(merged[name].compute(), stats_from_features(features, y, k), rtol=1e-12)
    assert set(sent[0][0]) == {collect.FINAL, 2} and sent[0][1:] == (2, 12)

    # A rank without tokens sends no state, and its empty accumulators add nothing.
    merged, blocks, tokens = collect._merge_ranks({n: StatsAccumulator(k, d) for n in (collect.FINAL, 2)}, 1, 0,
                                                 loaded)
    assert sent[1] == (None, 1, 0)
    assert (blocks, tokens) == (5, 18)
    assert_same_stats(merged[collect.FINAL].compute(), stats_from_features(h[12:], y[12:], k), rtol=1e-12)


@requires_cuda
@pytest.mark.gpu
def test_cuda_collection_equals_cpu(tiny_models, tiny_corpus):
    # GPT-2 in float64 (Llama's rotary tables are built in float32 on purpose, 1e-7 apart across devices).
    config = CollectConfig(block_size=24, batch_size=3)
    runs = [collect_stats(load_model(tiny_models["gpt2"], device=dev, dtype=torch.float64),
                          Corpus.open(tiny_corpus), config, progress=False) for dev in ("cpu", "cuda")]
    assert runs[1].stats.device.type == "cuda"
    assert_same_stats(runs[1].stats.to("cpu"), runs[0].stats, rtol=1e-9)


def _rank_layers(rank, model_dir, corpus_dir, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    result = collect_stats(load_model(model_dir, dtype=torch.float64), Corpus.open(corpus_dir),
                           CollectConfig(block_size=12, batch_size=2, layers=(0, 1, 2)), progress=False)
    for i, stats in result.layers.items():
        stats.save(f"{out_dir}/rank{rank}_layer{i}.safetensors")
    dist.destroy_process_group()


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


def test_a_state_that_cannot_fit_alone_is_refused_before_the_pass(tiny_models, tiny_corpus, monkeypatch):
    loaded = load_model(tiny_models["gpt2"])
    monkeypatch.setattr(collect, "free_memory", lambda device: 3 * 2**29)
    monkeypatch.setattr(collect, "state_bytes", lambda k, d: 2**30)
    calls = []
    monkeypatch.setattr(collect, "forward_features", lambda *a, **k: calls.append(1))
    with pytest.raises(CollectError, match=r"one statistics state of K=\d+ classes x D=16 float64 needs 1.00 GiB, "
                                           r"more than 50% of the 1.50 GiB free on cpu"):
        collect_stats(loaded, Corpus.open(tiny_corpus), CollectConfig(block_size=20, layers=(0, 1)), progress=False)
    assert calls == []
    with pytest.raises(CollectError, match=r"layer\(s\) \[7\] do not exist: .* hidden states 0..2"):
        collect_stats(loaded, Corpus.open(tiny_corpus), CollectConfig(block_size=20, layers=(7,)), progress=False)


def test_states_are_sparse_and_split_over_passes_that_equal_one_pass(tiny_models, tiny_corpus, monkeypatch, capsys):
    """Rows only for the classes that occur; states that do not fit together go to several
    passes over the same blocks, bit-identical to the single pass."""
    loaded = load_model(tiny_models["gpt2"], dtype=torch.float64)
    corpus = Corpus.open(tiny_corpus)
    config = CollectConfig(block_size=20, batch_size=2, layers=(0, 1, 2))
    one = collect_stats(loaded, corpus, config, progress=False)
    assert one.plan.passes == (("final", "layer_00", "layer_01", "layer_02"),) and not one.plan.classes_counted
    seen = sorted({t for b in token_blocks(corpus, loaded.tokenizer, 20) for t in b[1:]})
    assert one.stats.class_ids.tolist() == seen and one.stats.num_labels == loaded.vocab_size < 2 * len(seen) + 300
    for i, ref in direct_layer_stats(loaded, corpus, 20).items():
        assert_same_stats(one.layers[i], ref, rtol=1e-10)
    # Room for two states a pass, once the classes are counted (the vocabulary bound does not fit).
    need = collect.state_bytes(len(seen), 16)
    monkeypatch.setattr(collect, "free_memory", lambda device: 2 * (2 * need + 8 * loaded.vocab_size))
    forwards = []
    real = collect.forward_features
    monkeypatch.setattr(collect, "forward_features", lambda *a, **k: forwards.append(1) or real(*a, **k))
    split = collect_stats(loaded, corpus, config, progress=False)
    assert split.plan.passes == (("final", "layer_00"), ("layer_01", "layer_02")) and split.plan.classes_counted
    assert split.plan.classes == len(seen)
    assert len(forwards) == 2 * len(list(collect.batches(token_blocks(corpus, loaded.tokenizer, 20), 2)))  # each pass
    assert "4 statistics states of %d classes that occur in the corpus in 2 pass(es)" % len(seen) in capsys.readouterr().err
    assert_bit_identical(split.stats, one.stats)
    for i in (0, 1, 2):
        assert_bit_identical(split.layers[i], one.layers[i])
    assert split.tokens == one.tokens and split.blocks == one.blocks


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


def test_every_layer_of_a_128k_vocabulary_model_is_sparse_and_equals_the_dense_computation(tmp_path, monkeypatch):
    """A Llama-3-sized vocabulary (128,256) with small D, on a corpus that sees a few dozen
    classes: every state holds rows for the classes seen only, and equals the dense statistics
    of output_hidden_states to 1e-12. The free memory is set so that the vocabulary bound does
    not fit: the classes are counted, and each state allocates exactly that many rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.lm_bridge.conftest import LINES, wide_tokenizer

    tokenizer = wide_tokenizer(LINES, 128_256)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128_256, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "big")
    tokenizer.save_pretrained(tmp_path / "big")
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "a.txt").write_text(" ".join(LINES * 3))
    corpus = Corpus.open(corpus_dir)
    loaded = load_model(tmp_path / "big", dtype=torch.float64)
    dense_bytes = 4 * collect.state_bytes(128_256, 16)  # the final state and 3 hidden states, dense
    monkeypatch.setattr(collect, "free_memory", lambda device: dense_bytes)  # half of it is the budget
    result = collect_stats(loaded, corpus, CollectConfig(block_size=32, batch_size=3, layers=(0, 1, 2)), progress=False)
    seen = sorted({t for b in token_blocks(corpus, loaded.tokenizer, 32) for t in b[1:]})
    assert result.plan.classes_counted and result.plan.classes == len(seen) and len(result.plan.passes) == 1
    assert 30 < len(seen) < 1000 and max(seen) > 100_000 and result.plan.bytes_per_pass[0] < dense_bytes / 50
    for i, ref in direct_layer_stats(loaded, corpus, 32).items():
        got = result.layers[i]
        assert got.num_classes == len(seen) and got.num_labels == 128_256 and got.class_ids.tolist() == seen
        assert_same_stats(got, ref, rtol=1e-12)
    assert_same_stats(result.stats, result.layers[2], rtol=0)  # Llama's head reads the last hidden state
