"""Benchmark: the measured costs a study's plan rests on (docs/scaling.md), one run.

    python -m benchmarks.scaling [--steps 4]

For GPT-Neo models of Linguistic Collapse's shapes (vocabulary 50,257, blocks of 256 tokens) with
random weights: training tokens/s (AdamW steps of `collapse train`'s loop, one thread as seeded
runs use) and every-layer collection tokens/s (`collapse measure --layers all`'s fold), with the
parameter count and the FLOPs per token they imply (6 N per trained token, 2 N per measured one,
N = the parameters a token's forward pass multiplies by, the head included).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from lm_bridge.collect import FINAL, _accumulators, batches, fold_batch, layer_name
from lm_bridge.models import capture_unembedding_input

VOCAB, BLOCK = 50_257, 256
SHAPES = ((2, 64), (4, 256), (8, 512))  # (layers, width)


def flops_params(model) -> int:
    """Parameters a token's forward multiplies by: all but the position embeddings (the tied token
    embedding counts once, as the head)."""
    return sum(p.numel() for n, p in model.named_parameters() if "wpe" not in n)


def train_rate(model, data, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    ids = data[0]
    loss = model(input_ids=ids, labels=ids).loss  # warm-up
    loss.backward()
    opt.step()
    start = time.perf_counter()
    for i in range(steps):
        ids = data[i % len(data)]
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * data[0].numel() / (time.perf_counter() - start)


def collect_rate(model, data) -> float:
    model.eval()
    names = [FINAL, *(layer_name(i) for i in range(model.config.num_layers + 1))]
    accs = _accumulators(names, dict.fromkeys(names, model.config.hidden_size), VOCAB, torch.device("cpu"), 0)
    lengths = torch.full((data[0].shape[0],), BLOCK)
    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode(), capture_unembedding_input(model) as store:
        for ids in data:
            out = model(input_ids=ids, output_hidden_states=True)
            tokens += fold_batch(accs, ids, lengths, store["hidden"], out.hidden_states)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    stream = [torch.randint(0, VOCAB, (BLOCK,), generator=gen).tolist() for _ in range(args.batch * args.steps)]
    data = [ids for ids, _ in batches(stream, args.batch)]
    print(f"CPU, {torch.get_num_threads()} threads for collection; training on 1 thread (seeded runs)")
    for layers, width in SHAPES:
        torch.manual_seed(0)
        config = GPTNeoConfig(vocab_size=VOCAB, hidden_size=width, num_layers=layers, num_heads=max(1, width // 64),
                              max_position_embeddings=BLOCK, attention_types=[[["global"], layers]],
                              intermediate_size=4 * width)
        model = GPTNeoForCausalLM(config)
        n = flops_params(model)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        train = train_rate(model, data, args.steps)
        torch.set_num_threads(threads)
        collect = collect_rate(model, data)
        print(f"d{layers}w{width}: N = {n / 1e6:.1f} M; training {train:8.0f} tok/s ({6 * n * train / 1e9:6.1f} GFLOP/s), "
              f"every-layer collection {collect:8.0f} tok/s ({2 * n * collect / 1e9:6.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
