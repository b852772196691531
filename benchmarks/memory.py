"""Benchmark: every layer of a 128k-vocabulary model within memory, one run.

    python -m benchmarks.memory [--hidden 4096] [--max-tokens 8192]

A Llama-3-like model with random weights: vocabulary 128,256, hidden size D (4,096 as Llama-3-8B),
2 blocks, grouped-query attention (32 heads, 8 key-value heads), an untied head; its tokenizer is
word-level over the Brown corpus's words, placed at random ids of the 128,256 (a corpus sees a
small, scattered part of such a vocabulary). `collapse measure --layers all` keeps 4 statistics
states (the unembedding's input and 3 hidden states). Dense, each needs K x D float64: printed
next to what the sparse states allocate for the classes that occur, the plan, the wall time and the
peak resident memory of the process (model included), against half of this machine's memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lm_bridge.collect import CollectConfig, collect_stats, state_bytes
from lm_bridge.data import open_corpus
from lm_bridge.models import load_model
from tests.lm_bridge.conftest import wide_tokenizer

VOCAB = 128_256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--corpus", default="brown")
    args = parser.parse_args()
    corpus = open_corpus(args.corpus)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=1024, num_hidden_layers=2,
                             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=512,
                             tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
        with torch.device("meta"):
            params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
        LlamaForCausalLM(config).save_pretrained(tmp)  # freed before the measurement loads it
        wide_tokenizer(corpus.documents(), VOCAB).save_pretrained(tmp)
        loaded = load_model(Path(tmp))
        start = time.perf_counter()
        result = collect_stats(loaded, corpus, CollectConfig(block_size=512, batch_size=4, max_tokens=args.max_tokens,
                                                             layers=(0, 1, 2)), progress=False)
        seconds = time.perf_counter() - start
    plan = result.plan
    dense = 4 * state_bytes(VOCAB, args.hidden)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"model: vocabulary {VOCAB:,}, D = {args.hidden}, {params / 1e9:.2f} B parameters "
          f"({params * 4 / 2**30:.2f} GiB in float32)")
    print(f"{result.tokens:,} tokens of {args.corpus}: {result.stats.num_classes:,} classes occur "
          f"({result.stats.num_classes / VOCAB:.1%} of the vocabulary)")
    print(f"plan: {plan.describe()}")
    print(f"dense: 4 states of K = {VOCAB:,} x D = {args.hidden} float64 would need {dense / 2**30:.2f} GiB "
          f"({dense / total:.0%} of this machine's {total / 2**30:.1f} GiB)")
    print(f"sparse: at most {max(plan.bytes_per_pass) / 2**30:.3f} GiB of statistics (the plan; {dense / max(plan.bytes_per_pass):.0f}x "
          f"less); peak resident memory of the process {peak / 2**30:.2f} GiB = {peak / total:.0%} of the machine "
          f"(half: {total / 2 / 2**30:.1f} GiB); {seconds:.1f} s")


if __name__ == "__main__":
    main()
