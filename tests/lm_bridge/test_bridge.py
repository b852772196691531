import json

import numpy as np
import pytest
import torch

from experiments.cli import main
from tests.conftest import requires_cuda
from lm_bridge.collect import CollectConfig, CollectError, collect_nc4, collect_stats
from lm_bridge.corpus import Corpus, CorpusError, document_ids, token_blocks
from lm_bridge.models import ModelLoadError, capture_unembedding_input, load_model
from ufm import PRESETS, ClassStats, StatsAccumulator, collapse_metrics, stats_from_features
from ufm.nc4 import nc4_agreement
from ufm.stats import load_accumulators

from .conftest import save_tiny_model

FAMILIES = ["gpt2", "gpt-neo", "llama"]


def reference_stats(loaded, corpus, block_size):
    """Straight from output_hidden_states[-1], one block at a time, no hooks and no padding."""
    feats, labels = [], []
    with torch.no_grad():
        for block in token_blocks(corpus, loaded.tokenizer, block_size):
            ids = torch.tensor([block])
            hidden = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            feats.append(hidden[:-1].double())
            labels.append(ids[0, 1:])
    return stats_from_features(torch.cat(feats), torch.cat(labels), loaded.vocab_size)


def assert_bit_identical(a: ClassStats, b: ClassStats):
    for name in ("counts", "sample_counts", "means", "var_traces", "within_scatter"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def assert_same_stats(a: ClassStats, b: ClassStats, rtol):
    for name in ("counts", "sample_counts", "means", "var_traces", "within_scatter"):
        x, y = getattr(a, name).double(), getattr(b, name).double()
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol * float(y.abs().max()), msg=name)


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
    assert options == dict(PRESETS["lc2024"], min_count=2, tile_size=None, riesz_s=None)
    # metrics.json holds exactly the metrics of the saved statistics with the model's classifier.
    want = collapse_metrics(stats, loaded.classifier(), **options).to_dict()
    assert want["dual_cos_mean"] is not None
    for key, value in want.items():
        assert report["metrics"][key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key
    assert report["tokens"] == int(stats.sample_counts.sum())
    # NC4 as Wu & Papyan count it: held-out positions whose true next token is a kept class.
    h, pred, labels = heldout_features(loaded, Corpus.open(tiny_corpus / "doc0.txt"), 24)
    kept = stats.sample_counts[labels] >= 2
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
    with pytest.raises(CollectError, match=r"NaN or Inf hidden states in batch 0 \(final, blocks 0\.\.1 of this rank\)"):
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


def test_bad_corpora(tiny_models, tmp_path):
    tok = load_model(tiny_models["gpt2"]).tokenizer
    with pytest.raises(CorpusError, match="does not exist"):
        Corpus.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no text files"):
        Corpus.open(tmp_path / "empty")
    (tmp_path / "short.txt").write_text("the cat")
    with pytest.raises(CorpusError, match="fewer than one block of 64"):
        list(token_blocks(Corpus.open(tmp_path / "short.txt"), tok, 64))
    (tmp_path / "blank_dir").mkdir()
    (tmp_path / "blank_dir" / "a.txt").write_text("")
    tok.eos_token = None  # without an EOS, an empty file adds no token at all
    assert tok.eos_token_id is None
    with pytest.raises(CorpusError, match="is empty"):
        list(token_blocks(Corpus.open(tmp_path / "blank_dir"), tok, 8))


def test_bad_model_directories(tiny_models, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path / "noconfig")
    from transformers import ViTConfig, ViTModel

    vit = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                       image_size=8, patch_size=4)).save_pretrained(vit)
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(vit)
    small = save_tiny_model(tmp_path / "small", "gpt2", vocab_size=300)
    from transformers import AutoModelForCausalLM

    from .conftest import tiny_config

    AutoModelForCausalLM.from_config(tiny_config("gpt2", 100)).save_pretrained(small)  # vocab 100 < 300
    with pytest.raises(ModelLoadError, match="tokenizer has 300 tokens but the unembedding only 100"):
        load_model(small)


def test_hook_is_removed_on_error(tiny_models):
    loaded = load_model(tiny_models["gpt2"])
    with pytest.raises(RuntimeError, match="boom"):
        with capture_unembedding_input(loaded.model):
            raise RuntimeError("boom")
    assert len(loaded.unembedding._forward_pre_hooks) == 0


def _rank_main(rank, model_dir, corpus_dir, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    loaded = load_model(model_dir, dtype=torch.float64)
    result = collect_stats(loaded, Corpus.open(corpus_dir), CollectConfig(block_size=12, batch_size=2),
                           progress=False)
    result.stats.save(f"{out_dir}/rank{rank}.safetensors")
    dist.destroy_process_group()


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


def other_tokens(loaded, corpus) -> int:
    """Every labelled position of ``corpus`` at block size 20."""
    return sum(len(b) - 1 for b in token_blocks(corpus, loaded.tokenizer, 20))


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
