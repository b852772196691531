"""Word-level finite-context data (lm_bridge.words): a toy text with a known answer, tags, refusals."""

import math
import re

import numpy as np
import pytest

from lm_bridge.corpus import CorpusError
from lm_bridge.words import coarse_tag, read_tagged, word_contexts

# "a b" is followed by c twice and by d once; "b c" by a twice; every other bigram context once.
TEXT = ["a b c a b c", "a b d", "x a b"]


def sentences(lines):
    return [[(w, None) for w in line.split()] for line in lines]


def test_contexts_counts_and_entropy_by_hand():
    wc = word_contexts(sentences(TEXT), vocab_size=4, context_length=2, min_count=2, unknown="drop")
    assert wc.words == ["a", "b", "c", "d"]  # by frequency: a 5, b 4, c 2, d 1 (x dropped)
    # Windows of 3 in "a b c a b c", "a b d", "a b" (x dropped): (a b)->c, (b c)->a, (c a)->b, (a b)->c, (a b)->d.
    texts = [wc.text(j) for j in range(wc.targets.num_contexts)]
    assert texts == ["a b"]  # the only context seen >= 2 times
    assert wc.counts.tolist() == [3]
    P = wc.targets.dense()
    np.testing.assert_allclose(P[:, 0], [0, 0, 2 / 3, 1 / 3])
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert wc.targets.entropy == pytest.approx(h)
    d = wc.describe()
    assert (d["m"], d["V"], d["context_length"], d["occurrences"]) == (1, 4, 2, 3) and wc.pos is None


def test_unknown_words_map_to_one_token():
    wc = word_contexts(sentences(TEXT), vocab_size=3, context_length=1, min_count=1, unknown="map")
    assert wc.words == ["a", "b", "<unk>"]
    # <unk> stands for c, d and x: "a b U a b U", "a b U", "U a b" (a sentence end is no token).
    texts = {wc.text(j): j for j in range(wc.targets.num_contexts)}
    assert set(texts) == {"a", "b", "<unk>"}
    P = wc.targets.dense()
    np.testing.assert_allclose(P[:, texts["a"]], [0, 1, 0])  # a is always followed by b
    np.testing.assert_allclose(P[:, texts["b"]], [0, 0, 1])  # b -> c, c, d: all <unk>
    np.testing.assert_allclose(P[:, texts["<unk>"]], [1, 0, 0])  # c -> a, x -> a
    assert wc.counts[texts["a"]] == 4 and wc.counts[texts["b"]] == 3 and wc.counts[texts["<unk>"]] == 2
    np.testing.assert_allclose(wc.targets.pi, wc.counts / wc.counts.sum())


def test_tagged_text_gives_each_word_its_part_of_speech(tmp_path):
    (tmp_path / "a.txt").write_text("The/at dog/nn ran/vbd ./.\nThe/at cat/nn-tl ran/vbd fast/rb ./.\nA/at dog/nn saw/vbd the/at cat/nn ./.\n")
    sents = read_tagged(tmp_path)
    assert sents[0] == [("the", "determiner"), ("dog", "noun"), ("ran", "verb"), (".", "punctuation")]
    wc = word_contexts(sents, vocab_size=6, context_length=1, min_count=1)
    assert dict(zip(wc.words, wc.pos))["cat"] == "noun" and dict(zip(wc.words, wc.pos))["the"] == "determiner"


@pytest.mark.parametrize("tag,coarse", [("nn-tl", "noun"), ("np$", "noun"), ("vbd", "verb"), ("md", "verb"),
                                        ("jj", "adjective"), ("pps", "pronoun"), ("at", "determiner"),
                                        ("in", "preposition"), ("cc", "conjunction"), (".", "punctuation"),
                                        ("uh", "other")])
def test_coarse_tags(tag, coarse):
    assert coarse_tag(tag) == coarse


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="unknown must be 'drop' or 'map'"):
        word_contexts(sentences(TEXT), unknown="keep")
    with pytest.raises(ValueError, match="vocab_size=50 needs at least 50 distinct words; the text has 5"):
        word_contexts(sentences(TEXT), vocab_size=50)
    with pytest.raises(ValueError, match="no context occurs at least min_count=9"):
        word_contexts(sentences(TEXT), vocab_size=4, context_length=1, min_count=9)
    with pytest.raises(CorpusError, match="no .txt files"):
        read_tagged(tmp_path)
    (tmp_path / "plain.txt").write_text("no tags here at all\n")
    with pytest.raises(CorpusError, match="no word/tag tokens"):
        read_tagged(tmp_path)


@pytest.mark.parametrize("options, match", [
    (dict(vocab_size=0), "vocab_size must be an integer >= 2, got 0"),
    (dict(vocab_size=1), "vocab_size must be an integer >= 2, got 1"),
    (dict(vocab_size=-5), "vocab_size must be an integer >= 2, got -5"),
    (dict(vocab_size=2.5), "vocab_size must be an integer >= 2, got 2.5"),
    (dict(vocab_size=2, unknown="map"), "vocab_size must be an integer >= 3, got 2"),
    (dict(context_length=-1), "context_length must be an integer >= 1, got -1"),
    (dict(context_length=1.5), "context_length must be an integer >= 1, got 1.5"),
    (dict(min_count=0), "min_count must be an integer >= 1, got 0"),
])
def test_sizes_out_of_range_are_named(options, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        word_contexts(sentences(TEXT), **{"vocab_size": 4, "context_length": 1, "min_count": 1, **options})


def test_untagged_sentences_are_named():
    with pytest.raises(ValueError, match=r"sentence 0 must be a list of \(word, tag or None\) pairs.*'the cat sat'"):
        word_contexts(["the cat sat", "the dog sat"], vocab_size=2)
    with pytest.raises(ValueError, match="sentence 1 must be a list of"):
        word_contexts([[("the", None), ("cat", None)], ["the", "dog"]], vocab_size=2)


def test_every_context_occurs_as_consecutive_words_of_the_text():
    """A window that holds a word outside the vocabulary is not formed (unknown="drop"): in
    "p q z p q r" with z rare, (q, p) -> q never occurs and is not a context; splicing made it one."""
    text = ["p q z p q r", "p q r p q r", "r p q z"]
    kept = word_contexts(sentences(text), vocab_size=3, context_length=2, min_count=1)
    assert {kept.text(j) for j in range(kept.targets.num_contexts)} == {"p q", "q r", "r p"}
    spliced = word_contexts(sentences(text), vocab_size=3, context_length=2, min_count=1, unknown="splice")
    assert "q p" in {spliced.text(j) for j in range(spliced.targets.num_contexts)}
    # Every kept (context, next word) is a run of consecutive words of some sentence.
    P = kept.targets.dense()
    for j in range(kept.targets.num_contexts):
        for z in np.flatnonzero(P[:, j]):
            run = f" {kept.text(j)} {kept.words[z]} "
            assert any(run in f" {line} " for line in text), run


def test_consecutive_contexts_on_a_random_text():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(12)]
    text = [" ".join(rng.choice(words, size=12, p=np.r_[np.full(6, 0.15), np.full(6, 0.1 / 6)])) for _ in range(60)]
    data = word_contexts(sentences(text), vocab_size=6, context_length=3, min_count=1)
    padded = [f" {line} " for line in text]
    for j in range(data.targets.num_contexts):
        assert any(f" {data.text(j)} " in line for line in padded)
    # Counts are the occurrences of the window with an in-vocabulary next word.
    j = int(np.argmax(data.counts))
    vocab = set(data.words)
    want = sum(1 for line in text for i, ws in enumerate([line.split()]) for k in range(3, len(ws))
               if " ".join(ws[k - 3:k]) == data.text(j) and ws[k] in vocab and all(w in vocab for w in ws[k - 3:k]))
    assert data.counts[j] == want
