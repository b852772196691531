"""`collapse analyze`: Wu & Papyan's published table reproduces their figures; bad tables are refused."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from ufm.analysis import TableError, analyze_table, permutation_p, read_table
from experiments.cli import main

LC_TABLE = Path(__file__).resolve().parents[2] / "data" / "lc-2024_05_18.csv"
# R^2 against validation loss in Wu & Papyan (NeurIPS 2024), as the data README quotes them.
PUBLISHED_R2 = {"cdnv_mean": 0.916, "matches": 0.891, "interfere_std": 0.875, "log_norm_cov": 0.865,
                "log_dist_std": 0.858, "unc3_cov": 0.693, "sims_mean": 0.312}
SEED_GROUP = "02x0768_01d"  # the 20 seed runs 02x0768_01dNN@0 and their base run 02x0768_01d@0


@pytest.fixture(scope="module")
def lc_analysis(tmp_path_factory):
    if not LC_TABLE.is_file():
        pytest.fail(f"Wu & Papyan's table is expected at {LC_TABLE} (the project carries it: data/README.md)")
    out = tmp_path_factory.mktemp("lc")
    rc = main(["analyze", str(LC_TABLE), "--loss", "val_loss",
               "--metrics", "cdnv_mean,matches,interfere_std,log_dist_std,sims_mean",
               "--log10", "cdnv_mean", "--ratio", "log_norm_cov=norms_log_std/norms_log_mean",
               "--ratio", "unc3_cov=sims_std/sims_mean", "--ratio", "norm_sq_cov=norms_std/norms_mean",
               "--group", "model", "--group-pattern", r"^(\d+x\d+_\d+[A-Za-z])", "--draws", "2000",
               "--out", str(out)])
    assert rc == 0
    return out, json.loads((out / "analysis.json").read_text())


def test_published_table_gives_wu_and_papyan_r2(lc_analysis):
    out, analysis = lc_analysis
    for name, r2 in PUBLISHED_R2.items():
        assert round(analysis["metrics"][name]["r2"], 3) == r2, name
        assert analysis["metrics"][name]["n"] == 230
    # The raw CoV of squared norms does not track the loss (SCIENCE.md: R^2 0.005).
    assert analysis["metrics"]["norm_sq_cov"]["r2"] < 0.01
    assert analysis["transforms"]["cdnv_mean"] == "log10"
    md = (out / "analysis.md").read_text()
    assert "| log10(cdnv_mean) | 230 | 0.916 |" in md
    assert sorted(analysis["figures"]) == sorted(f"scatter_{k}.png" for k in analysis["metrics"])


def test_published_fit_equals_a_direct_least_squares_line(lc_analysis):
    _, analysis = lc_analysis
    rows = read_table(LC_TABLE)
    loss = np.array([float(r["val_loss"]) for r in rows])
    x = np.log10([float(r["cdnv_mean"]) for r in rows])
    design = np.c_[loss, np.ones_like(loss)]
    (slope, intercept), res, *_ = np.linalg.lstsq(design, x, rcond=None)
    fit = analysis["metrics"]["cdnv_mean"]
    assert fit["slope"] == pytest.approx(slope, rel=1e-9) and fit["intercept"] == pytest.approx(intercept, rel=1e-9)
    assert fit["r2"] == pytest.approx(1 - res[0] / ((x - x.mean()) ** 2).sum(), rel=1e-9)


def test_seed_runs_get_a_permutation_test(lc_analysis):
    """Within the 21 runs of one architecture, rho is tested against shuffles of the pairing, and the
    Monte Carlo p-value agrees with a plain numpy shuffle loop (shares no code) within sampling error."""
    _, analysis = lc_analysis
    assert analysis["num_groups"] == 150  # checkpoints of one run (@5, @9) share a group
    rows = [r for r in read_table(LC_TABLE) if r["model"].startswith(SEED_GROUP)]
    assert len(rows) == 21
    loss = np.array([float(r["val_loss"]) for r in rows])
    rng = np.random.default_rng(1)
    for name in ("matches", "cdnv_mean", "unc3_cov"):
        test = analysis["metrics"][name]["groups"][SEED_GROUP]
        if name == "unc3_cov":
            x = np.array([float(r["sims_std"]) / float(r["sims_mean"]) for r in rows])
        else:
            x = np.array([float(r[name]) for r in rows])
        rho = sps.spearmanr(loss, x)[0]
        assert test["n"] == 21 and test["spearman"] == pytest.approx(rho, abs=1e-12) and not test["exact"]
        shuffled = np.array([sps.spearmanr(rng.permutation(loss), x)[0] for _ in range(3000)])
        # Two-sided as scipy defines it: twice the smaller tail, at most 1.
        tails = [(np.sum(shuffled >= rho - 1e-12) + 1) / 3001, (np.sum(shuffled <= rho + 1e-12) + 1) / 3001]
        direct = min(1.0, 2 * min(tails))
        tail = min(tails)  # four standard errors of the two Monte Carlo estimates of 2 * tail
        tol = 4 * 2 * math.sqrt(tail * (1 - tail) * (1 / 2000 + 1 / 3000)) + 1e-3
        assert test["p_value"] == pytest.approx(direct, abs=tol), name
    # What the seeds show: NC4 tracks the loss even across seeds; the UNC3 CoV does not.
    assert analysis["metrics"]["matches"]["groups"][SEED_GROUP]["p_value"] < 0.01
    assert analysis["metrics"]["unc3_cov"]["groups"][SEED_GROUP]["p_value"] > 0.5


def test_small_groups_are_tested_exactly():
    x = np.arange(5.0)
    p, exact = permutation_p(x, x ** 3, draws=10_000, seed=0)
    assert exact and p == pytest.approx(2 / 120)  # only the two monotone orders are as extreme
    p, exact = permutation_p(x, np.array([2.0, 0.0, 4.0, 1.0, 3.0]), draws=10_000, seed=0)
    assert exact and p > 0.2


def _rows(n=6, **extra):
    rng = np.random.default_rng(0)
    loss = np.linspace(2.0, 4.0, n)
    return [dict(run=f"r{i // 2}", val_loss=loss[i], cdnv=10 ** (loss[i] + 0.1 * rng.normal()),
                 nc4=1 - loss[i] / 5, **{k: v[i] for k, v in extra.items()}) for i in range(n)]


def test_grouped_rows_are_also_fit_on_group_means():
    rows = _rows(8)
    a = analyze_table(rows, "val_loss", log10=("cdnv",), group="run", draws=500)
    keys = np.array([r["run"] for r in rows])
    loss = np.array([r["val_loss"] for r in rows])
    x = np.log10([r["cdnv"] for r in rows])
    gl = [loss[keys == g].mean() for g in sorted(set(keys))]
    gx = [x[keys == g].mean() for g in sorted(set(keys))]
    assert a.metrics["cdnv"].group_n == 4
    assert a.metrics["cdnv"].group_r2 == pytest.approx(np.corrcoef(gl, gx)[0, 1] ** 2, rel=1e-12)
    assert a.metrics["nc4"].direction == "higher" and a.metrics["cdnv"].direction == "lower"
    assert a.metrics["nc4"].groups == {}  # groups of 2 rows: nothing to test within


def test_bad_tables_are_refused(tmp_path, capsys):
    with pytest.raises(TableError, match="no column 'loss'"):
        analyze_table(_rows(), "loss")
    with pytest.raises(TableError, match=r"column 'nc4' holds text in row\(s\) 2 \(first: 'n/a'\)"):
        analyze_table([dict(r, nc4="n/a") if i == 2 else r for i, r in enumerate(_rows())], "val_loss")
    nan_rows = [dict(r, nc4=math.nan) if i in (1, 4) else r for i, r in enumerate(_rows())]
    with pytest.raises(TableError, match=r"column 'nc4' .* NaN in row\(s\) 1, 4; pass dropna"):
        analyze_table(nan_rows, "val_loss")
    assert analyze_table(nan_rows, "val_loss", dropna=True).metrics["nc4"].n == 4
    with pytest.raises(TableError, match="the table has 2 row"):
        analyze_table(_rows()[:2], "val_loss")
    with pytest.raises(TableError, match="group column 'one' has a single group"):
        analyze_table([dict(r, one="a") for r in _rows()], "val_loss", group="one")
    with pytest.raises(TableError, match=r"log10 of column 'nc4': row\(s\) 5 are <= 0"):
        analyze_table([dict(r, nc4=0.0) if i == 5 else r for i, r in enumerate(_rows())], "val_loss",
                      log10=("nc4",))
    table = tmp_path / "t.csv"
    table.write_text("val_loss,x\n1,2\n2,3\n")
    assert main(["analyze", str(table), "--loss", "val_loss", "--out", str(tmp_path / "o")]) == 2
    assert "the table has 2 row(s)" in capsys.readouterr().err


def test_json_lines_tables(tmp_path):
    path = tmp_path / "models.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    a = analyze_table(read_table(path), "val_loss", metrics=["nc4"])
    assert list(a.metrics) == ["nc4"] and a.metrics["nc4"].r2 == pytest.approx(1.0)


# ---- tables that used to give a wrong answer with exit 0, or a raw traceback -------------------


def _write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def _loss_and(n=30, seed=0):
    rng = np.random.default_rng(seed)
    loss = rng.uniform(2, 4, n)
    return loss, 2 * loss + rng.normal(0, 0.01, n), rng.normal(size=n)


def test_a_repeated_column_name_is_refused_not_overwritten(tmp_path, capsys):
    loss, a, noise = _loss_and()
    path = _write_csv(tmp_path / "dup.csv", ["model", "val_loss", "a", "a", "b"],
                      [(f"m{i}", loss[i], a[i], noise[i], -loss[i]) for i in range(30)])
    with pytest.raises(TableError, match="repeats column name.*'a'"):
        read_table(path)
    assert main(["analyze", str(path), "--loss", "val_loss", "--out", str(tmp_path / "o")]) == 2
    assert "repeats column name(s) 'a'" in capsys.readouterr().err


def test_values_near_the_float_range_keep_their_correlation():
    loss, a, _ = _loss_and()
    rows = [dict(val_loss=loss[i], a=a[i] * 1e300, tiny=a[i] * 1e-300) for i in range(30)]
    fits = analyze_table(rows, "val_loss", draws=200).metrics
    r = np.corrcoef(loss, a)[0, 1]  # the same data at unit scale
    for name in ("a", "tiny"):
        assert fits[name].pearson == pytest.approx(r, rel=1e-12) and fits[name].r2 == pytest.approx(r * r, rel=1e-12)
    assert fits["a"].slope == pytest.approx(np.polyfit(loss, a, 1)[0] * 1e300, rel=1e-9)


@pytest.mark.parametrize("which", ["metric", "loss"])
def test_a_constant_column_has_no_correlation_and_no_p_value(which, tmp_path):
    loss, _, b = _loss_and()
    rows = [dict(val_loss=3.0 if which == "loss" else loss[i], a=1.0 if which == "metric" else loss[i], b=b[i])
            for i in range(30)]
    fit = analyze_table(rows, "val_loss", metrics=["a"], draws=200).metrics["a"]
    assert all(math.isnan(getattr(fit, k)) for k in ("r2", "pearson", "spearman", "spearman_p", "permutation_p"))
    assert fit.direction == "undefined" and f"the {which} is constant" in fit.undefined
    md = analyze_table(rows, "val_loss", metrics=["a"], draws=200).markdown()
    assert "lower a" not in md and "higher a" not in md and "constant" in md


def test_three_rows_never_get_an_impossible_p_value():
    rows = [dict(val_loss=v, a=1.0, b=-v) for v in (2.0, 3.0, 4.5)]
    fits = analyze_table(rows, "val_loss", draws=10_000).metrics
    assert math.isnan(fits["a"].permutation_p)  # constant: no test
    # b is a perfect rank order: 2 of the 3! = 6 pairings are as extreme, so p = 1/3 exactly, and
    # the t approximation (p = 0 at rho = -1) is not reported for so few rows.
    assert fits["b"].permutation_p == pytest.approx(1 / 3) and math.isnan(fits["b"].spearman_p)


def test_boolean_text_and_list_columns_are_named_not_analysed(tmp_path, capsys):
    loss, a, _ = _loss_and(10)
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(dict(model=f"m{i}", val_loss=loss[i], flag=bool(i % 2), cfg=[1, 2], a=a[i]))
                            + "\n" for i in range(10)))
    rows = read_table(path)
    result = analyze_table(rows, "val_loss", draws=100)
    assert list(result.metrics) == ["a"]
    assert result.left_out == {"model": "text", "flag": "booleans", "cfg": "lists or objects"}
    with pytest.raises(TableError, match="'flag' holds a boolean"):
        analyze_table(rows, "val_loss", metrics=["flag"])
    with pytest.raises(TableError, match="'cfg' holds a list"):
        analyze_table(rows, "val_loss", metrics=["cfg"])
    assert main(["analyze", str(path), "--loss", "val_loss", "--draws", "100", "--out", str(tmp_path / "o")]) == 0
    assert "Not analysed (not numeric): model (text), flag (booleans), cfg (lists or objects)" in capsys.readouterr().out


def test_every_metric_gets_its_own_figure(tmp_path, capsys):
    loss, a, b = _loss_and()
    path = _write_csv(tmp_path / "names.csv", ["model", "val_loss", "λ/μ", "日本", "b"],
                      [(f"m{i}", loss[i], a[i], b[i], -loss[i]) for i in range(30)])
    out = tmp_path / "o"
    assert main(["analyze", str(path), "--loss", "val_loss", "--draws", "100", "--out", str(out)]) == 0
    figures = json.loads((out / "analysis.json").read_text())["figures"]
    assert len(set(figures)) == 3 and sorted(p.name for p in out.glob("*.png")) == sorted(figures)
    assert "and 3 figures" in capsys.readouterr().out


def test_a_long_table_is_tested_in_batches_within_memory(tmp_path):
    """The vectorized permutation test held draws x n values at once (a 1,000,000-row table needed
    ~80 GB). Capped at 600 MiB of address space, 300 draws over 100,000 rows (~230 MiB a batch)
    must run."""
    script = tmp_path / "perm.py"
    script.write_text(
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (600 << 20, 600 << 20))\n"
        "import numpy as np\n"
        "from ufm.analysis import permutation_p\n"
        "y = np.random.default_rng(0).normal(size=100_000)\n"
        "x = y + np.random.default_rng(1).normal(size=100_000)\n"
        "print(permutation_p(x, y, 300, 0)[0])\n")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    # rho ~ 0.7 at n = 1e5: no shuffle comes close, so p is the smallest two-sided value, 2 / (draws + 1)
    assert float(done.stdout) == pytest.approx(2 / 301)


def test_table_and_flag_mistakes_name_the_problem(tmp_path):
    rows = _rows()
    with pytest.raises(TableError, match="not a regular expression"):
        analyze_table(rows, "val_loss", group="run", group_pattern="(")
    with pytest.raises(TableError, match="'val_loss' is the loss column"):
        analyze_table(rows, "val_loss", metrics=["val_loss", "nc4"])
    with pytest.raises(TableError, match="--ratio names 'nc4', a column the table already has"):
        analyze_table(rows, "val_loss", ratios={"nc4": ("cdnv", "val_loss")})
    with pytest.raises(TableError, match="names 'nc4' more than once"):
        analyze_table(rows, "val_loss", metrics=["nc4", "nc4"])
    with pytest.raises(TableError, match="line 3 has 2 cells; the header has 3"):
        read_table(_write_csv(tmp_path / "short.csv", ["val_loss", "a", "b"], [(1, 2, 3), (2, 3)]))


def test_json_arrays_and_ragged_json_lines_are_read_whole(tmp_path):
    rows = _rows()
    array = tmp_path / "models.json"
    array.write_text(json.dumps(rows))
    assert len(read_table(array)) == 6  # not "1 row"
    assert analyze_table(read_table(array), "val_loss", metrics=["nc4"]).metrics["nc4"].n == 6
    ragged = tmp_path / "ragged.jsonl"  # row 0 lacks the metric the others have
    ragged.write_text("".join(json.dumps({k: v for k, v in r.items() if not (i == 0 and k == "nc4")}) + "\n"
                              for i, r in enumerate(rows)))
    with pytest.raises(TableError, match=r"column 'nc4' \(or the loss\) is missing or NaN in row\(s\) 0"):
        analyze_table(read_table(ragged), "val_loss", metrics=["nc4"])
    assert analyze_table(read_table(ragged), "val_loss", metrics=["nc4"], dropna=True).metrics["nc4"].n == 5
    bad = tmp_path / "scalars.json"
    bad.write_text("[1, 2, 3]")
    with pytest.raises(TableError, match="element 1 is a JSON int, not an object"):
        read_table(bad)
