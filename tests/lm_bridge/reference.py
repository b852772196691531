"""Naive references for the lm_bridge tests."""

import torch

from lm_bridge.corpus import token_blocks
from ufm import ClassStats, stats_from_features


def reference_stats(loaded, corpus, block_size):
    """Straight from output_hidden_states[-1], one block at a time, no hooks and no padding."""
    feats, labels = [], []
    with torch.no_grad():
        for block in token_blocks(corpus, loaded.tokenizer, block_size):
            ids = torch.tensor([block])
            hidden = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            feats.append(hidden[:-1].double())
            labels.append(ids[0, 1:])
    return stats_from_features(torch.cat(feats), torch.cat(labels), loaded.vocab_size)


def assert_same_stats(a: ClassStats, b: ClassStats, rtol):
    """Equal statistics of the classes that occur (sparse statistics hold only those), with the
    same class ids and label space."""
    a, b = a.compact(), b.compact()
    assert torch.equal(a.ids.cpu(), b.ids.cpu()) and a.label_space == b.label_space
    for name in ("counts", "sample_counts", "means", "var_traces", "within_scatter"):
        x, y = getattr(a, name).double(), getattr(b, name).double()
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol * float(y.abs().max()), msg=name)


def assert_bit_identical(a: ClassStats, b: ClassStats):
    a, b = a.compact(), b.compact()
    assert torch.equal(a.ids.cpu(), b.ids.cpu()) and a.label_space == b.label_space
    for name in ("counts", "sample_counts", "means", "var_traces", "within_scatter"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def direct_layer_stats(loaded, corpus, block_size):
    """Every entry of output_hidden_states, one block at a time, no hooks and no padding."""
    feats, labels = {}, []
    with torch.no_grad():
        for block in token_blocks(corpus, loaded.tokenizer, block_size):
            ids = torch.tensor([block])
            for i, h in enumerate(loaded.model(input_ids=ids, output_hidden_states=True).hidden_states):
                feats.setdefault(i, []).append(h[0, :-1].double())
            labels.append(ids[0, 1:])
    y = torch.cat(labels)
    return {i: stats_from_features(torch.cat(f), y, loaded.vocab_size) for i, f in feats.items()}
