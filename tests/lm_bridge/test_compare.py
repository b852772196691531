"""lm_bridge.compare: a model next to the UFM of the same text, against a direct computation."""

import numpy as np
import pytest

from lm_bridge.compare import CompareConfig, compare_model
from lm_bridge.corpus import Corpus
from lm_bridge.models import load_model


def test_compare_report_on_a_tiny_model(tiny_models, tiny_corpus, tmp_path):
    loaded = load_model(tiny_models["gpt2"])
    config = CompareConfig(min_count=2, max_contexts=30, block_size=32, steps=200, heatmap_size=10)
    summary = compare_model(loaded, Corpus.open(tiny_corpus), config, tmp_path, device="cpu", progress=False)
    report = (tmp_path / "report.md").read_text()
    assert "| NC1 Tr(S_W S_B^+)/K |" in report and "![cosine maps](cosine_maps.png)" in report
    assert (tmp_path / "cosine_maps.png").stat().st_size > 5000
    assert summary["targets"]["num_contexts"] == 30
    assert summary["metrics"]["model"]["num_classes_kept"] >= 2
    assert np.isfinite(summary["cosine_map_correlation"]["words_ufm_vs_s_tilde"])
    assert summary["subspace_ratio"]["theory_s_tilde"] < 1e-8 or np.isnan(summary["subspace_ratio"]["theory_s_tilde"])
    with pytest.raises(ValueError, match=r"UFM dimension asked \(8\) differs from the model's width \(16\)"):
        compare_model(loaded, Corpus.open(tiny_corpus), CompareConfig(dim=8), tmp_path / "x", device="cpu")


def test_compare_context_means_equal_a_direct_computation(tiny_models, tiny_corpus, tmp_path):
    """h_j of the real model is the mean last hidden state at the last token of each occurrence of
    context j; recomputed here block by block from output_hidden_states (one position late fails)."""
    import torch
    from safetensors.torch import load_file

    from lm_bridge.corpus import token_blocks

    loaded = load_model(tiny_models["gpt2"])
    config = CompareConfig(min_count=2, max_contexts=30, block_size=32, steps=50, heatmap_size=10)
    compare_model(loaded, Corpus.open(tiny_corpus), config, tmp_path, device="cpu", progress=False)
    geometry = load_file(tmp_path / "geometry.safetensors")
    contexts = [tuple(c) for c in geometry["contexts"].tolist()]
    sums = {c: torch.zeros(16, dtype=torch.float64) for c in contexts}
    counts = dict.fromkeys(contexts, 0)
    with torch.no_grad():
        for block in token_blocks(Corpus.open(tiny_corpus), loaded.tokenizer, 32):
            hidden = loaded.model(input_ids=torch.tensor([block]), output_hidden_states=True).hidden_states[-1][0]
            for t in range(1, len(block) - 1):  # context = tokens t-1, t; it has a next token
                c = (block[t - 1], block[t])
                if c in sums:
                    sums[c] += hidden[t].double()
                    counts[c] += 1
    want = torch.stack([sums[c] / counts[c] for c in contexts], 1)  # (d, m)
    torch.testing.assert_close(geometry["h_model"], want, rtol=1e-5, atol=1e-6)
