"""Collapse Lab's bridge to real causal language models: load, stream, collect, train, compare."""

from .collect import CollectConfig, CollectError, CollectResult, NC4Result, collect_nc4, collect_stats
from .compare import CompareConfig, compare_model
from .corpus import Corpus, CorpusError, token_blocks
from .data import fetch, open_corpus
from .models import LoadedModel, ModelLoadError, capture_unembedding_input, load_model
from .tokenizer import corpus_tokenizer, train_bpe_tokenizer
from .train import TrainSpec, train_clm

__all__ = [
    "CollectConfig",
    "CollectError",
    "CollectResult",
    "CompareConfig",
    "Corpus",
    "CorpusError",
    "LoadedModel",
    "ModelLoadError",
    "NC4Result",
    "TrainSpec",
    "capture_unembedding_input",
    "collect_nc4",
    "collect_stats",
    "compare_model",
    "corpus_tokenizer",
    "fetch",
    "load_model",
    "open_corpus",
    "token_blocks",
    "train_bpe_tokenizer",
    "train_clm",
]
