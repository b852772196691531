"""``collapse demo``: the built-in default job.

Trains the NTP unconstrained-features model twice and prints the collapse metrics along the way:
balanced one-hot classes (it reaches a simplex ETF: NC1 -> 0, cos -> -1/(K-1), ETF error -> 0), then
a synthetic language whose contexts share support patterns (subspace collapse: the in-support part
of the logits approaches L_in and same-support contexts collapse). About 30 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse

from ufm.targets import one_hot, random_supports
from ufm.train import train_ufm


def run_demo(args: argparse.Namespace) -> int:
    from .cli import format_table

    k = 10
    etf = train_ufm(one_hot([5] * k), 16, weight_decay=1e-3, steps=20_000, device=args.device,
                    seed=args.seed, snapshots=[10, 100, 1000], track_metrics=True)
    print(f"1. Balanced one-hot, K={k} classes x 5 contexts, d=16, weight decay 1e-3 ({etf.seconds:.0f} s):")
    print(format_table([(f"step {h['step']}", h["metrics"]) for h in etf.history]))
    print(f"   simplex ETF: NC1 -> 0, cos -> {-1 / (k - 1):.4f}, ETF error -> 0, dual error -> 0\n")

    lang = random_supports(60, 30, (2, 5), probs="zipf", num_patterns=6, seed=args.seed)
    sub = train_ufm(lang, 32, weight_decay=1e-5, steps=5000, device=args.device, seed=args.seed,
                    snapshots=[10, 100, 1000], track_subspace=True)
    print(f"2. A synthetic language: m=60 contexts, V=30 tokens, 6 shared supports, entropy "
          f"{lang.entropy:.4f} nats, d=32 ({sub.seconds:.0f} s):")
    print(f"{'':>11} {'CE - H':>10} {'|P_F L - L_in|':>15} {'same-support ratio':>19}")
    for h in sub.history:
        print(f"{'step ' + str(h['step']):>11} {h['ce_minus_entropy']:>10.4g} {h['pf_dist']:>15.4g} "
              f"{h['subspace_ratio']:>19.4g}")
    print("   theory: CE -> H, P_F(L) -> L_in, same-support contexts collapse (ratio -> 0, slowly)")
    return 0
