"""Run a study: check it, expand its units, skip what is done, launch the rest, write the table,
analyze it. One ``run`` at a time holds the study's folder (a second is refused); killing it loses
nothing: the next ``run`` finds every finished unit by its result and resumes the others (training
from its last state, measurement from its checkpoint)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ufm.analysis import TableError
from ufm.io import folder_lock, write_json

from .launchers import check_launcher, queued, run_local, run_slurm
from .spec import SpecError, StudySpec, Unit, expand_units, load_spec
from .store import STATES, Store


@dataclass
class StudyReport:
    spec: StudySpec
    units: list[Unit]
    states: dict[str, str]  # unit identity -> state
    details: dict[str, str] = field(default_factory=dict)  # identity -> log path / job id / reason
    table: Path | None = None
    analysis: Path | None = None
    note: str = ""  # why the table was not analyzed

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(self.states.values())
        return {s: c.get(s, 0) for s in STATES}

    def format(self) -> str:
        width = max(len(u.name) for u in self.units)
        lines = [f"{'unit':<{width}}  {'kind':<7}  {'state':<11}  detail"]
        for u in self.units:
            lines.append(f"{u.name:<{width}}  {u.kind:<7}  {self.states[u.identity]:<11}  {self.details.get(u.identity, '')}")
        lines.append(", ".join(f"{n} {s}" for s, n in self.counts.items() if n))
        return "\n".join(lines)


def _prepare(spec: StudySpec, out: Path, device: str) -> tuple[Store, list[Unit]]:
    """Inputs resolved and checked, the tokenizer trained once (jobs read it), the units written."""
    from lm_bridge.data import open_corpus
    from lm_bridge.models import model_identity, require_model_dirs
    from lm_bridge.tokenizer import corpus_tokenizer

    corpus = open_corpus(spec.corpus)
    if spec.models:
        require_model_dirs([Path(p) for p in spec.models])
    store = Store(out)
    context = dict(corpus=str(corpus.root), device=device, spec=spec.source, name=spec.name)
    if spec.runs or spec.simulate is not None:  # they tokenize the text with the study's own tokenizer
        tokenizer = corpus_tokenizer(corpus.split()[0], spec.vocab_size)
        if not (out / "tokenizer").is_dir():
            tokenizer.save_pretrained(out / "tokenizer")
        context["tokenizer"] = str(out / "tokenizer")
    units = expand_units(spec, corpus.identity(), model_identity)
    write_json(out / "study.json", context)
    for u in units:
        store.write_unit(u)
    return store, units


def run_study(name_or_path: str | Path, out: str | Path, *, launcher: str = "local", workers: int | None = None,
              retry_failed: bool = False, device: str = "auto", slurm_overrides: dict | None = None,
              analyze: bool = True) -> StudyReport:
    """Run every unit of the study that is not done (failed ones too with ``retry_failed``)."""
    from dataclasses import replace

    spec = load_spec(name_or_path)
    check_launcher(launcher)  # before anything is written or submitted
    out = Path(out)
    with folder_lock(out, "collapse study run"):
        store, units = _prepare(spec, out, device)
        now = study_status(name_or_path, out, _spec=spec, _units=units)
        runnable = {"pending", "interrupted", "running"} | ({"failed"} if retry_failed else set())
        todo = [u for u in units if now.states[u.identity] in runnable]
        if launcher == "local":
            run_local(store, units, todo, workers or spec.workers, device=device)
        else:
            # Jobs of an earlier run that SLURM still holds (its launcher was killed) run on their own.
            live = {u.identity: store.slurm_job(u) for u in units
                    if now.states[u.identity] == "running" and store.slurm_job(u)}
            slurm = replace(spec.slurm, **(slurm_overrides or {}))
            run_slurm(store, [u for u in todo if now.states[u.identity] != "running"], slurm, live=live)
        report = study_status(name_or_path, out, _spec=spec, _units=units)
        report.table = store.write_table(units)
        if analyze and report.table is not None and report.counts["done"] == len(units):
            try:
                report.analysis = analyze_study(spec, out)
            except TableError as err:  # too few checkpoints for a fit: the table stands alone
                report.note = f"not analyzed: {err}"
        return report


def study_status(name_or_path: str | Path, out: str | Path, *, _spec: StudySpec | None = None,
                 _units: list[Unit] | None = None) -> StudyReport:
    """Each unit's state, read from its folder: done, running, failed (with its log), interrupted
    (its process or job died: killed, cancelled, out of time), pending."""
    spec = _spec or load_spec(name_or_path)
    out = Path(out)
    store = Store(out)
    if _units is None:
        if not (out / "study.json").is_file():
            raise SpecError(f"{out} holds no study yet: run `collapse study run {name_or_path} --out {out}` first")
        units = [store.read_unit(d) for d in (out / "units").iterdir() if (d / "unit.json").is_file()]
        units.sort(key=lambda u: (u.name.split("/")[0], u.kind != "train", u.name))  # each run, then its checkpoints
    else:
        units = _units
    states, details = {}, {}
    jobs = {u.identity: store.slurm_job(u) for u in units if store.slurm_job(u)}
    alive = queued(list(jobs.values())) if jobs else set()
    for u in units:
        state = store.state(u)
        job = jobs.get(u.identity)
        if state == "pending" and job in alive:
            state, details[u.identity] = "running", f"queued as SLURM job {job}"
        elif state in ("failed", "interrupted"):
            why = store.status(u).get("error", "its process ended without a result")
            where = f"SLURM job {job}, " if job else ""
            details[u.identity] = f"{why} ({where}log {store.log(u)})"
        elif state == "running":
            st = store.status(u)
            details[u.identity] = f"pid {st.get('pid')} on {st.get('host')}" + (f", SLURM job {job}" if job else "")
        states[u.identity] = state
    return StudyReport(spec, units, states, details, out / "results.csv" if (out / "results.csv").is_file() else None)


def analyze_study(spec: StudySpec, out: Path) -> Path:
    """The table's analysis, the run as the group (a run's checkpoints are not independent): each
    metric against the loss at the final state, and the figures (metric vs loss by architecture,
    metric vs step per run, metric vs depth)."""
    from ufm.analysis import analyze_table, read_table
    from ufm.io import atomic_write

    from .figures import study_figures

    rows = read_table(out / "results.csv")
    final = [r for r in rows if str(r["layer"]) == "final"]
    metrics = [k for k in ("cdnv_mean", "nc4_agreement", "cos_std", "log_norm_cov", "gnc_log_std", "unc_cov",
                           "dual_cos_mean", "norm_cov", "etf_error", "nc1_trace_ratio") if k in final[0]]
    analysis = analyze_table(final, spec.analyze.loss, metrics=metrics, log10=tuple(spec.analyze.log10),
                             group="run", dropna=True, draws=10_000, seed=0)
    figures = study_figures(rows, metrics, out, spec.analyze.loss)
    caption = analysis.caption("results.csv (the final state of each checkpoint; the run is the group)",
                               draws=10_000, seed=0)
    write_json(out / "analysis.json", dict(analysis.to_dict(), figures=figures))
    text = f"# {spec.name}\n\n{caption}\n\n{analysis.markdown()}\n\n" + "\n".join(f"![{f}]({f})" for f in figures)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(text + "\n"))
    return out / "report.md"
