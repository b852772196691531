"""Collapse Lab's bridge to real causal language models: load, stream, collect, measure, train, compare,
and the finite contexts of real text with the transformer trained on them.

Names are loaded on first use (PEP 562): ``import lm_bridge`` loads neither torch nor transformers
until a name that needs them is asked for.
"""

from ufm._lazy import lazy_names

# public name -> the module that defines it
_NAMES = {
    "CollectConfig": "collect",
    "CollectError": "collect",
    "CollectResult": "collect",
    "NC4Result": "collect",
    "collect_nc4": "collect",
    "collect_stats": "collect",
    "CompareConfig": "compare",
    "compare_model": "compare",
    "Corpus": "corpus",
    "CorpusError": "corpus",
    "token_blocks": "corpus",
    "fetch": "data",
    "open_corpus": "data",
    "MeasureOptions": "measure",
    "Measurement": "measure",
    "measure_folder": "measure",
    "measure_model": "measure",
    "measure_series": "measure",
    "LoadedModel": "models",
    "ModelLoadError": "models",
    "capture_unembedding_input": "models",
    "load_model": "models",
    "corpus_tokenizer": "tokenizer",
    "train_bpe_tokenizer": "tokenizer",
    "TrainSpec": "train",
    "train_clm": "train",
}

__all__ = sorted(_NAMES)

__getattr__, __dir__ = lazy_names(__name__, _NAMES)
