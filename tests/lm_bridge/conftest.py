"""Tiny random causal LMs of three families, saved to temporary directories with a BPE tokenizer
trained on a few lines: everything offline, built in seconds."""

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM, LlamaConfig,
                          LlamaForCausalLM)

from lm_bridge.tokenizer import train_bpe_tokenizer

LINES = [
    "the cat sat on the mat and the dog sat on the log",
    "a bird flew over the house and the cat watched the bird",
    "once upon a time there was a little girl who liked to play",
    "she played with her dog in the park every day after school",
    "the sun was warm and the sky was blue over the quiet town",
] * 4


MODEL_CLASSES = {"gpt2": GPT2LMHeadModel, "gpt-neo": GPTNeoForCausalLM, "llama": LlamaForCausalLM}


def tiny_config(family: str, vocab: int):
    special = dict(bos_token_id=0, eos_token_id=0)  # the tokenizer's EOS
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=64, n_embd=16, n_layer=2, n_head=2, **special)
    if family == "gpt-neo":
        return GPTNeoConfig(vocab_size=vocab, max_position_embeddings=64, hidden_size=16, num_layers=2,
                            num_heads=2, attention_types=[[["global", "local"], 1]], window_size=8, **special)
    return LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                       tie_word_embeddings=False, **special)


def save_tiny_model(path, family: str, seed: int = 0, vocab_size: int = 300):
    tokenizer = train_bpe_tokenizer(LINES, vocab_size)
    torch.manual_seed(seed)
    model = MODEL_CLASSES[family](tiny_config(family, len(tokenizer)))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {f: save_tiny_model(root / f, f) for f in ("gpt2", "gpt-neo", "llama")}


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(4):
        (root / f"doc{i}.txt").write_text("\n".join(LINES[i::4]) + f" story number {i}")
    return root


def repeated_corpus(root, docs: int, repeats: int):
    """``docs`` text files of LINES repeated ``repeats`` times, each ending in its own words."""
    for i in range(docs):
        (root / f"doc{i}.txt").write_text(" ".join(LINES * repeats) + f" part {i}")
    return root


@pytest.fixture(scope="session")
def long_corpus(tmp_path_factory):
    return repeated_corpus(tmp_path_factory.mktemp("long"), 6, 12)


@pytest.fixture(scope="session")
def tokenizer():
    return train_bpe_tokenizer(LINES, 300)


def wide_tokenizer(texts, size: int, seed: int = 0):
    """A word-level tokenizer of ``size`` ids whose words (those of ``texts``) sit at random ids
    among fillers: a vocabulary as wide as Llama-3's of which a corpus sees a small, scattered part."""
    import re

    import numpy as np
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)})
    specials = ["<|endoftext|>", "<unk>"]
    slots = np.random.default_rng(seed).choice(size, len(words) + 2, replace=False)
    vocab = {f"<filler{i}>": i for i in range(size)}
    for token, slot in zip(specials + words, slots.tolist()):
        del vocab[f"<filler{slot}>"]
        vocab[token] = slot
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[0], unk_token=specials[1])
