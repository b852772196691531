"""What one job of a study runs: a training run, or the measurement of one checkpoint.

``run_unit(root, folder)`` is the job's entry point on every launcher (a local worker process, a
SLURM job through submitit): it reads the unit from its folder, holds the unit's lock while it
runs, sends its output to the unit's log, and writes result.json last (atomically) or, when it
raises, status "failed" with the traceback in the log.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ufm.io import FolderBusyError

from .spec import Unit
from .store import Store


def run_unit(root: str, folder: str, poll: float = 0.5) -> dict:
    store = Store(root)
    unit = store.read_unit(store.root / "units" / folder)
    context = json.loads((store.root / "study.json").read_text())
    while True:
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(store.running(unit))
            except FolderBusyError:  # another process runs it (an orphan of a killed launcher): wait
                time.sleep(poll)
                continue
            done = store.result(unit)  # it finished while we waited, or before a requeue
            return done if done is not None else _execute(store, unit, context)


def _execute(store: Store, unit: Unit, context: dict) -> dict:
    with open(store.log(unit), "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            result = EXECUTORS[unit.kind](store, unit, context)
        except BaseException as err:  # the unit failed: say why where status can find it
            traceback.print_exc(file=log)
            log.flush()
            store.fail(unit, f"{type(err).__name__}: {err}")
            raise
    store.finish(unit, result)
    return result


def _splits(context: dict):
    from lm_bridge.corpus import Corpus

    return Corpus.open(context["corpus"]).split()


def _tokenizer(context: dict):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(context["tokenizer"], local_files_only=True)


def train_unit(store: Store, unit: Unit, context: dict) -> dict:
    from lm_bridge.train import TrainSpec, train_clm

    spec = TrainSpec(**unit.config["spec"])
    train, val = _splits(context)
    results = train_clm(spec, _tokenizer(context), train, val, store.root / "runs" / spec.name,
                        device=context["device"], progress=False, checkpoint_every=unit.config["checkpoint_every"])
    return dict(epochs=[asdict(r) for r in results])


def measure_unit(store: Store, unit: Unit, context: dict) -> dict:
    """collapse measure of one checkpoint into STUDY/measure/...; one table row per state."""
    from lm_bridge.collect import NC4_POSITIONS, CollectConfig
    from lm_bridge.measure import MeasureOptions, checkpoint_step, measure_folder, parse_layers
    from lm_bridge.models import load_model
    from ufm.validate import resolve_device

    cfg, m = unit.config, unit.config["measure"]
    if "model" in cfg:
        path, out = Path(cfg["model"]), store.root / "measure" / "models" / unit.name
    else:
        path, out = store.root / "runs" / cfg["run"] / f"epoch{cfg['epoch']}", store.root / "measure" / unit.name
    train, val = _splits(context)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: its training unit has not finished")
    loaded = load_model(path, device=resolve_device(context["device"]))
    block = m["block_size"] or cfg.get("spec", {}).get("block_size")
    config = CollectConfig(block_size=block, batch_size=m["batch_size"], max_tokens=m["max_tokens"],
                           checkpoint_every=64, layers=parse_layers(m["layers"], loaded))
    mopts = MeasureOptions(metric_options(m), m["preset"], NC4_POSITIONS.get(m["preset"], "all"), overwrite=True,
                           figures=m["figures"])
    summary = measure_folder(loaded, train, out, config, mopts, heldout=val, heldout_tokens=m["heldout_tokens"],
                             progress=False)
    return dict(rows=table_rows(unit, summary, path, checkpoint_step(path)[0]))


def table_rows(unit: Unit, summary: dict[str, Any], path: Path, step: int) -> list[dict[str, Any]]:
    """One row per measured state of a checkpoint: who it is, when it is, how well it predicts,
    every numeric metric, NC4, and the identities of model, corpus and options."""
    cfg = unit.config
    spec = cfg.get("spec")
    info = json.loads((path / "training.json").read_text()) if (path / "training.json").is_file() else {}
    if spec is not None:
        steps_per_epoch = math.ceil(info["train_tokens"] / spec["block_size"] / spec["batch_size"])
        run = dict(run=cfg["run"], arch=f"d{spec['depth']}w{spec['width']}", depth=spec["depth"], width=spec["width"],
                   heads=spec["heads"], weight_decay=spec["weight_decay"], seed=spec["seed"], lr=spec["lr"],
                   epochs=spec["epochs"], epoch=cfg["epoch"], step=cfg["epoch"] * steps_per_epoch,
                   tokens_seen=cfg["epoch"] * info["train_tokens"])
    else:
        run = dict(run=path.parent.name if path.name.startswith(("epoch", "checkpoint", "step")) else path.name,
                   arch=summary["model"]["name"], epoch=info.get("epoch"), step=step, tokens_seen=None)
    ids = dict(model_identity=summary["model"]["identity"], corpus_identity=summary["corpus"]["identity"],
               options_identity=unit.identity, unit=unit.name)
    run["source"] = "model"
    rows = [dict(run, layer="final", val_loss=summary["val_loss"], nc4_agreement=summary["nc4_agreement"],
                 **_scalars(summary["metrics"]), **ids)]
    for i, layer in summary["layers"].items():
        rows.append(dict(run, layer=int(i), val_loss=summary["val_loss"], nc4_agreement=layer["nc4_agreement"],
                         **_scalars(layer["metrics"]), **ids))
    return rows


def simulate_unit(store: Store, unit: Unit, context: dict) -> dict:
    """A UFM on the training text's own contexts: its class statistics (context j counts toward
    token z with weight pi_j p_jz) measured with the study's metric options, as one table row."""
    from lm_bridge.corpus import document_ids
    from ufm.targets import from_token_stream
    from ufm.train import train_ufm
    from ufm.validate import resolve_device

    sim = unit.config["simulate"]
    train, _ = _splits(context)
    tokenizer = _tokenizer(context)
    ids: list[int] = []
    for text in train.documents():
        ids.extend(document_ids(text, tokenizer))
        if sim["max_tokens"] is not None and len(ids) >= sim["max_tokens"]:
            break
    ids = ids[:sim["max_tokens"]] if sim["max_tokens"] is not None else ids
    targets, _ = from_token_stream(ids, sim["context_length"], vocab_size=len(tokenizer), min_count=sim["min_count"],
                                   max_contexts=sim["max_contexts"])
    result = train_ufm(targets, device=resolve_device(context["device"]), **sim["ufm"])
    metrics = result.metrics(**metric_options(unit.config["measure"])).to_dict()
    row = dict(run="ufm", arch="ufm", source="ufm", epoch=None, step=sim["ufm"]["steps"], tokens_seen=len(ids),
               layer="final", val_loss=None, nc4_agreement=None, **_scalars(metrics), model_identity=None,
               corpus_identity=None, options_identity=unit.identity, unit=unit.name)
    return dict(rows=[row], targets=targets.describe(), objective=result.history[-1].get("objective"))


def metric_options(measure: dict) -> dict:
    """The metric options of a study's [measure]: its preset's, with min_count and max_count on top."""
    from ufm.metrics import MetricOptions

    base = MetricOptions.preset(measure["preset"]) if measure["preset"] else MetricOptions()
    return asdict(base) | {k: measure[k] for k in ("min_count", "max_count") if measure[k] is not None}


def _scalars(metrics: dict) -> dict:
    """The table's columns of a metrics dict: its numbers (None where undefined), not its options."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}


EXECUTORS = {"train": train_unit, "measure": measure_unit, "simulate": simulate_unit}
