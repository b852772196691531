"""Benchmark: collection tokens/s against the bare forward pass over the same batches, one run.

    python -m benchmarks.collect                 # CPU (and CUDA when present)

A GPT-Neo of width 256 and 4 layers with random weights and the GPT-2 vocabulary size (50,257):
the bare pass runs the model; collection also captures the unembedding's input and folds every
labelled position into the float64 class statistics (lm_bridge.collect.fold_batch, the code
`collapse measure` runs); all-layer collection does the same for each of the 5 entries of
output_hidden_states too (6 statistics states sharing one row map, as `collapse measure --layers
all`). Prints the rates, the one-layer and all-layer ratios to the bare pass, and peak memory.
The three are interleaved, best of N, so a drift of a loaded machine hits all alike. Also: the cost
of hashing a model's files for its identity, next to the pass.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from lm_bridge.collect import FINAL, _accumulators, batches, fold_batch, labelled_positions, layer_name
from lm_bridge.models import capture_unembedding_input, model_identity


def run(model, data, device, collect: bool, layers: bool = False) -> float:
    n_states = model.config.num_hidden_layers + 1 if layers else 0
    d = model.config.hidden_size
    names = [FINAL, *(layer_name(i) for i in range(n_states))]
    accs = _accumulators(names, dict.fromkeys(names, d), model.config.vocab_size, device, capacity=0)
    tokens = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode(), capture_unembedding_input(model) as store:
        for ids, lengths in data:
            ids = ids.to(device)
            out = model(input_ids=ids, output_hidden_states=layers)
            if collect:
                tokens += fold_batch(accs, ids, lengths, store["hidden"], out.hidden_states)
            else:
                tokens += int(labelled_positions(ids, lengths).sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start)


def bench(device: torch.device, blocks: int, block_size: int, batch_size: int, repeats: int) -> None:
    torch.manual_seed(0)
    config = GPTNeoConfig(vocab_size=50_257, hidden_size=256, num_layers=4, num_heads=4,
                          max_position_embeddings=block_size, attention_types=[[["global", "local"], 2]])
    model = GPTNeoForCausalLM(config).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    stream = [torch.randint(0, 50_257, (block_size,), generator=gen).tolist() for _ in range(blocks)]
    data = list(batches(stream, batch_size))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run(model, data[:2], device, True, layers=True)  # warm-up
    bare, coll, every = [], [], []
    for _ in range(repeats):  # interleaved, so drifts of the machine hit all alike
        bare.append(run(model, data, device, False))
        coll.append(run(model, data, device, True))
        every.append(run(model, data, device, True, layers=True))
    b, c, e = max(bare), max(coll), max(every)
    print(f"{device}: bare forward {b:10.0f} tok/s, collection {c:10.0f} tok/s (ratio {c / b:.3f}), all 5 hidden "
          f"states + unembedding input {e:10.0f} tok/s (ratio {e / b:.3f}) ({blocks} blocks x {block_size} tokens, "
          f"batch {batch_size}, best of {repeats})")
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        start = time.perf_counter()
        model_identity(Path(tmp))
        seconds = time.perf_counter() - start
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"    identity hash of the model's files ({size:.0f} MiB): {seconds:.3f} s, the time of "
          f"{seconds * c:.0f} collected tokens")
    if device.type == "cuda":
        print(f"    peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench(torch.device("cpu"), args.blocks, args.block_size, args.batch_size, args.repeats)
    if torch.cuda.is_available():
        bench(torch.device("cuda"), args.blocks * 16, args.block_size, args.batch_size * 8, args.repeats)
    print(f"peak host RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
