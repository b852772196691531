"""The family matrix: tiny random models of the families researchers measure, each with its quirks
switched on, measured with every layer and checked against the model's own outputs.

| family | quirk exercised |
| --- | --- |
| GPT-NeoX (Pythia) | parallel residual, partial rotary (25%), untied head |
| Qwen2 | grouped-query attention, QKV bias, tied head |
| Mistral | grouped-query attention, sliding window, untied head |
| Gemma-2 | embedding scaled by sqrt(d), tied head, final-logit soft-capping |
| OPT | project_out after the final norm (word_embed_proj_dim 16 < hidden size 32, as in OPT-350m) |
| Phi | partial rotary (50%), a bias on the head |

(GPT-2, GPT-Neo and Llama are in test_bridge.py and test_depth_and_identity.py.)"""

import math

import pytest
import torch
import transformers

from experiments.cli import main
from lm_bridge.collect import CollectConfig, collect_nc4, collect_stats
from lm_bridge.corpus import Corpus, token_blocks
from lm_bridge.models import load_model
from lm_bridge.tokenizer import train_bpe_tokenizer
from ufm import ClassStats, nc4_agreement

from .conftest import LINES
from .test_bridge import assert_same_stats
from .test_depth_and_identity import direct_layer_stats

SPECIAL = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
SMALL = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
SOFTCAP = 0.5  # small enough that capping visibly changes the tiny model's logits

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


def capped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return logits if cap is None else cap * torch.tanh(logits / cap)


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
