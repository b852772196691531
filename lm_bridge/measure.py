"""`collapse measure`: one model, or a series of checkpoints, measured into a folder.

One run folder holds ``stats.safetensors`` (the unembedding's input), ``layers/layer_XX.safetensors``
(each requested entry of output_hidden_states, same pass), ``metrics.json`` (metrics, per-layer
metrics under ``layers``, NC4 and the held-out loss, model and corpus identity) and figures. A
series measures every checkpoint on the same token blocks into ``<out>/<checkpoint>/`` and writes
``series.csv`` (one row per checkpoint, ordered by step) and figures of each metric against step;
``collapse analyze series.csv --loss val_loss`` reads it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ufm
from ufm import PRESETS, ClassStats, CollapseMetrics, collapse_metrics
from ufm.io import atomic_write, folder_lock, write_json
from ufm.report import measure_figures, metric_panels

from .collect import (FINAL, NC4_POSITIONS, CollectConfig, CollectError, NC4Result, _rank_world, collect_means,
                      collect_nc4, collect_stats, layer_name, resolve_layers)
from .corpus import Corpus
from .models import LoadedModel, load_model, tokenizer_identity

# Metrics drawn against depth and against step (key, label, log scale).
PANELS = [("cdnv_mean", "CDNV (NC1)", True), ("nc1_trace_ratio", "Tr(S_W S_B^+)/K (NC1)", True),
          ("cos_std", "std of pair cosines (NC2)", False), ("log_norm_cov", "CoV of log norms (NC2)", False),
          ("etf_error", "ETF error (NC2)", False), ("gnc_log_std", "std of log kernel (GNC2)", False)]


@dataclass
class Measurement:
    stats: ClassStats  # of the training text
    metrics: CollapseMetrics  # with the preset's options and the model's classifier
    nc4: NC4Result  # on the held-out text


def measure_model(loaded: LoadedModel, train: Corpus, heldout: Corpus, config: CollectConfig, *,
                  heldout_tokens: int | None = None, preset: str = "lc2024") -> Measurement:
    """Statistics in one pass over ``train``, collapse metrics with a preset, NC4 on ``heldout``."""
    stats = collect_stats(loaded, train, config, progress=False).stats
    metrics = collapse_metrics(stats, loaded.classifier(), **PRESETS[preset])
    nc4_config = config if heldout_tokens is None else replace(config, max_tokens=heldout_tokens)
    nc4 = collect_nc4(loaded, heldout, stats, nc4_config, min_count=metrics.options["min_count"],
                      max_count=metrics.options["max_count"], positions=NC4_POSITIONS.get(preset, "all"), progress=False)
    return Measurement(stats, metrics, nc4)



@dataclass(frozen=True)
class MeasureOptions:
    metrics: dict[str, Any]  # keyword arguments of ufm.collapse_metrics
    preset: str | None  # the preset they came from, for the record
    nc4_positions: str = "all"  # held-out positions NC4 counts: all, or kept next tokens
    overwrite: bool = False  # replace a finished run of another model in the folder
    figures: bool = True  # draw the run's figures (a study of many checkpoints draws its own)


def parse_layers(spec: str | None, loaded: LoadedModel) -> tuple[int, ...]:
    """--layers: None (none), "all", or "I,J,..." (output_hidden_states indices)."""
    if spec is None:
        return ()
    if spec == "all":
        return tuple(range(loaded.num_hidden_states))
    try:
        layers = tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError as err:
        raise CollectError(f"--layers takes 'all' or comma-separated indices, got {spec!r}") from err
    if not layers or min(layers) < 0:
        raise CollectError(f"--layers {spec!r} names no hidden state: give 'all' or indices 0..{loaded.num_hidden_states - 1} "
                           "(0 = embeddings), e.g. --layers 0,2")
    if len(set(layers)) != len(layers):
        raise CollectError(f"--layers {spec!r} names a hidden state twice")
    return resolve_layers(loaded, layers)


def refuse_foreign_run(out: Path, loaded: LoadedModel, overwrite: bool) -> None:
    """A folder holding a finished run of another model is not overwritten unless asked to."""
    done = out / "metrics.json"
    if not done.is_file() or overwrite:
        return
    try:
        found = json.loads(done.read_text()).get("model", {}).get("identity")
    except (json.JSONDecodeError, AttributeError):
        found = "unreadable"
    if found != loaded.identity:
        raise CollectError(f"{out} holds a finished run of another model ({found}, not {loaded.identity}); "
                           "choose another --out, or pass --overwrite to replace it")


def measure_folder(loaded: LoadedModel, corpus: Corpus, out: Path, config: CollectConfig, options: MeasureOptions,
                   *, heldout: Corpus | None = None, ood: Corpus | None = None, progress: bool = True,
                   heldout_tokens: int | None = None) -> dict[str, Any] | None:
    """Measure ``loaded`` into ``out``; the summary written to metrics.json (None on ranks > 0).
    ``heldout_tokens`` caps the held-out text read for NC4 and the loss (default: as the corpus's).
    Rank 0 holds ``out``'s lock for the run: a second measure into the same folder is refused."""
    lock = folder_lock(out, "collapse measure") if _rank_world()[0] == 0 else contextlib.nullcontext()
    with lock:
        return _measure_folder(loaded, corpus, out, config, options, heldout=heldout, ood=ood, progress=progress,
                               heldout_tokens=heldout_tokens)


def _measure_folder(loaded: LoadedModel, corpus: Corpus, out: Path, config: CollectConfig, options: MeasureOptions,
                    *, heldout: Corpus | None, ood: Corpus | None, progress: bool, heldout_tokens: int | None = None
                    ) -> dict[str, Any] | None:
    refuse_foreign_run(out, loaded, options.overwrite)
    result = collect_stats(loaded, corpus, config, checkpoint=out / "checkpoint.safetensors", progress=progress)
    nc4 = None
    if heldout is not None:
        nc4_config = config if heldout_tokens is None else replace(config, max_tokens=heldout_tokens)
        nc4 = collect_nc4(loaded, heldout, result.stats, nc4_config, min_count=options.metrics.get("min_count", 1),
                          max_count=options.metrics.get("max_count"), positions=options.nc4_positions,
                          layer_stats=result.layers, progress=progress)
    ood_means = None if ood is None else collect_means(loaded, ood, config, tuple(result.layers))
    if _rank_world()[0] != 0:
        return None
    classifier = loaded.classifier()
    kept = {k: options.metrics[k] for k in ("center", "min_count", "max_count") if k in options.metrics}

    def per_state(key, stats: ClassStats, classifier=None) -> tuple[CollapseMetrics, float | None]:
        """Metrics, classes.csv (with NC4 per class) and NC5 of one state."""
        metrics, table = ufm.metrics_and_classes(stats, classifier, **options.metrics)
        if nc4 is not None:
            table = table.with_nc4(*nc4.per_class[key])
        csv_path = out / "classes.csv" if key == FINAL else out / "layers" / f"{layer_name(key)}_classes.csv"
        write_class_table(csv_path, table)
        nc5 = None if ood_means is None else ufm.ood_orthogonality(stats, ood_means[key], **kept)
        return metrics, nc5

    metrics, nc5 = per_state(FINAL, result.stats, classifier)
    result.stats.save(out / "stats.safetensors")
    layers = {}
    for i, stats in result.layers.items():
        stats.save(out / "layers" / f"{layer_name(i)}.safetensors")
        # The classifier meets the last hidden state only: NC3 is not defined for inner layers.
        layer_metrics, layer_nc5 = per_state(i, stats)
        layers[str(i)] = dict(metrics=layer_metrics.to_dict(), nc4_agreement=None if nc4 is None else nc4.layers.get(i),
                              nc5_ood=layer_nc5)
    figures = []
    if options.figures:
        figures = measure_figures(result.stats, classifier, out, cdnv_power=metrics.options["cdnv_power"],
                                  center=metrics.options["center"], min_count=metrics.options["min_count"],
                                  title=model_label(loaded.path))
    if layers and options.figures:
        depth = [int(i) for i in layers]
        figures.append(metric_panels(depth, [layers[str(i)]["metrics"] for i in depth], PANELS,
                                     out / "metrics_vs_depth.png", xlabel="hidden state (0 = embeddings)",
                                     title=f"{model_label(loaded.path)}: collapse by depth",
                                     extra=None if nc4 is None else ("NC4 agreement", [nc4.layers[i] for i in depth])))
    summary = dict(
        metrics=metrics.to_dict(), preset=options.preset,
        nc4_agreement=None if nc4 is None else nc4.agreement, nc4_tokens=None if nc4 is None else nc4.tokens,
        nc4_positions=None if nc4 is None else nc4.positions, val_loss=None if nc4 is None else nc4.loss,
        nc5_ood=nc5, ood=None if ood is None else dict(path=str(ood.root), identity=ood.identity()),
        layers=layers,
        model=dict(path=str(loaded.path), name=model_label(loaded.path), identity=loaded.identity,
                   identity_seconds=loaded.identity_seconds, vocab_size=loaded.vocab_size,
                   hidden_size=loaded.hidden_size, max_positions=loaded.max_positions),
        corpus=dict(path=str(corpus.root), identity=result.stats.metadata["corpus_identity"],
                    heldout=None if heldout is None else str(heldout.root)),
        tokens=result.tokens, blocks=result.blocks, resumed_blocks=result.resumed_blocks,
        collect=result.stats.metadata, seconds=result.seconds,
        state_gib=max(result.plan.bytes_per_pass) / 2**30, passes=len(result.plan.passes),
        classes_seen=result.stats.num_classes,
        figures=figures,
    )
    write_json(out / "metrics.json", summary)
    for done in result.checkpoints:  # done: a rerun must not resume a finished run
        done.unlink(missing_ok=True)
    return summary


def write_class_table(path: Path, table: ufm.ClassTable) -> Path:
    """One row per kept class (ufm.class_table), atomically."""
    text = table.to_csv()
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def model_label(path: Path) -> str:
    """A model's name for tables and titles: a checkpoint folder (epoch2, checkpoint-1000) is named
    with its run (d2w64/epoch2)."""
    return f"{path.parent.name}/{path.name}" if re.fullmatch(r"(epoch|checkpoint|step)[-_]?\d+", path.name) else path.name


_STEP_IN_NAME = re.compile(r"(\d+)(?!.*\d)")  # the last integer in a name: checkpoint-1000, epoch2, step300


def checkpoint_step(path: Path) -> tuple[int, str]:
    """(step, where it came from) of a checkpoint directory: trainer_state.json's global_step,
    training.json's step or epoch, else the last integer in the folder name."""
    for name, keys in (("trainer_state.json", ("global_step",)), ("training.json", ("step", "epoch"))):
        f = path / name
        if f.is_file():
            try:
                data = json.loads(f.read_text())
            except json.JSONDecodeError:
                continue
            for key in keys:
                if isinstance(data.get(key), int):
                    return data[key], f"{name}:{key}"
    found = _STEP_IN_NAME.search(path.name)
    if found is None:
        raise CollectError(f"no step for checkpoint {path}: no trainer_state.json / training.json and no number "
                           "in its name")
    return int(found.group(1)), "name"


def series_label(paths: list[Path]) -> str:
    """A series' name for titles: the run folder its checkpoints share, else the checkpoints' names."""
    parents = {p.resolve().parent.name for p in paths}
    return parents.pop() if len(parents) == 1 else " / ".join(p.name for p in paths[:3]) + (" ..." if len(paths) > 3 else "")


def step_label(sources: set[str]) -> str:
    """The x-axis of a series: epochs when every step came from an epoch count."""
    if all(src.endswith(":epoch") for src in sources):
        return "epoch"
    if sources == {"name"}:
        return "step (the number in each checkpoint's name)"
    return "training step"


def expand_checkpoints(paths: list[Path]) -> list[Path]:
    """The checkpoints: the given model directories, or the model subfolders of one run folder,
    ordered by step. A run folder given where a model is expected says which subfolders it holds."""
    if len(paths) == 1 and not (paths[0] / "config.json").is_file() and paths[0].is_dir():
        subs = [p for p in paths[0].iterdir() if (p / "config.json").is_file()]
        if subs:
            return sorted(subs, key=lambda p: checkpoint_step(p)[0])
    return paths if len(paths) == 1 else sorted(paths, key=lambda p: checkpoint_step(p)[0])


def refuse_mixed_series(paths: list[Path]) -> None:
    """A series is one model at several steps: one tokenizer, one architecture."""
    def architecture(path: Path) -> str:
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CollectError(f"{path}/config.json cannot be read: {err}") from err
        return f"{config.get('model_type')} {config.get('architectures')}"

    for what, key in (("tokenizers", tokenizer_identity), ("architectures", architecture)):
        seen: dict[str, list[str]] = {}
        for path in paths:
            seen.setdefault(key(path), []).append(path.name)
        if len(seen) > 1:
            groups = "; ".join(f"{', '.join(names)} ({k})" for k, names in seen.items())
            raise CollectError(f"the checkpoints have {len(seen)} different {what}: {groups}. A series measures "
                               "one model's checkpoints on the same token blocks; pass --allow-mixed to measure "
                               "them anyway")


def measure_series(paths: list[Path], corpus: Corpus, out: Path, config: CollectConfig, options: MeasureOptions, *,
                   layers: str | None = None, heldout: Corpus | None = None, ood: Corpus | None = None, device="cpu",
                   progress: bool = True, allow_mixed: bool = False) -> list[dict[str, Any]]:
    """Each checkpoint into ``out/<name>/`` on the same token blocks; series.csv and figures.
    ``layers`` is the --layers spec, resolved against each checkpoint as it is loaded. Checkpoints
    with different tokenizers or architectures are refused unless ``allow_mixed``: they would be
    measured on different token streams, or be different models, in one table."""
    if not allow_mixed:
        refuse_mixed_series(paths)
    rows = []
    for path in paths:
        step, source = checkpoint_step(path)
        loaded = load_model(path, device=device)
        folder = out / path.name
        summary = measure_folder(loaded, corpus, folder, replace(config, layers=parse_layers(layers, loaded)), options,
                                 heldout=heldout, ood=ood, progress=progress)
        if summary is None:
            continue
        m = summary["metrics"]
        identity = summary["model"]["identity"]
        twin = next((r["name"] for r in rows if r["identity"] == identity), None)
        if twin is not None:  # e.g. Pythia step branches that serve the final weights
            print(f"warning: checkpoint {path.name} has the same content identity ({identity}) as {twin}: the same "
                  "weights, measured twice; series.csv marks it in same_weights_as", file=sys.stderr)
        rows.append(dict(name=path.name, step=step, step_source=source, val_loss=summary["val_loss"],
                         nc4_agreement=summary["nc4_agreement"], nc5_ood=summary["nc5_ood"], tokens=summary["tokens"],
                         identity=identity,
                         same_weights_as=twin or "",
                         **{k: v for k, v in m.items() if isinstance(v, (int, float)) or v is None}))
    if not rows:
        return rows
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    atomic_write(out / "series.csv", lambda tmp: tmp.write_text(buf.getvalue()))
    steps = [r["step"] for r in rows]
    extra = ("NC4 agreement", [r["nc4_agreement"] for r in rows]) if heldout is not None else None
    metric_panels(steps, rows, PANELS, out / "metrics_vs_step.png", xlabel=step_label({r["step_source"] for r in rows}),
                  title=f"{series_label(paths)}, {len(rows)} checkpoints: collapse over training", extra=extra)
    return rows
