import json

import numpy as np
import pytest

from experiments.cli import main


def run_quick(name, tmp_path) -> dict:
    """One quick run (each experiment runs once in the suite): its config, figures and results."""
    assert main(["experiment", name, "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["experiment"] == name and config["quick"] is True
    assert results["figures"] and all((tmp_path / f).stat().st_size > 5000 for f in results["figures"])
    return results


def test_quick_etf_reaches_the_simplex(tmp_path):
    results = run_quick("etf", tmp_path)
    final = results["final_metrics"]
    assert final["etf_error"] < 1e-6 and final["nc1_trace_ratio"] < 1e-6
    assert results["max_etf_error_after_1000"] < 1e-6 and final["cos_std"] < 1e-6


def test_quick_implicit_bias_shows_what_its_docstring_promises(tmp_path):
    r = run_quick("implicit-bias", tmp_path)
    # ||L_t||_* grows by ~||L_mm||_* per unit ln t, approached from above as t grows.
    assert r["lmm_nuclear"] < r["nuclear_slope"] < 1.5 * r["lmm_nuclear"]
    slopes = [d["slope"] for d in r["decade_slopes"]]
    assert all(a > b for a, b in zip(slopes, slopes[1:])) and slopes[-1] == pytest.approx(r["nuclear_slope"])
    cos, pf, steps = np.array(r["cos_mm"]), np.array(r["pf_dist"]), np.array(r["steps"])
    assert np.all(np.diff(cos[steps >= 100]) > 0) and cos[-1] > 0.85  # rises slowly toward 1 (after a transient)
    assert pf[-1] < 1e-3 * pf[0]  # P_F L_t -> L_in
    late = np.array(r["t_times_gap"])[steps >= steps[-1] / 10]
    assert late.max() < 2 * late.min()  # CE - H ~ c / t
    drift = np.array(r["balance_drift"]) / np.array(r["w_norm"]) ** 2
    assert drift[-1] < 1e-3  # W^T W - H H^T conserved up to the discretization
    # What the slope does not show yet: the intercept ||L_t||_* - ||L_mm||_* ln t still grows; the
    # direction of the whole logits converges (cos from the monitor's mm_dist, checked against numpy in tests/ufm/test_fit.py).
    intercepts = [d["intercept"] for d in r["decade_slopes"]]
    assert all(b > a for a, b in zip(intercepts, intercepts[1:]))
    whole = np.array(r["cos_logits"])
    assert np.all(np.diff(whole[steps >= 100]) > 0) and 0.85 < whole[-1] < 1
    assert [d["cos_logits"] for d in r["decade_slopes"]] == sorted(d["cos_logits"] for d in r["decade_slopes"])


@pytest.mark.slow  # ~35 s
def test_quick_seli_reproduces_minority_collapse(tmp_path):
    r = run_quick("seli", tmp_path)
    ref, sat = r["minority_collapse"], r["minority_collapse_saturating"]
    assert ref["ratios"] == [1, 10, 100] and ref["weight_decay"] == 1e-4
    np.testing.assert_allclose(ref["minority_cos"], [-0.111, 0.026, 0.317], atol=0.05)  # SCIENCE.md 5
    assert max(ref["majority_cos"]) < 0
    assert sat["minority_cos"][-1] > 0.999  # lambda 5e-3: the minority classifiers collapse at R = 100
    assert r["seli_gram_cosine"]["words"] > 0.98 and r["seli_gram_cosine"]["contexts"] > 0.99


def test_quick_subspace_collapse_reports_the_convex_target(tmp_path):
    summary = run_quick("subspace-collapse", tmp_path)["summary"]
    assert summary["subspace_ratio_convex_optimum"] == pytest.approx(0.0344, abs=1e-3)  # lambda 1e-5
    assert summary["subspace_ratio_final"] < 0.5 * summary["subspace_ratio_first"]
    assert summary["subspace_ratio_final"] < summary["subspace_ratio_unprojected"]
    assert summary["corr_h_vs_lmm"] > 0.9


def test_simulate_and_metrics_commands(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--targets", "shared", "--steps", "300", "--device", "cpu", "--out", str(out)]) == 0
    assert "step 300" in capsys.readouterr().out
    assert main(["metrics", str(out / "stats.safetensors"), "--preset", "lc2024"]) == 0
    assert "stats.safetensors" in capsys.readouterr().out


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["experiment", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_text("not statistics")
    assert main(["metrics", str(tmp_path / "junk.safetensors")]) == 2
    assert "not a statistics file" in capsys.readouterr().err


def test_feature_collapse_quick(tmp_path):
    assert main(["experiment", "feature-collapse", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["regimes"]) == {"uniform, no LN", "uniform, LayerNorm", "zipf, no LN", "zipf, LayerNorm"}
    assert results["lmm_synonym_row_spread"] < 1e-6 and len(results["ntp"]) == 4


def test_linguistic_collapse_study_on_a_local_corpus(tmp_path):
    """The experiment runs its grid as a study (collapse study run's code) and analyzes the table."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "the cat sat on a mat while the dog ran to the old red barn and a bird sang".split()
    rng = __import__("numpy").random.default_rng(0)
    for i in range(12):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words, 400)))
    grid = "".join(f"[[train.grid]]\ndepth = 1\nwidth = 16\nheads = 1\nweight_decay = {wd}\nseed = {s}\n"
                   for wd, s in ((0.0, 0), (0.1, 0), (0.0, 1), (0.0, 2)))
    (tmp_path / "study.toml").write_text(
        f'name = "lc-test"\n[data]\ncorpus = "{corpus}"\nvocab_size = 300\n[train]\nepochs = 2\nblock_size = 32\n'
        f"batch_size = 8\nmax_train_tokens = 3000\nmax_val_tokens = 600\n{grid}[measure]\nmax_tokens = 1500\n"
        "heldout_tokens = 600\nfigures = false\n[local]\nworkers = 2\n")
    out = tmp_path / "out"
    assert main(["experiment", "linguistic-collapse", "--study", str(tmp_path / "study.toml"), "--device", "cpu",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_models"] == 8  # (1 arch + 1 weight decay + 2 more seeds) x 2 epochs
    assert set(results["analysis"]) >= {"cdnv_mean", "nc4_agreement", "cos_std", "unc_cov"}
    assert "| metric | R^2 | R^2 (runs) |" in (out / "table.md").read_text()
    assert "3 seeds of 1x16" in (out / "table.md").read_text()
    models = [json.loads(line) for line in (out / "models.jsonl").read_text().splitlines()]
    assert len(models) == 8 and {"run", "epoch", "val_loss", "cdnv_mean"} <= set(models[0])
    assert (out / "study" / "results.csv").is_file()
    # The epochs of one run are grouped: 4 runs of 2 epochs each.
    assert results["analysis"]["cdnv_mean"]["group_n"] == 4


def test_quick_regularization_path_slope_is_the_lmm_nuclear_norm(tmp_path):
    r = run_quick("regularization-path", tmp_path)
    assert r["slope"] == pytest.approx(r["lmm_nuclear_norm"], rel=0.05)  # Zhao et al.: slope -> ||L_mm||_*
    pf = [row["pf_dist"] for row in r["path"]]
    cos = [row["cos_mm"] for row in r["path"]]
    assert all(a > b for a, b in zip(pf, pf[1:])) and all(a < b for a, b in zip(cos[2:], cos[3:]))
    assert all(row["solver"] == "FISTA" and row["duality_gap"] < 1e-8 for row in r["path"])
    assert r["svm_status"] == "optimal"


def test_etf_figure_plots_the_spread_not_the_mean_cosine(tmp_path, monkeypatch):
    """The mean pair cosine is -1/(K-1) at initialization too; the panel must show cos_std."""
    import matplotlib.axes

    plotted = []
    real = matplotlib.axes.Axes.loglog

    def record(self, x, y, *args, **kwargs):
        plotted.append(np.asarray(y, dtype=float))
        return real(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "loglog", record)
    main(["experiment", "etf", "--quick", "--device", "cpu", "--out", str(tmp_path)])
    history = json.loads((tmp_path / "results.json").read_text())["history"][1:]
    cos_std = np.maximum([h["metrics"]["cos_std"] for h in history], 1e-16)
    cos_mean = np.array([h["metrics"]["cos_mean"] for h in history])
    assert any(np.allclose(p, cos_std) for p in plotted)
    assert not any(len(p) == len(cos_mean) and np.allclose(p, cos_mean) for p in plotted)


def test_shipped_study_specs():
    """The experiment's grids are shipped specs: the small one is Wu & Papyan's design in
    miniature (4 architectures, a weight decay on 2, 5 seeds of 2x64); every shipped spec loads."""
    from experiments.study import load_spec
    from experiments.study.spec import SHIPPED

    small = load_spec("linguistic-collapse")
    assert len(small.runs) == 10 and small.measure.preset == "lc2024"
    assert {r["seed"] for r in small.runs if (r["depth"], r["width"]) == (2, 64) and r["weight_decay"] == 0.0} == set(range(5))
    assert {(r["depth"], r["width"]) for r in small.runs if r["weight_decay"] == 0.1} == {(1, 64), (2, 64)}
    names = sorted(p.stem for p in SHIPPED.glob("*.toml"))
    assert names == ["lc-large", "lc-quick", "lc-small", "linguistic-collapse"]
    assert [len(load_spec(n).runs) for n in names] == [48, 5, 4, 10]