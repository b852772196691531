"""Word-level finite-context data: the V most frequent words of a corpus, every context of n words that
occurs at least t times, and its empirical next-word distribution (Zhao et al., COLM 2024, trained and
measured on "simplified TinyStories" built this way), with each word's part of speech where the
corpus is tagged (Brown).

Sentences are lower-cased and read one per line; a context never crosses a sentence boundary. Words
outside the vocabulary end every window they fall in (``unknown="drop"``, the default: each context
is n consecutive in-vocabulary words of the text followed by an in-vocabulary word, so every context
occurred), or are mapped to one token ``<unk>`` (``unknown="map"``, the last id), or are cut out of
the sentence before the windows slide (``unknown="splice"``, earlier versions' "drop": it joins words
that were never adjacent, e.g. "the of the ,", and on Brown at V = 100, n = 4 most contexts never
occur in the text; kept only to reproduce those runs).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ufm.validate import check_positive_int
from ufm.targets import NTPTargets, from_transitions

from .corpus import CorpusError

UNK = "<unk>"

# Brown's 87 tags folded into 12 coarse parts of speech (Francis & Kucera's tag set; the suffixes
# -tl, -hl, -nc, -fw and the possessive $ are dropped first, contractions keep their first tag).
_COARSE = [
    ("noun", r"nn|nns|np|nps|nr|nrs"),
    ("verb", r"vb|vbd|vbg|vbn|vbz|be|bed|bedz|beg|bem|ben|ber|bez|do|dod|doz|hv|hvd|hvg|hvn|hvz|md"),
    ("adjective", r"jj|jjr|jjs|jjt|od|cd"),
    ("adverb", r"rb|rbr|rbt|rn|rp|ql|qlp|wrb"),
    ("pronoun", r"pp\$?|pp\$\$|ppl|ppls|ppo|ppss|pps|pn|wps|wpo|ex"),
    ("determiner", r"at|ap|abn|abx|dt|dti|dts|dtx|wdt|abl"),
    ("preposition", r"in|to"),
    ("conjunction", r"cc|cs"),
    ("punctuation", r"[.,:;()'`\-]+|--"),
]
_COARSE_RE = [(name, re.compile(rf"(?:{pattern})")) for name, pattern in _COARSE]


def coarse_tag(tag: str) -> str:
    """A Brown tag's coarse part of speech ("other" when none applies): 'nn-tl' -> 'noun'."""
    base = re.split(r"[-+*]", tag.lower(), maxsplit=1)[0] or tag
    base = base.rstrip("$") or base
    for name, pattern in _COARSE_RE:
        if pattern.fullmatch(base):
            return name
    return "other"


def read_tagged(folder: str | Path) -> list[list[tuple[str, str]]]:
    """Sentences of (word, coarse tag) from ``word/tag`` text files (one sentence a line), words lower-cased."""
    files = sorted(Path(folder).glob("*.txt"))
    if not files:
        raise CorpusError(f"{folder} holds no .txt files of word/tag text")
    sentences = []
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            pairs = [tok.rsplit("/", 1) for tok in line.split() if "/" in tok[1:]]
            if pairs:
                sentences.append([(w.lower(), coarse_tag(t)) for w, t in pairs])
    if not sentences:
        raise CorpusError(f"{folder} holds no word/tag tokens: is it a tagged corpus?")
    return sentences


@dataclass(frozen=True)
class WordContexts:
    """NTP targets over words, with what each column and row means."""

    targets: NTPTargets  # pi (m,), P (V, m): contexts and their next-word distributions
    words: list[str]  # (V,) the vocabulary, most frequent first (``<unk>`` last when mapped)
    contexts: np.ndarray  # (m, n) the word ids of each context
    counts: np.ndarray  # (m,) occurrences of each context
    pos: list[str] | None  # (V,) each word's most frequent coarse part of speech, if tagged

    def describe(self) -> dict:
        t = self.targets
        groups = t.support_groups()
        return dict(m=t.num_contexts, V=t.vocab_size, context_length=int(self.contexts.shape[1]),
                    entropy=t.entropy, occurrences=int(self.counts.sum()), support_patterns=len(groups),
                    shared_patterns=sum(len(g) > 1 for g in groups),
                    contexts_in_shared_patterns=sum(len(g) for g in groups if len(g) > 1),
                    mean_support=float(t.support_sizes.mean()))

    def text(self, j: int) -> str:
        return " ".join(self.words[i] for i in self.contexts[j])


def _word_tag_pairs(sentence, index: int) -> list[tuple[str, str | None]]:
    """One sentence as (word, tag or None) pairs, refusing plain strings (a common slip: a sentence
    of words unpacks its first word as a (word, tag) pair)."""
    if isinstance(sentence, str) or not all(isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str)
                                            for p in sentence):
        raise ValueError(f"sentence {index} must be a list of (word, tag or None) pairs, e.g. "
                         f"[('the', None), ('cat', None)], got {str(sentence)[:60]!r}")
    return [(w, t) for w, t in sentence]


def word_contexts(sentences, *, vocab_size: int = 100, context_length: int = 5, min_count: int = 5,
                  unknown: str = "drop") -> WordContexts:
    """The finite-context NTP data of ``sentences`` (lists of (word, tag or None)): see the module doc."""
    if unknown not in ("drop", "map", "splice"):
        raise ValueError(f"unknown must be 'drop' or 'map' (or 'splice', earlier versions' drop), got {unknown!r}")
    check_positive_int(vocab_size, "vocab_size", minimum=2 + (unknown == "map"))
    check_positive_int(context_length, "context_length")
    check_positive_int(min_count, "min_count")
    sentences = [_word_tag_pairs(s, i) for i, s in enumerate(sentences)]
    freq = Counter(w for s in sentences for w, _ in s)
    size = vocab_size - (unknown == "map")
    if len(freq) < size:
        raise ValueError(f"vocab_size={vocab_size} needs at least {size} distinct words; the text has {len(freq)}")
    words = [w for w, _ in freq.most_common(size)] + ([UNK] if unknown == "map" else [])
    ids = {w: i for i, w in enumerate(words)}
    tags: dict[str, Counter] = {w: Counter() for w in words}
    ctx, nxt = [], []
    for s in sentences:
        if unknown == "map":
            seq = [ids.get(w, len(words) - 1) for w, _ in s]
        elif unknown == "splice":
            seq = [ids[w] for w, _ in s if w in ids]
        else:
            seq = [ids.get(w, -1) for w, _ in s]  # -1: a word outside the vocabulary
        for w, tag in s:
            if tag is not None and w in tags:
                tags[w][tag] += 1
        for i in range(context_length, len(seq)):
            window = seq[i - context_length:i + 1]
            if -1 not in window:  # only windows of consecutive in-vocabulary words
                ctx.append(tuple(window[:-1]))
                nxt.append(window[-1])
    if not ctx:
        raise ValueError(f"no sentence is longer than context_length={context_length} words")
    targets, kept = from_transitions(ctx, nxt, len(words), min_count=min_count)
    occurrences = Counter(ctx)
    counts = np.array([occurrences[c] for c in kept], dtype=np.int64)
    pos = [tags[w].most_common(1)[0][0] if tags[w] else "other" for w in words] if any(tags.values()) else None
    return WordContexts(targets, words, np.array(kept, dtype=np.int64).reshape(len(kept), context_length), counts, pos)
