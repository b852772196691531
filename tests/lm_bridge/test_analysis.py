"""`collapse analyze`: Wu & Papyan's published table reproduces their figures; bad tables are refused."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from lm_bridge.analysis import TableError, analyze_table, permutation_p, read_table
from experiments.cli import main

LC_TABLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "lc-2024_05_18.csv"
# R^2 against validation loss in Wu & Papyan (NeurIPS 2024), as the data README quotes them.
PUBLISHED_R2 = {"cdnv_mean": 0.916, "matches": 0.891, "interfere_std": 0.875, "log_norm_cov": 0.865,
                "log_dist_std": 0.858, "unc3_cov": 0.693, "sims_mean": 0.312}
SEED_GROUP = "02x0768_01d"  # the 20 seed runs 02x0768_01dNN@0 and their base run 02x0768_01d@0


@pytest.fixture(scope="module")
def lc_analysis(tmp_path_factory):
    if not LC_TABLE.is_file():
        pytest.fail(f"Wu & Papyan's table is expected at {LC_TABLE} (shared/data beside the checkout)")
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
