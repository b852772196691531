"""Collapse Lab's bridge to real causal language models: load, stream, collect, train, compare."""

from .analysis import TableAnalysis, TableError, analyze_table, read_table
from .collect import CollectConfig, CollectError, CollectResult, NC4Result, collect_nc4, collect_stats
from .compare import CompareConfig, compare_model
from .corpus import Corpus, CorpusError, token_blocks
from .data import fetch, open_corpus
from .measure import MeasureOptions, measure_folder, measure_series
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
    "MeasureOptions",
    "ModelLoadError",
    "NC4Result",
    "TableAnalysis",
    "TableError",
    "TrainSpec",
    "analyze_table",
    "capture_unembedding_input",
    "collect_nc4",
    "collect_stats",
    "compare_model",
    "corpus_tokenizer",
    "fetch",
    "load_model",
    "measure_folder",
    "measure_series",
    "open_corpus",
    "read_table",
    "token_blocks",
    "train_bpe_tokenizer",
    "train_clm",
]
