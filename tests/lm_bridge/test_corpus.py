"""lm_bridge.corpus: deterministic, disjoint splits; bad and binary text refused by name."""

import pytest

from experiments.cli import main
from lm_bridge.collect import CollectConfig, collect_stats
from lm_bridge.corpus import Corpus, CorpusError, token_blocks
from lm_bridge.models import load_model


def test_bad_corpora(tiny_models, tmp_path):
    tok = load_model(tiny_models["gpt2"]).tokenizer
    with pytest.raises(CorpusError, match="does not exist"):
        Corpus.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no text files"):
        Corpus.open(tmp_path / "empty")
    (tmp_path / "short.txt").write_text("the cat")
    with pytest.raises(CorpusError, match="fewer than one block of 64"):
        list(token_blocks(Corpus.open(tmp_path / "short.txt"), tok, 64))
    (tmp_path / "blank_dir").mkdir()
    (tmp_path / "blank_dir" / "a.txt").write_text("")
    tok.eos_token = None  # without an EOS, an empty file adds no token at all
    assert tok.eos_token_id is None
    with pytest.raises(CorpusError, match="is empty"):
        list(token_blocks(Corpus.open(tmp_path / "blank_dir"), tok, 8))


def test_text_that_is_not_text_is_refused(tiny_models, tmp_path, capsys):
    loaded = load_model(tiny_models["gpt2"])
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "blob.txt").write_bytes(bytes(range(256)) * 50)
    with pytest.raises(CorpusError, match="looks like a binary file"):
        Corpus.open(tmp_path / "bin").identity()
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "a.txt").write_bytes(("caf\xe9 na\xefve " * 20).encode("latin-1"))
    with pytest.raises(CorpusError, match=r"holds 40 byte sequence\(s\) that are not UTF-8; pass errors='replace'"):
        collect_stats(loaded, Corpus.open(tmp_path / "latin"), CollectConfig(block_size=8), progress=False)
    replaced = collect_stats(loaded, Corpus.open(tmp_path / "latin", errors="replace"), CollectConfig(block_size=8),
                             progress=False)
    assert replaced.tokens > 0
    assert main(["measure", "--model", str(tiny_models["gpt2"]), "--corpus", str(tmp_path / "latin"),
                 "--out", str(tmp_path / "o"), "--block-size", "8"]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert main(["measure", "--model", str(tiny_models["gpt2"]), "--corpus", str(tmp_path / "latin"),
                 "--errors", "replace", "--out", str(tmp_path / "o"), "--block-size", "8"]) == 0


def test_corpus_split_is_deterministic_and_disjoint(tmp_path):
    for i in range(25):
        (tmp_path / f"d{i:02d}.txt").write_text(f"document {i}")
    train, val = Corpus.open(tmp_path).split(every=10)
    assert [f.name for f in val.files] == ["d09.txt", "d19.txt"]
    assert len(train.files) == 23 and not set(train.files) & set(val.files)
    with pytest.raises(CorpusError, match="at least 2 text files"):
        Corpus.open(tmp_path / "d00.txt").split()
