"""lm_bridge.models: what is not a causal LM is refused, content identity, the capture hook, and
the family matrix (GPT-NeoX, Qwen2, Mistral, Gemma-2, OPT, Phi): every layer against the model's outputs."""

import json
import math

import pytest
import torch
import transformers

from experiments.cli import main
from lm_bridge.collect import CollectConfig, CollectError, collect_nc4, collect_stats
from lm_bridge.corpus import Corpus, token_blocks
from lm_bridge.models import ModelLoadError, capture_unembedding_input, load_model
from lm_bridge.tokenizer import train_bpe_tokenizer
from tests.lm_bridge.conftest import LINES, save_tiny_model
from tests.lm_bridge.reference import assert_same_stats, direct_layer_stats
from ufm import ClassStats, nc4_agreement


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


def capped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return logits if cap is None else cap * torch.tanh(logits / cap)


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    tokenizer = train_bpe_tokenizer(LINES, 300)
    paths = {}
    for name, (config_cls, model_cls, options) in CONFIGS.items():
        torch.manual_seed(0)
        config = getattr(transformers, config_cls)(vocab_size=len(tokenizer), **SPECIAL, **options)
        model = getattr(transformers, model_cls)(config)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = root / name
    return paths


SPECIAL = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)


SOFTCAP = 0.5  # small enough that capping visibly changes the tiny model's logits


SMALL = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


CONFIGS = {
    "gpt-neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                 dict(SMALL, use_parallel_residual=True, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                              partial_rotary_factor=0.25),
                      tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(SMALL, num_key_value_heads=2, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(SMALL, num_key_value_heads=1, sliding_window=8, tie_word_embeddings=False)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(SMALL, num_key_value_heads=2, head_dim=4, final_logit_softcapping=SOFTCAP, tie_word_embeddings=True,
                    sliding_window=8)),
    "opt": ("OPTConfig", "OPTForCausalLM",
            dict(hidden_size=32, word_embed_proj_dim=16, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=64)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(SMALL, partial_rotary_factor=0.5)),
}


@pytest.mark.parametrize("family", list(CONFIGS))
def test_every_layer_of_each_family_equals_its_own_outputs(family, family_models, tiny_corpus):
    loaded = load_model(family_models[family], dtype=torch.float64)
    corpus = Corpus.open(tiny_corpus)
    layers = tuple(range(loaded.num_hidden_states))
    config = CollectConfig(block_size=20, batch_size=3, layers=layers)
    result = collect_stats(loaded, corpus, config, progress=False)
    want = direct_layer_stats(loaded, corpus, 20)
    for i in layers:
        assert_same_stats(result.layers[i], want[i], rtol=1e-10)
    # The last hidden state is the unembedding's input, and the classifier is the head the model uses:
    # W h (+ b), soft-capped where the family caps, gives the model's own logits.
    head = loaded.model.get_output_embeddings()
    W, b = loaded.classifier(), loaded.classifier_bias()
    assert torch.equal(W, head.weight.double())
    if loaded.model.config.tie_word_embeddings:
        assert torch.equal(W, loaded.model.get_input_embeddings().weight.double())
    cap = getattr(loaded.model.config, "final_logit_softcapping", None)
    feats, preds = [], []
    with torch.no_grad():
        for block in token_blocks(corpus, loaded.tokenizer, 20):
            out = loaded.model(input_ids=torch.tensor([block]), output_hidden_states=True)
            h = out.hidden_states[-1][0]
            logits = h @ W.T + (b if b is not None else 0)
            torch.testing.assert_close(capped(logits, cap), out.logits[0], rtol=1e-10, atol=1e-12)
            if cap is not None:
                assert (logits - out.logits[0]).abs().max() > 1e-3  # capping is in force
            feats.append(h[:-1])
            preds.append(out.logits[0, :-1].argmax(-1))
    assert_same_stats(result.stats, want[layers[-1]], rtol=1e-10)
    assert result.stats.dim == W.shape[1]
    # NC4 compares the nearest class mean with the argmax of the model's own (capped) logits.
    nc4 = collect_nc4(loaded, corpus, result.stats, config, layer_stats=result.layers, progress=False)
    assert nc4.agreement == nc4_agreement(torch.cat(feats), torch.cat(preds), result.stats)


@pytest.mark.parametrize("family", ["opt", "gemma2"])
def test_measure_layers_all_on_each_family(family, family_models, tiny_corpus, tmp_path):
    out = tmp_path / family
    assert main(["measure", "--model", str(family_models[family]), "--corpus", str(tiny_corpus), "--layers", "all",
                 "--block-size", "20", "--device", "cpu", "--out", str(out)]) == 0
    widths = [ClassStats.load(out / "layers" / f"layer_{i:02d}.safetensors").dim for i in range(3)]
    assert widths == ([32, 32, 16] if family == "opt" else [16, 16, 16])  # OPT's project_out: 32 -> 16
    assert ClassStats.load(out / "stats.safetensors").dim == 16
    assert math.isfinite(__import__("json").loads((out / "metrics.json").read_text())["metrics"]["cdnv_mean"])
