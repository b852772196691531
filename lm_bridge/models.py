"""Load a causal LM from a local directory and capture the input of its unembedding.

Nothing goes to a model hub: every load is ``local_files_only`` from a directory that must exist.
The features of a token position are the last hidden state as the unembedding (``lm_head``) sees
it — after the final norm — captured by one forward pre-hook that removes itself on exit.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

# No process of Collapse Lab may reach a hub, whatever the caller's environment says.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ModelLoadError(ValueError):
    """A model directory that does not exist, is not a causal LM, or does not fit its tokenizer."""


def require_model_dirs(paths) -> None:
    """Refuse, naming the fix, a folder that is not a model directory (no config.json); when it holds
    model folders (a training run's epochs), say which."""
    for path in map(Path, paths):
        if not (path / "config.json").is_file() and path.is_dir():
            subs = sorted(p.name for p in path.iterdir() if (p / "config.json").is_file())
            hint = f"; it holds the model folders {', '.join(subs)} (e.g. {path / subs[-1]})" if subs else ""
            raise ModelLoadError(f"{path} is not a model directory (no config.json){hint}")


# Files that make a tokenizer; a directory with none of them gets no tokenizer (transformers would
# otherwise build a near-empty one and measure nonsense).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "vocab.txt", "spiece.model")
# Files whose content is the model's identity: the config, the weights and the tokenizer.
IDENTITY_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")
# Encoder-only families that transformers would load as a "causal LM" with a decoder flag off.
ENCODER_ONLY = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta",
                "mpnet", "camembert", "ernie", "megatron-bert", "modernbert"}


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a transformers causal LM, in eval mode
    tokenizer: object  # its tokenizer (PreTrainedTokenizerBase)
    path: Path
    identity: str  # sha256 of the content of the config, weights and tokenizer files
    identity_seconds: float = 0.0  # what hashing them cost

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self.unembedding.weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.unembedding.weight.shape[0]

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model takes (max_position_embeddings / n_positions), if stated."""
        config = self.model.config
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @functools.cached_property
    def hidden_state_widths(self) -> tuple[int, ...]:
        """The width of every entry of output_hidden_states, read off one forward pass of two tokens:
        they need not equal the unembedding's input (OPT's project_out maps the last state from the
        hidden size to word_embed_proj_dim, while the embeddings and blocks keep the hidden size)."""
        ids = torch.zeros((1, 2), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            states = self.model(input_ids=ids, output_hidden_states=True).hidden_states
        return tuple(int(h.shape[-1]) for h in states)

    @property
    def num_hidden_states(self) -> int:
        """Entries of output_hidden_states: the embeddings and one per block."""
        return int(self.model.config.num_hidden_layers) + 1

    @property
    def unembedding(self) -> torch.nn.Module:
        return self.model.get_output_embeddings()

    def classifier(self) -> torch.Tensor:
        """W (V, D): the rows of the unembedding, float64."""
        return self.unembedding.weight.detach().to(torch.float64)

    def classifier_bias(self) -> torch.Tensor | None:
        bias = getattr(self.unembedding, "bias", None)
        return None if bias is None else bias.detach().to(torch.float64)


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> LoadedModel:
    """A causal LM and its tokenizer from ``path`` (a Hugging Face model directory)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError, KeyError) as err:
        raise ModelLoadError(f"{path} holds no readable model config: {err}") from err
    _refuse_non_causal(path, config)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the model's "
                             "tokenizer beside it (tokenizer.save_pretrained(DIR))")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                           output_loading_info=True)
    except ValueError as err:
        raise ModelLoadError(
            f"{path} is not a causal language model (config type {type(config).__name__}): {err}"
        ) from err
    except (OSError, SafetensorError) as err:
        raise ModelLoadError(f"{path}: the model weights cannot be read (a truncated, empty or foreign weights "
                             f"file?): {err}") from err
    head = model.get_output_embeddings()
    if head is None:
        raise ModelLoadError(f"{path}: the model has no output embeddings (unembedding) to measure")
    head_keys = {name for name, p in model.named_parameters() if any(p is q for q in head.parameters())}
    fresh = sorted(set(info.get("missing_keys", ())) & head_keys)
    if fresh:
        raise ModelLoadError(f"{path}: the checkpoint has no {', '.join(fresh)}: the unembedding would be "
                             "freshly initialized (random), and its geometry meaningless; use a complete checkpoint")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError) as err:
        raise ModelLoadError(f"{path}: no tokenizer could be loaded from the directory: {err}") from err
    start = time.perf_counter()
    identity = model_identity(path)
    loaded = LoadedModel(model.to(device).eval(), tokenizer, path, identity, time.perf_counter() - start)
    if len(tokenizer) > loaded.vocab_size:
        raise ModelLoadError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens but the unembedding only "
            f"{loaded.vocab_size} rows; they do not belong together"
        )
    if len(tokenizer) < loaded.vocab_size // 2:
        raise ModelLoadError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens, less than half the unembedding's "
            f"{loaded.vocab_size} rows; it is another model's tokenizer (padding rows are never that many)"
        )
    return loaded


def _refuse_non_causal(path: Path, config) -> None:
    """Encoder-only and masked-LM checkpoints load as 'causal LMs' in transformers (BERT becomes a
    BertLMHeadModel with a random decoder flag): refuse them, saying what was found."""
    archs = list(getattr(config, "architectures", None) or [])
    causal = [a for a in archs if a.endswith("ForCausalLM") or a.endswith("LMHeadModel")]
    if archs and not causal:
        raise ModelLoadError(f"{path} is not a causal language model: its architecture is {', '.join(archs)} "
                             f"(model type {config.model_type!r}); Collapse Lab measures next-token predictors")
    if config.model_type in ENCODER_ONLY and not getattr(config, "is_decoder", False):
        raise ModelLoadError(f"{path} holds an encoder-only model (type {config.model_type!r}), not a causal "
                             "language model; Collapse Lab measures next-token predictors")


def quiet_transformers() -> None:
    """No per-file progress bars from transformers: ours report tokens/s instead."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def model_identity(path: Path) -> str:
    """sha256 of the content of every config, weight and tokenizer file of the directory (names and
    bytes, streamed): two models of one config with other weights, or another tokenizer, differ."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix in IDENTITY_SUFFIXES and f.is_file() and f.name != "training.json":
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def tokenizer_identity(path: Path) -> str:
    """sha256 of a model directory's tokenizer files (names and bytes): checkpoints that split text
    into the same tokens share it."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = path / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def capture_unembedding_input(model: torch.nn.Module):
    """Yield a dict whose "hidden" is set, at each forward, to the unembedding's input (B, T, D).

    One pre-hook, removed on exit (also on error); only the latest batch is held.
    """
    store: dict[str, torch.Tensor] = {}

    def hook(_module, args):
        store["hidden"] = args[0].detach()

    handle = model.get_output_embeddings().register_forward_pre_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
