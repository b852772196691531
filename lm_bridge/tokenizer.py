"""Byte-level BPE tokenizers trained on a corpus with `tokenizers`, wrapped for `transformers`.

(transformers 5.x builds an empty GPT2Tokenizer from vocab/merges files without a word of warning,
so tokenizers are built with `tokenizers` and wrapped in PreTrainedTokenizerFast.)
"""

from __future__ import annotations

from collections.abc import Iterable

EOS = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2):
    """A byte-level BPE tokenizer with an EOS token, trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257:
        raise ValueError(f"a byte-level BPE needs vocab_size >= 257 (256 bytes + EOS), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def corpus_tokenizer(corpus, vocab_size: int):
    """The BPE tokenizer of ``corpus`` (a lm_bridge.corpus.Corpus), trained once and cached."""
    from transformers import PreTrainedTokenizerFast

    from ufm.io import atomic_directory

    from .data import cache_dir

    target = cache_dir() / "tokenizers" / f"{corpus.identity()}-v{vocab_size}"
    if target.is_dir():
        return PreTrainedTokenizerFast.from_pretrained(target, local_files_only=True)
    tokenizer = train_bpe_tokenizer(corpus.documents(), vocab_size)
    with atomic_directory(target) as tmp:  # the whole folder appears at once
        tokenizer.save_pretrained(tmp)
    return tokenizer
