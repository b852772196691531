"""Wu & Papyan's analysis for any table of models: each collapse metric against validation loss.

For every metric column: R^2 of the least-squares line metric ~ loss, Pearson's r, Spearman's rho
(with its asymptotic p-value) and a permutation test of rho (Monte Carlo, seeded; exact when n! is
at most the number of draws). Rows that are not independent (the epochs of one run, the seeds of one
architecture) are named by a group column: then R^2 and rho are also reported on one row per group
(the group's means), and rho is tested within each group of at least 3 rows.

Tables: CSV with a header, or JSON lines (one object per model). Wu & Papyan's published table
(230 TinyStories models) is read as is; its coefficients of variation are ratios of two columns
(``ratios={"unc3": ("sims_std", "sims_mean")}``).

Reference: Wu & Papyan, "Linguistic Collapse: Neural Collapse in (Large) Language Models",
NeurIPS 2024 (their Figures 2-7 and the R^2 table computed from lc-2024_05_18.csv).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps


class TableError(ValueError):
    """A table that cannot be analysed as asked: a missing column, text or NaN values, too few rows."""


MIN_ROWS = 3  # a line through fewer points says nothing


@dataclass(frozen=True)
class GroupTest:
    n: int  # rows in the group
    spearman: float  # rho of metric and loss within the group
    p_value: float  # two-sided permutation p-value of rho
    exact: bool  # every permutation was enumerated


@dataclass(frozen=True)
class MetricFit:
    n: int  # rows used
    r2: float  # R^2 of the least-squares line metric ~ loss (= Pearson r^2)
    pearson: float
    spearman: float
    spearman_p: float  # asymptotic (t-distribution) p-value of rho
    permutation_p: float  # permutation p-value of rho over all rows (treats them as independent)
    slope: float  # of the fitted line metric = slope * loss + intercept
    intercept: float
    direction: str  # "lower", "higher" or "neither": what the metric does as the loss falls (sign of
    # rho); "undefined" for a constant column
    group_n: int | None = None  # groups (rows averaged within a group), with a group column
    group_r2: float | None = None
    group_spearman: float | None = None
    groups: dict[str, GroupTest] = field(default_factory=dict)  # groups of >= 3 rows
    undefined: str | None = None  # why r, rho and p are NaN (a constant column), else None


@dataclass(frozen=True)
class TableAnalysis:
    loss: str
    n_rows: int
    metrics: dict[str, MetricFit]
    transforms: dict[str, str]  # column -> "log10" or "A/B"
    group: str | None
    num_groups: int | None
    draws: int
    seed: int
    left_out: dict[str, str] = field(default_factory=dict)  # columns not analysed -> what they hold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def caption(self, table: str, *, draws: int, seed: int) -> str:
        """What the table shows, in words: the fit, the tests, the grouping and what was left out."""
        text = (f"Each metric against {self.loss} over {self.n_rows} models of {table}: R^2 of the least-squares "
                f"line, Pearson r, Spearman rho with a permutation p-value ({draws} draws, seed {seed}; exact when "
                "n! <= draws).")
        if self.group:
            text += (f" Rows grouped by {self.group} ({self.num_groups} groups): R^2 and rho also over the groups' "
                     "means, since rows of one group are not independent.")
        if self.left_out:
            text += " Not analysed (not numeric): " + ", ".join(f"{k} ({v})" for k, v in self.left_out.items()) + "."
        return text

    def markdown(self, reference: dict[str, float] | None = None) -> str:
        """A table a paper could use; ``reference`` adds a column of published R^2 values."""
        grouped = self.group is not None
        head = ["metric", "n", "R^2", "Pearson r", "Spearman rho", "perm. p", "lower loss goes with"]
        head += ["R^2 (group means)", "rho (group means)"] if grouped else []
        head += ["published R^2"] if reference else []
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for name, fit in self.metrics.items():
            label = f"{self.transforms[name]}({name})" if self.transforms.get(name) == "log10" else name
            verdict = f"- ({fit.undefined})" if fit.undefined else (
                "neither (rho = 0)" if fit.direction == "neither" else f"{fit.direction} {name}")
            cells = [label, str(fit.n), _fmt(fit.r2), _fmt(fit.pearson, "+.3f"), _fmt(fit.spearman, "+.3f"),
                     _fmt(fit.permutation_p, ".3g"), verdict]
            if grouped:
                cells += [_fmt(fit.group_r2), _fmt(fit.group_spearman, "+.3f")]
            if reference:
                cells.append(_fmt(reference.get(name)))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV file (with a header), a JSON-lines file (one object per line) or a JSON array
    of objects, as dicts of raw values. Every row holds every column: a key that some JSON rows lack
    is a missing value (None) there, which the analysis reports unless told to drop it."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"table {path} does not exist")
    text = path.read_text()
    head = text.lstrip()[:1]
    if head == "[":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise TableError(f"{path} starts like a JSON array but is not one: {err}") from err
        return _complete(path, rows, "element")
    if path.suffix in (".jsonl", ".json", ".ndjson") or head == "{":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise TableError(f"{path} line {i} is not a JSON object: {err}") from err
        return _complete(path, rows, "line")
    reader = csv.reader(text.splitlines())
    header = next(reader, [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise TableError(f"{path} repeats column name(s) {', '.join(map(repr, repeated))} in its header: "
                         "a column of a repeated name is ambiguous; rename them")
    rows = []
    for i, cells in enumerate(reader, 2):
        if cells and len(cells) != len(header):
            raise TableError(f"{path} line {i} has {len(cells)} cells; the header has {len(header)}")
        if cells:
            rows.append(dict(zip(header, cells)))
    return rows


def _complete(path: Path, rows: Any, unit: str) -> list[dict[str, Any]]:
    """JSON rows as dicts with every column (in order of first appearance), None where absent."""
    if not isinstance(rows, list):
        raise TableError(f"{path} must hold a JSON array of objects (one per model)")
    columns: dict[str, None] = {}
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise TableError(f"{path}: {unit} {i} is a JSON {type(row).__name__}, not an object (one model per {unit})")
        columns.update(dict.fromkeys(row))
    return [{name: row.get(name) for name in columns} for row in rows]


def numeric_column(rows: list[dict[str, Any]], name: str) -> np.ndarray:
    """Column ``name`` as float64, NaN where missing; text, booleans, lists and objects raise,
    naming their rows."""
    if not rows or name not in rows[0]:
        known = ", ".join(rows[0]) if rows else "none"
        raise TableError(f"the table has no column {name!r}; its columns: {known}")
    out = np.empty(len(rows))
    bad = []
    for i, row in enumerate(rows):
        value = row.get(name)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "null", "none")):
            out[i] = math.nan
            continue
        try:
            if isinstance(value, (bool, list, dict)):
                raise TypeError(value)
            out[i] = float(value)
        except (TypeError, ValueError):
            bad.append(i)
    if bad:
        first = rows[bad[0]][name]
        kind = {bool: "a boolean", list: "a list", dict: "an object"}.get(type(first), "text")
        raise TableError(f"column {name!r} holds {kind} in row(s) {_rows(bad)} (first: {first!r}); a metric "
                         "is a number in every row (a flag as 0/1, a list as one column per entry)")
    return out


def _rows(indices) -> str:
    shown = ", ".join(str(i) for i in list(indices)[:10])
    return shown + (f" and {len(indices) - 10} more" if len(indices) > 10 else "")


def column_kind(rows: list[dict[str, Any]], name: str) -> str:
    """"number" if any value is a finite number (mixed columns too, so that the analysis names
    their bad rows instead of silently skipping a metric); else what the column holds instead."""
    kinds = set()
    for row in rows:
        value = row.get(name)
        if isinstance(value, bool):
            kinds.add("booleans")
        elif isinstance(value, (list, dict)):
            kinds.add("lists or objects")
        elif value is not None:
            try:
                if math.isfinite(float(value)):
                    return "number"
            except (TypeError, ValueError):
                kinds.add("text")
    return " and ".join(sorted(kinds)) or "no values"


def numeric_columns(rows: list[dict[str, Any]], exclude: set[str]) -> tuple[list[str], dict[str, str]]:
    """The default metrics: columns holding numbers, in table order; and the other columns (a
    model's name, a flag, a list) with what they hold, so that a caption can say what was left out."""
    names, left_out = [], {}
    for name in rows[0] if rows else []:
        if name in exclude or name == "":
            continue
        kind = column_kind(rows, name)
        if kind == "number":
            names.append(name)
        else:
            left_out[name] = kind
    return names, left_out


def group_keys(rows: list[dict[str, Any]], column: str, pattern: str | None = None) -> list[str]:
    """Group of each row: the value of ``column``, or the first capture group of ``pattern`` in it."""
    if not rows or column not in rows[0]:
        raise TableError(f"the table has no group column {column!r}")
    if pattern is None:
        return [str(r[column]) for r in rows]
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise TableError(f"group pattern {pattern!r} is not a regular expression: {err} (e.g. '^(\\d+x\\d+)' "
                         "groups rows by the first capture group)") from err
    keys = []
    for i, r in enumerate(rows):
        found = regex.search(str(r[column]))
        if found is None:
            raise TableError(f"group pattern {pattern!r} does not match row {i} ({column} = {r[column]!r})")
        keys.append(found.group(1) if regex.groups else found.group(0))
    return keys


# Elements of one batch of permuted ranks: the vectorized test holds a few arrays of draws x n
# values, so a million-row table is tested in batches of 4 draws instead of all 10,000 at once.
PERMUTATION_BATCH_ELEMENTS = 2**22
MIN_ASYMPTOTIC_ROWS = 10  # below this the t approximation of rho's p-value is not reported


def permutation_p(x: np.ndarray, y: np.ndarray, draws: int, seed: int) -> tuple[float, bool]:
    """Two-sided permutation p-value of Spearman's rho, and whether it was exact (n! <= draws).

    Spearman's rho is Pearson's r of the ranks, and pairing permutations permute the ranks: the
    ranks are taken once and the statistic is vectorized over scipy's batches of permutations.
    Constant x or y has no rho: NaN."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, False
    ry = sps.rankdata(y)
    ry = (ry - ry.mean()) / np.linalg.norm(ry - ry.mean())

    def rho(rx, axis=-1):  # the ranks of x permuted (one sample: n! orderings), against fixed ranks of y
        rx = rx - rx.mean(axis=axis, keepdims=True)
        return (rx * ry).sum(axis) / np.sqrt((rx * rx).sum(axis))

    batch = max(1, PERMUTATION_BATCH_ELEMENTS // len(x))
    result = sps.permutation_test((sps.rankdata(x),), rho, permutation_type="pairings", n_resamples=draws,
                                  alternative="two-sided", vectorized=True, batch=batch,
                                  rng=np.random.default_rng(seed))
    return float(result.pvalue), math.factorial(len(x)) <= draws


def _unit(v: np.ndarray) -> np.ndarray:
    """``v`` divided by its largest magnitude: correlations and fits of values near the float
    range (1e300) without overflow in sums of squares."""
    return v / np.abs(v).max()


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r, computed on rescaled values (scale-free, so exact for any finite range)."""
    return float(sps.pearsonr(_unit(x), _unit(y)).statistic)


def fit_metric(loss: np.ndarray, x: np.ndarray, *, draws: int, seed: int) -> dict[str, Any]:
    """Line, correlations and permutation test of one metric against the loss (finite rows).

    A constant metric or loss has no correlation: every statistic is NaN and ``undefined`` says
    why. The asymptotic p-value of rho needs MIN_ASYMPTOTIC_ROWS rows (at n = 3 a perfect rank
    order has t = inf and p = 0, while the smallest exact p is 1/3); the permutation p is exact
    for small tables."""
    n = len(x)
    nan = math.nan
    if np.ptp(x) == 0 or np.ptp(loss) == 0:
        which = "the metric" if np.ptp(x) == 0 else "the loss"
        return dict(n=n, r2=nan, pearson=nan, spearman=nan, spearman_p=nan, permutation_p=nan, slope=nan,
                    intercept=nan, direction="undefined",
                    undefined=f"{which} is constant over the {n} rows: no line or correlation is defined")
    r = pearson(loss, x)
    rho, rho_p = sps.spearmanr(loss, x)
    sx, sy = np.abs(x).max(), np.abs(loss).max()
    slope, intercept = np.polyfit(_unit(loss), _unit(x), 1)  # of x / sx against loss / sy
    perm_p, _ = permutation_p(loss, x, draws, seed)
    direction = "lower" if rho > 0 else "higher" if rho < 0 else "neither"
    return dict(n=n, r2=r * r, pearson=r, spearman=float(rho),
                spearman_p=float(rho_p) if n >= MIN_ASYMPTOTIC_ROWS else nan, permutation_p=perm_p,
                slope=float(slope * (sx / sy)), intercept=float(intercept * sx), direction=direction)


def analyze_table(
    rows: list[dict[str, Any]],
    loss: str,
    *,
    metrics: list[str] | None = None,
    log10: tuple[str, ...] = (),
    ratios: dict[str, tuple[str, str]] | None = None,
    group: str | None = None,
    group_pattern: str | None = None,
    dropna: bool = False,
    draws: int = 10_000,
    seed: int = 0,
) -> TableAnalysis:
    """Each metric column against ``loss`` (see the module docstring).

    metrics: columns to analyse (default: every numeric column but the loss and the group);
    log10: columns analysed as log10; ratios: derived columns NAME = A / B (a coefficient of
    variation from a std and a mean column), analysed after the named metrics; dropna: skip rows
    where a value is missing (otherwise they are an error naming the rows).
    """
    if len(rows) < MIN_ROWS:
        raise TableError(f"the table has {len(rows)} row(s); a fit needs at least {MIN_ROWS}")
    if not (isinstance(draws, int) and draws >= 1):
        raise TableError(f"draws must be a positive integer, got {draws!r}")
    y = numeric_column(rows, loss)
    ratios = dict(ratios or {})
    clash = sorted(set(ratios) & set(rows[0]))
    if clash:
        raise TableError(f"--ratio names {', '.join(map(repr, clash))}, a column the table already has: "
                         "a derived column needs a new name")
    left_out: dict[str, str] = {}
    if metrics is None:
        names, left_out = numeric_columns(rows, {loss, group or ""})
    else:
        names = list(metrics)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise TableError(f"--metrics names {', '.join(map(repr, repeated))} more than once")
    if loss in names or loss in ratios:
        raise TableError(f"{loss!r} is the loss column: each metric is analysed against it, so it cannot be a "
                         "metric too (a loss against itself has R^2 = 1 by construction)")
    names += [n for n in ratios if n not in names]
    if not names:
        raise TableError("no metric column to analyse")
    keys = np.array(group_keys(rows, group, group_pattern)) if group is not None else None
    if keys is not None and len(set(keys)) < 2:
        raise TableError(f"group column {group!r} has a single group ({keys[0]!r}): nothing to average over")

    transforms: dict[str, str] = {}
    fits: dict[str, MetricFit] = {}
    for name in names:
        if name in ratios:
            a, b = ratios[name]
            x = numeric_column(rows, a) / numeric_column(rows, b)
            transforms[name] = f"{a}/{b}"
        else:
            x = numeric_column(rows, name)
        if name in log10:
            if np.any(x <= 0):
                raise TableError(f"log10 of column {name!r}: row(s) {_rows(np.flatnonzero(x <= 0))} are <= 0")
            x = np.log10(x)
            transforms[name] = "log10"
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.all() and not dropna:
            raise TableError(f"column {name!r} (or the loss) is missing or NaN in row(s) "
                             f"{_rows(np.flatnonzero(~ok))}; pass dropna to skip them")
        if ok.sum() < MIN_ROWS:
            raise TableError(f"column {name!r} has {int(ok.sum())} usable row(s); a fit needs {MIN_ROWS}")
        fit = fit_metric(y[ok], x[ok], draws=draws, seed=seed)
        if keys is not None:
            fit.update(_group_fits(y[ok], x[ok], keys[ok], draws=draws, seed=seed))
        fits[name] = MetricFit(**fit)
    unknown = sorted(set(log10) - set(names))
    if unknown:
        raise TableError(f"--log10 names column(s) that are not analysed: {', '.join(unknown)}")
    return TableAnalysis(loss=loss, n_rows=len(rows), metrics=fits, transforms=transforms, group=group,
                         num_groups=None if keys is None else len(set(keys)), draws=draws, seed=seed,
                         left_out=left_out)


def _group_fits(y: np.ndarray, x: np.ndarray, keys: np.ndarray, *, draws: int, seed: int) -> dict[str, Any]:
    """One row per group (its means), and rho tested within each group of >= MIN_ROWS rows."""
    names = sorted(set(keys))
    gy = np.array([y[keys == g].mean() for g in names])
    gx = np.array([x[keys == g].mean() for g in names])
    out: dict[str, Any] = dict(group_n=len(names), group_r2=None, group_spearman=None, groups={})
    if len(names) >= MIN_ROWS and np.ptp(gx) > 0 and np.ptp(gy) > 0:
        out["group_r2"] = pearson(gy, gx) ** 2
        out["group_spearman"] = float(sps.spearmanr(gy, gx)[0])
    for g in names:
        sel = keys == g
        if sel.sum() >= MIN_ROWS and np.ptp(x[sel]) > 0 and np.ptp(y[sel]) > 0:
            p, exact = permutation_p(y[sel], x[sel], draws, seed)
            out["groups"][g] = GroupTest(int(sel.sum()), float(sps.spearmanr(y[sel], x[sel])[0]), p, exact)
    return out


def figure_name(metric: str) -> str:
    """A file name of its own for each metric: the name itself where it is plain ASCII, else its
    ASCII part and a hash of the whole (``λ/μ`` and ``日本`` would both be ``scatter__``)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", metric)
    if stem != metric:
        stem += "-" + hashlib.sha1(metric.encode()).hexdigest()[:8]
    return f"scatter_{stem}.png"


def analysis_figures(rows: list[dict[str, Any]], analysis: TableAnalysis, out: Path,
                     ratios: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """One scatter per metric: loss on x, the metric on y, the fitted line; returns file names."""
    import matplotlib.pyplot as plt

    from .report import save_figure

    ratios = ratios or {}
    y = numeric_column(rows, analysis.loss)
    names = []
    for name, fit in analysis.metrics.items():
        if name in ratios:
            x = numeric_column(rows, ratios[name][0]) / numeric_column(rows, ratios[name][1])
        else:
            x = numeric_column(rows, name)
        label = name
        if analysis.transforms.get(name) == "log10":
            x, label = np.log10(x), f"log10 {name}"
        fig, ax = plt.subplots(figsize=(4.6, 3.6))
        ax.scatter(y, x, s=14, alpha=0.7)
        grid = np.linspace(np.nanmin(y), np.nanmax(y), 50)
        if fit.undefined:
            ax.plot([], [], " ", label=fit.undefined)
        else:
            ax.plot(grid, fit.slope * grid + fit.intercept, color="C3", lw=1.2,
                    label=f"R^2 {fit.r2:.3f}, rho {fit.spearman:+.3f}")
        ax.set_xlabel(analysis.loss)
        ax.set_ylabel(label)
        ax.set_title(f"{label} against {analysis.loss} (n = {fit.n})", fontsize=9)
        ax.legend(fontsize=7)
        names.append(save_figure(fig, out / figure_name(name)).name)
    return names
