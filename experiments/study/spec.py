"""A study is a TOML file: a corpus, a grid of training runs (or existing models), how to measure
every checkpoint, how to analyze the table, and the launchers' options.

    name = "lc-small"
    [data]     corpus = "shakespeare", vocab_size = 512
    [[train.grid]]   depth = [1, 2], width = [32, 64], seed = 0, ...   (lists expand; grids union)
    [train]    epochs = 2, lr = 3e-3, ..., checkpoint_every = 50       (shared by every grid)
    [models]   paths = ["path/to/model", "path/to/run-folder"]          (instead of, or with, [train])
    [measure]  preset = "lc2024", layers = "all", max_tokens = 20000, heldout_tokens = 10000, ...
    [simulate] context_length = 2, min_count = 5, [simulate.ufm] dim = 64, weight_decay = 1e-4, steps = 2000
               (optional: a UFM on the same text's contexts, its row in the table beside the models)
    [analyze]  loss = "val_loss", log10 = ["cdnv_mean"]
    [local]    workers = 2
    [slurm]    partition = "gpu", gpus_per_task = 1, cpus_per_task = 4, mem_gb = 16,
               timeout_min = 480, array_parallelism = 32

Every key is checked: an unknown one, a grid that expands to no run, a corpus or model path that
does not exist are refused before anything runs. Units (one training run; one checkpoint's
measurement) have identities: a hash of their configuration and of their inputs' content
identities (the corpus's files, the training unit they measure, the model's files).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).resolve().parent.parent / "studies"  # specs shipped with the project, by name


class SpecError(ValueError):
    """A study spec that cannot run: unknown keys, an empty grid, missing inputs, bad values."""


_TRAIN_FIELDS = ("depth", "width", "heads", "epochs", "weight_decay", "lr", "batch_size", "block_size", "seed",
                 "max_train_tokens", "max_val_tokens")


@dataclass(frozen=True)
class MeasureSpec:
    preset: str | None = "lc2024"
    layers: str | None = None  # None, "all" or "0,2"
    block_size: int | None = None  # None: the training block size
    batch_size: int = 8
    max_tokens: int | None = None  # training-text tokens whose statistics are collected
    heldout_tokens: int | None = None  # validation tokens for NC4 and the loss
    min_count: int | None = None
    max_count: int | None = None
    figures: bool = True  # each checkpoint's own figures (collapse measure's); the study draws its own


@dataclass(frozen=True)
class SimulateSpec:
    """UFM runs on the study's own targets: the distinct contexts of ``context_length`` tokens of
    the training text (with the study's tokenizer), seen ``min_count`` times, trained by
    ufm.train_ufm with the keywords in ``ufm`` (dim, weight_decay, steps, ...)."""

    context_length: int = 2
    min_count: int = 5
    max_contexts: int | None = 400
    max_tokens: int | None = 50_000
    ufm: dict = field(default_factory=lambda: dict(dim=64, weight_decay=1e-4, steps=2000))


@dataclass(frozen=True)
class AnalyzeSpec:
    loss: str = "val_loss"
    log10: tuple[str, ...] = ("cdnv_mean",)


@dataclass(frozen=True)
class SlurmSpec:
    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    mem_gb: float = 4.0
    timeout_min: int = 60
    array_parallelism: int = 16


@dataclass(frozen=True)
class Unit:
    """One job: a training run (``train``) or one checkpoint's measurement (``measure``)."""

    kind: str  # "train" | "measure"
    name: str  # run name, or run name/epochN
    identity: str  # hash of the configuration and of the inputs' content identities
    config: dict[str, Any]  # what the job needs to run, JSON-able
    needs: tuple[str, ...] = ()  # identities of the units that must be done first

    @property
    def folder_name(self) -> str:
        return f"{self.kind}-{self.name.replace('/', '-')}-{self.identity[:10]}"


@dataclass(frozen=True)
class StudySpec:
    name: str
    source: str  # the file it was read from
    corpus: str | None
    vocab_size: int
    runs: tuple[dict[str, Any], ...]  # TrainSpec keyword dicts
    checkpoint_every: int
    models: tuple[str, ...]
    measure: MeasureSpec
    simulate: SimulateSpec | None
    analyze: AnalyzeSpec
    workers: int
    slurm: SlurmSpec
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


_TOP = {"name", "description", "data", "train", "models", "measure", "simulate", "analyze", "local", "slurm"}


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """A shipped spec by name (experiments/studies/NAME.toml), else a path to one's own."""
    shipped = SHIPPED / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    path = Path(name_or_path)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
        raise SpecError(f"no study spec {name_or_path!r}: neither a shipped one ({names}) nor a file")
    return path


def _check_keys(table: dict, known, where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _dataclass_from(cls, table: dict, where: str):
    names = [f.name for f in fields(cls)]
    _check_keys(table, names, where)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    return cls(**values)


def load_spec(name_or_path: str | Path) -> StudySpec:
    path = resolve_spec_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path} is not valid TOML: {err}") from err
    _check_keys(raw, _TOP, str(path))
    data = raw.get("data", {})
    _check_keys(data, {"corpus", "vocab_size"}, f"{path} [data]")
    train = dict(raw.get("train", {}))
    grids = train.pop("grid", [])
    checkpoint_every = train.pop("checkpoint_every", 0)
    _check_keys(train, _TRAIN_FIELDS, f"{path} [train]")
    runs: list[dict] = []
    for i, grid in enumerate(grids):
        _check_keys(grid, _TRAIN_FIELDS, f"{path} [[train.grid]] #{i + 1}")
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in {**train, **grid}.items()}
        for combo in itertools.product(*axes.values()):
            run = dict(zip(axes, combo))
            if run not in runs:
                runs.append(run)
    models = raw.get("models", {})
    _check_keys(models, {"paths"}, f"{path} [models]")
    local = raw.get("local", {})
    _check_keys(local, {"workers"}, f"{path} [local]")
    spec = StudySpec(
        name=raw.get("name", path.stem), source=str(path), corpus=data.get("corpus"),
        vocab_size=int(data.get("vocab_size", 2048)), runs=tuple(runs), checkpoint_every=int(checkpoint_every),
        models=tuple(models.get("paths", ())), measure=_dataclass_from(MeasureSpec, raw.get("measure", {}), f"{path} [measure]"),
        simulate=_simulate_from(raw["simulate"], path) if "simulate" in raw else None,
        analyze=_dataclass_from(AnalyzeSpec, raw.get("analyze", {}), f"{path} [analyze]"),
        workers=int(local.get("workers", 1)), slurm=_dataclass_from(SlurmSpec, raw.get("slurm", {}), f"{path} [slurm]"),
        raw=raw)
    _validate(spec, path)
    return spec


def _simulate_from(table: dict, path: Path) -> SimulateSpec:
    import inspect

    from ufm.train import train_ufm

    table = dict(table)
    ufm = table.pop("ufm", None)
    spec = _dataclass_from(SimulateSpec, table, f"{path} [simulate]")
    if ufm is not None:
        known = set(inspect.signature(train_ufm).parameters) - {"targets", "run"}
        from ufm.train import TrainConfig

        known |= {f.name for f in fields(TrainConfig)}
        _check_keys(ufm, known - {"device"}, f"{path} [simulate.ufm]")
        spec = SimulateSpec(**{**asdict(spec), "ufm": dict(ufm)})
    missing = {"dim", "weight_decay", "steps"} - set(spec.ufm)
    if missing:
        raise SpecError(f"{path} [simulate.ufm] needs {', '.join(sorted(missing))} (train_ufm's required keywords)")
    return spec


def _validate(spec: StudySpec, path: Path) -> None:
    from lm_bridge.train import TrainSpec

    if not spec.runs and not spec.models and spec.simulate is None:
        raise SpecError(f"{path}: the study has no unit: its [[train.grid]] expand to no run, it lists no [models] "
                        "and has no [simulate]")
    if spec.corpus is None:
        raise SpecError(f"{path}: the study needs [data] corpus (the text runs train on and are measured on)")
    for run in spec.runs:
        try:
            TrainSpec(**run)
        except (TypeError, ValueError) as err:
            raise SpecError(f"{path}: the run {run} is not a valid training run: {err}") from err
    if spec.workers < 1 or spec.checkpoint_every < 0:
        raise SpecError(f"{path}: [local] workers must be >= 1 and [train] checkpoint_every >= 0")
    for model in spec.models:
        if not Path(model).exists():
            raise SpecError(f"{path}: [models] path {model} does not exist")


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def expand_units(spec: StudySpec, corpus_identity: str | None, model_identity=None) -> list[Unit]:
    """Every unit of the study, training runs first; a measure unit needs the run it measures.
    ``model_identity(path)`` gives the content identity of an existing model."""
    from lm_bridge.train import TrainSpec

    units: list[Unit] = []
    measure = asdict(spec.measure)
    for run in spec.runs:
        train = TrainSpec(**run)
        cfg = dict(spec=asdict(train), vocab_size=spec.vocab_size, checkpoint_every=spec.checkpoint_every)
        # checkpoint_every changes when the state is saved, not the model: it is not identity
        ident = digest(dict(kind="train", spec=asdict(train), vocab_size=spec.vocab_size, corpus=corpus_identity))
        units.append(Unit("train", train.name, ident, cfg))
        for epoch in range(1, train.epochs + 1):
            m_ident = digest(dict(kind="measure", run=ident, epoch=epoch, measure=measure, corpus=corpus_identity))
            units.append(Unit("measure", f"{train.name}/epoch{epoch}", m_ident,
                              dict(run=train.name, epoch=epoch, spec=asdict(train), measure=measure), (ident,)))
    if spec.simulate is not None:
        sim = asdict(spec.simulate)
        # The UFM is measured with the models' metric options (preset, min_count, max_count).
        ident = digest(dict(kind="simulate", simulate=sim, vocab_size=spec.vocab_size, corpus=corpus_identity,
                            measure=measure))
        units.append(Unit("simulate", "ufm", ident, dict(simulate=sim, measure=measure)))
    for path in spec.models:
        for model in _model_dirs(Path(path)):
            ident = digest(dict(kind="measure", model=model_identity(model), measure=measure, corpus=corpus_identity))
            units.append(Unit("measure", model.name, ident, dict(model=str(model.resolve()), measure=measure)))
    return units


def _model_dirs(path: Path) -> list[Path]:
    """A model folder, or the checkpoint folders of a run folder."""
    from lm_bridge.measure import expand_checkpoints

    return expand_checkpoints([path])
