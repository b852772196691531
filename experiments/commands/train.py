"""`collapse train`: train a small GPT-Neo on a corpus (a checkpoint per epoch, resumable every N steps;
data-parallel under torchrun)."""

from __future__ import annotations

import argparse

from experiments.commands.common import add_common, int_at_least


def add_parser(sub) -> None:
    train = sub.add_parser("train", help="train a small GPT-Neo on a corpus (a checkpoint per epoch)")
    train.add_argument("--corpus", default="shakespeare",
                       help="a corpus name (collapse data list) or a local path (default: shakespeare)")
    train.add_argument("--depth", type=int_at_least(1), default=2, help="transformer layers (default 2)")
    train.add_argument("--width", type=int_at_least(1), default=64, help="hidden size d (default 64)")
    train.add_argument("--heads", type=int_at_least(1), default=4, help="attention heads, dividing --width (default 4)")
    train.add_argument("--epochs", type=int_at_least(1), default=2, help="passes over the training text (default 2)")
    train.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight decay (default 0)")
    train.add_argument("--lr", type=float, default=3e-3,
                       help="peak learning rate: linear warm-up, cosine decay to 10%% (default 3e-3)")
    train.add_argument("--batch-size", type=int_at_least(1), default=16, help="blocks per step (default 16)")
    train.add_argument("--block-size", type=int_at_least(2), default=128, help="tokens per block = context length (default 128)")
    train.add_argument("--vocab-size", type=int_at_least(2), default=2048,
                       help="byte-level BPE vocabulary trained on the corpus (default 2048)")
    train.add_argument("--max-tokens", type=int_at_least(1), default=None,
                       help="training tokens per epoch (default: the whole training split)")
    train.add_argument("--checkpoint-every", type=int_at_least(0), default=0,
                       help="also save the resumable state every N optimizer steps (default 0: at epoch ends only); "
                            "a killed run resumes mid-epoch to the same model")
    add_common(train, out_required=True)
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lm_bridge.collect import init_distributed
    from lm_bridge.data import open_corpus
    from lm_bridge.tokenizer import corpus_tokenizer
    from lm_bridge.train import TrainSpec, train_clm

    rank, world, device = init_distributed(args.device)  # under torchrun: data-parallel (DDP)
    train, val = open_corpus(args.corpus).split()
    tokenizer = corpus_tokenizer(train, args.vocab_size)
    spec = TrainSpec(depth=args.depth, width=args.width, heads=args.heads, epochs=args.epochs,
                     weight_decay=args.weight_decay, lr=args.lr, batch_size=args.batch_size,
                     block_size=args.block_size, seed=args.seed, max_train_tokens=args.max_tokens)
    results = train_clm(spec, tokenizer, train, val, args.out, device=device, checkpoint_every=args.checkpoint_every)
    if rank != 0:
        return 0
    done = [r.epoch for r in results if r.resumed]
    if done:
        print(f"resumed the run in {args.out}: epoch(s) {', '.join(map(str, done))} were finished by an earlier run")
    for r in results:
        print(f"epoch {r.epoch}: train loss {r.train_loss:.4f}, validation loss {r.val_loss:.4f} -> {r.path}"
              + (" (earlier run)" if r.resumed else ""))
    return 0
