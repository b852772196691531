"""`collapse simulate`: train the NTP unconstrained-features model, print its metrics."""

from __future__ import annotations

import argparse
from dataclasses import fields

from experiments.commands.common import add_common, format_table, int_at_least, support_range
from ufm.io import write_json


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
    add_family_flags(family)
    add_common(sim)
    sim.set_defaults(func=run)


# Parameters of registered members that are arrays (drawn from --seed here), not flags.
ARRAY_FIELDS = ("anchor", "features")
# The loss parameters train_ufm takes by keyword; any other is given to the loss object.
FLAT_LOSS_FIELDS = ("label_smoothing",)
# Registry names that `collapse simulate` spells differently (the sphere is --features normalized,
# LayerNorm the --layernorm flag).
CLI_NAMES = {"sphere": "normalized", "layernorm": "free --layernorm"}


def member_flags() -> dict[str, tuple[str, object, list[str]]]:
    """Every scalar parameter of a registered loss or feature model -> (kind, its field, the members
    that take it), read from the registries (ufm.losses.LOSSES, ufm.features.FEATURE_MODELS)."""
    from ufm.features import FEATURE_MODELS
    from ufm.losses import LOSSES

    owners: dict[str, tuple[str, object, list[str]]] = {}
    for kind, registry in (("loss", LOSSES), ("features", FEATURE_MODELS)):
        for name, cls in registry.items():
            for f in fields(cls):
                if f.name not in ARRAY_FIELDS:
                    owners.setdefault(f.name, (kind, f, []))[2].append(CLI_NAMES.get(name, name))
    return owners


def add_family_flags(group) -> None:
    """--loss and --features from the registries, and a flag for every scalar parameter of a member,
    saying which members take it (adding a member to a registry adds it here)."""
    from ufm.features import FEATURE_NAMES
    from ufm.losses import LOSSES

    group.add_argument("--loss", choices=list(LOSSES), default="ce")
    group.add_argument("--mixup-alpha", type=float, default=None, help="mixup with Beta(alpha, alpha) (loss ce)")
    group.add_argument("--features", choices=list(FEATURE_NAMES), default="free",
                       help="perturbed / fixed_h use a Gaussian H0 drawn from --seed")
    group.add_argument("--feature-decay", type=float, default=None, help="lambda_H (default: --weight-decay)")
    for name, (kind, f, members) in member_flags().items():
        kind_type = {"float": float, "int": int, "str": str}.get(str(f.type).split(" ")[0], str)
        group.add_argument(f"--{name.replace('_', '-')}", type=kind_type, default=None,
                           help=f"{kind} {', '.join(members)} (default: the member's)")
    group.add_argument("--normalize", choices=["features", "words", "both"], default=None,
                       help="normalized: which vectors lie on the sphere (default both)")


def family_of(args: argparse.Namespace) -> dict:
    """train_ufm's family keywords from the flags: a loss with parameters beyond the flat keywords is
    passed as its object; a flag of a loss other than --loss is refused by name."""
    from ufm.losses import LOSSES

    cls = LOSSES[args.loss]
    own = {f.name for f in fields(cls)}
    for name, (kind, f, members) in member_flags().items():
        if kind == "loss" and name not in FLAT_LOSS_FIELDS and getattr(args, name) is not None and name not in own:
            raise ValueError(f"--{name.replace('_', '-')} belongs to --loss {', '.join(members)}, not --loss {args.loss}")
    extra = {k: getattr(args, k) for k in own - set(FLAT_LOSS_FIELDS) if getattr(args, k) is not None}
    flat = dict(depth=args.depth, beta=args.beta, layer_init=args.layer_init, label_smoothing=args.label_smoothing)
    return dict(loss=cls(**extra) if extra else args.loss, features=args.features,
                **{k: v for k, v in flat.items() if v is not None})


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
        mixup_alpha=args.mixup_alpha, feature_decay=args.feature_decay, **family_of(args),
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
