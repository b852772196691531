"""A corpus as a deterministic stream of token blocks.

Token accounting (documented in the README; outside checks rely on it): each text file is one
document; its ids are ``tokenizer(text, add_special_tokens=False).input_ids`` followed by the EOS id
when the tokenizer has one. Documents are concatenated in sorted path order and cut into
consecutive blocks of ``block_size`` tokens; the last block may be shorter and is kept if it has
at least 2 tokens. Within a block, the hidden state at position t is labelled with token t+1.

Files are read one at a time, so a corpus larger than memory streams. A ``datasets`` dataset saved
to disk (``save_to_disk``) is read row by row from its "text" column, each row a document.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".text", ".md")


class CorpusError(ValueError):
    """An empty corpus, one shorter than a block, a path that holds no text, or a binary file."""


def _decode(data: bytes, name: str, errors: str) -> str:
    """UTF-8 text of a document. NUL bytes mean a binary file (refused); undecodable bytes are an
    error naming how many, unless ``errors`` is "replace" (then each becomes U+FFFD)."""
    if b"\x00" in data:
        raise CorpusError(f"{name} looks like a binary file (it holds NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        if errors == "replace":
            return text
        bad = text.count("\ufffd") - data.count("\ufffd".encode())
        raise CorpusError(f"{name} holds {bad} byte sequence(s) that are not UTF-8; pass errors='replace' "
                          "(--errors replace) to read them as U+FFFD") from None


@dataclass(frozen=True)
class Corpus:
    """Where the documents are: text files (sorted), or a saved ``datasets`` dataset."""

    root: Path
    files: tuple[Path, ...]  # sorted; empty for a saved dataset
    is_dataset: bool = False
    errors: str = "strict"  # undecodable bytes: "strict" (an error) or "replace" (U+FFFD)

    @classmethod
    def open(cls, path: str | os.PathLike, *, errors: str = "strict") -> Corpus:
        if errors not in ("strict", "replace"):
            raise CorpusError(f"errors must be 'strict' or 'replace', got {errors!r}")
        root = Path(path)
        if not root.exists():
            raise CorpusError(f"corpus path {root} does not exist")
        if root.is_file():
            return cls(root, (root,), errors=errors)
        if (root / "dataset_info.json").is_file() or (root / "state.json").is_file():
            return cls(root, (), is_dataset=True, errors=errors)
        files = tuple(sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES))
        if not files:
            raise CorpusError(f"corpus directory {root} holds no text files ({', '.join(TEXT_SUFFIXES)})")
        return cls(root, files, errors=errors)

    def split(self, every: int = 10) -> tuple[Corpus, Corpus]:
        """(train, validation) by document: every ``every``-th file in sorted order is held out."""
        if self.is_dataset or len(self.files) < 2:
            raise CorpusError(f"{self.root}: a train / validation split needs at least 2 text files")
        val = tuple(f for i, f in enumerate(self.files) if i % every == every - 1) or self.files[-1:]
        return replace(self, files=tuple(f for f in self.files if f not in val)), replace(self, files=val)

    def documents(self) -> Iterator[str]:
        if self.is_dataset:
            try:
                from datasets import load_from_disk
            except ImportError as err:
                raise CorpusError(f"{self.root} is a saved `datasets` dataset; install `datasets` to read it") from err
            data = load_from_disk(str(self.root))
            if "text" not in data.column_names:
                raise CorpusError(f"the dataset at {self.root} has no 'text' column: {data.column_names}")
            yield from (row["text"] for row in data)
            return
        for f in self.files:
            yield _decode(f.read_bytes(), str(f), self.errors)

    def identity(self) -> str:
        """sha256 of the documents' names and contents: detects another corpus on resume. Every
        file is read once here, before a pass, so a binary or undecodable file stops the run early."""
        h = hashlib.sha256()
        if self.is_dataset:
            for name in sorted(p.name for p in self.root.iterdir()):
                h.update(f"{name}:{(self.root / name).stat().st_size}".encode())
            return h.hexdigest()[:16]
        for f in self.files:
            h.update(str(f.relative_to(self.root) if f != self.root else f.name).encode())
            data = f.read_bytes()
            _decode(data, str(f), self.errors)
            h.update(data)
        return h.hexdigest()[:16]


def document_ids(text: str, tokenizer) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def token_blocks(corpus: Corpus, tokenizer, block_size: int, *, max_tokens: int | None = None) -> Iterator[list[int]]:
    """Consecutive blocks of ``block_size`` ids (the last may be shorter, >= 2 ids), streamed.

    ``max_tokens`` stops the stream after that many ids (the block it cuts short is kept if it has
    at least 2). Raises CorpusError for an empty corpus or one shorter than one block.
    """
    if block_size < 2:
        raise CorpusError(f"block_size must be at least 2, got {block_size}")
    budget = max_tokens if max_tokens is not None else float("inf")
    buffer: list[int] = []
    emitted = 0
    for text in corpus.documents():
        buffer.extend(document_ids(text, tokenizer))
        while len(buffer) >= block_size and emitted + block_size <= budget:
            yield buffer[:block_size]
            del buffer[:block_size]
            emitted += block_size
        if emitted + block_size > budget:
            break
    seen = emitted + len(buffer)
    if seen == 0:
        raise CorpusError(f"the corpus at {corpus.root} is empty (no tokens)")
    if emitted == 0 and max_tokens is None:
        raise CorpusError(
            f"the corpus at {corpus.root} has {len(buffer)} tokens, fewer than one block of {block_size}"
        )
    tail = buffer[: max(0, int(min(budget - emitted, len(buffer))))]
    if len(tail) >= 2:
        yield tail
