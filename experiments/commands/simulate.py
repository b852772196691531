"""`collapse simulate`: train the NTP unconstrained-features model, print its metrics."""

from __future__ import annotations

import argparse

from ufm.io import write_json
from experiments.commands.common import add_common, format_table, int_at_least, support_range


def add_parser(sub) -> None:
    sim = sub.add_parser("simulate", help="train the NTP unconstrained-features model, print its metrics")
    sim.add_argument("--targets", choices=["balanced", "imbalanced", "random", "shared"], default="balanced",
                     help="one-hot (balanced / imbalanced) or sparse soft labels (random / shared supports)")
    sim.add_argument("--classes", type=int_at_least(2), default=10, help="K >= 2 for one-hot targets (default 10)")
    sim.add_argument("--per-class", type=int_at_least(1), default=5, help="contexts per (minority) class (default 5)")
    sim.add_argument("--ratio", type=int_at_least(1), default=10, help="imbalance ratio n_major / n_minor (default 10)")
    sim.add_argument("--contexts", type=int_at_least(1), default=60, help="m for soft-label targets (default 60)")
    sim.add_argument("--vocab", type=int_at_least(2), default=30, help="V for soft-label targets (default 30)")
    sim.add_argument("--support", type=support_range, default=(2, 5),
                     help="support size k or range k_min,k_max (default 2,5)")
    sim.add_argument("--patterns", type=int_at_least(1), default=6, help="distinct supports (shared; default 6)")
    sim.add_argument("--probs", choices=["uniform", "zipf"], default="zipf")
    sim.add_argument("--dim", type=int_at_least(1), default=16, help="d (default 16)")
    sim.add_argument("--weight-decay", type=float, default=1e-3, help="lambda")
    sim.add_argument("--steps", type=int_at_least(0), default=20_000, help="optimizer steps (default 20,000)")
    sim.add_argument("--optimizer", choices=["adam", "gd", "ngd"], default="adam")
    sim.add_argument("--lr", type=float, default=None, help="default: per optimizer")
    sim.add_argument("--batch-size", type=int, default=None, help="contexts per step (default: all)")
    sim.add_argument("--bias", action="store_true")
    sim.add_argument("--layernorm", action="store_true")
    sim.add_argument("--snapshots", type=int_at_least(0), default=6, help="log-spaced steps reported (default 6)")
    family = sim.add_argument_group("the UFM family (train_ufm; undefined combinations are refused)")
    family.add_argument("--loss", choices=["ce", "mse"], default="ce")
    family.add_argument("--label-smoothing", type=float, default=0.0, help="eps (loss ce)")
    family.add_argument("--mixup-alpha", type=float, default=None, help="mixup with Beta(alpha, alpha) (loss ce)")
    family.add_argument("--features", choices=["free", "deep_linear", "perturbed", "normalized", "fixed_h"],
                        default="free", help="perturbed / fixed_h use a Gaussian H0 drawn from --seed")
    family.add_argument("--feature-decay", type=float, default=None, help="lambda_H (default: --weight-decay)")
    family.add_argument("--depth", type=int, default=0, help="deep_linear: trained layers")
    family.add_argument("--beta", type=float, default=0.0, help="perturbed: (beta/2)||H - H0||^2")
    family.add_argument("--radius", type=float, default=None, help="normalized: sphere radius (default 1)")
    family.add_argument("--normalize", choices=["features", "words", "both"], default=None,
                        help="normalized: which vectors lie on the sphere (default both)")
    add_common(sim)
    sim.set_defaults(func=run)


def simulation_targets(args: argparse.Namespace):
    from ufm import targets as t

    if args.targets == "balanced":
        return t.one_hot([args.per_class] * args.classes)
    if args.targets == "imbalanced":
        half = args.classes // 2
        return t.one_hot([args.per_class * args.ratio] * half + [args.per_class] * (args.classes - half))
    patterns = args.patterns if args.targets == "shared" else None
    return t.random_supports(args.contexts, args.vocab, args.support, probs=args.probs, num_patterns=patterns,
                             seed=args.seed)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ufm.train import train_ufm

    sphere = {"--radius": args.radius, "--normalize": args.normalize}
    stray = [flag for flag, value in sphere.items() if value is not None]
    if stray and args.features != "normalized":
        raise ValueError(f"{' and '.join(stray)} {'belongs' if len(stray) == 1 else 'belong'} to --features normalized (the sphere), not "
                         f"--features {args.features}, which would ignore them")
    targets = simulation_targets(args)
    h0 = None
    if args.features in ("perturbed", "fixed_h"):
        # The anchor (perturbed) or the frozen features (fixed_h): a Gaussian H0 drawn from --seed.
        h0 = np.random.default_rng(args.seed).standard_normal((args.dim, targets.num_contexts))
    result = train_ufm(
        targets, args.dim, weight_decay=args.weight_decay, steps=args.steps, lr=args.lr,
        optimizer=args.optimizer, bias=args.bias, layernorm=args.layernorm, batch_size=args.batch_size,
        loss=args.loss, label_smoothing=args.label_smoothing, mixup_alpha=args.mixup_alpha,
        features=args.features, feature_decay=args.feature_decay, depth=args.depth, beta=args.beta,
        radius=args.radius or 1.0, normalize=args.normalize or "both", h0=h0,
        device=args.device, seed=args.seed, snapshots=args.snapshots, track_metrics=True, progress=True,
    )
    rows = [(f"step {h['step']}", h["metrics"]) for h in result.history if "metrics" in h]
    print(f"{args.targets} targets: {targets.describe()}; loss {args.loss}, features {args.features}")
    print(format_table(rows))
    last = result.history[-1]
    print(f"objective {last['objective']:.6g}, CE - H {last['ce_minus_entropy']:.3g}, "
          f"||P_F L - L_in|| {last['pf_dist']:.3g}, {result.seconds:.1f} s")
    if args.out is not None:
        stats = result.class_stats()
        stats.save(args.out / "stats.safetensors")
        write_json(args.out / "ufm.json", result.to_dict())
        write_json(args.out / "metrics.json", result.metrics().to_dict())
        print(f"wrote {args.out}/stats.safetensors, ufm.json, metrics.json")
    return 0
