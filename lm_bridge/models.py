"""Load a causal LM from a local directory and capture the input of its unembedding.

Nothing goes to a model hub: every load is ``local_files_only`` from a directory that must exist.
The features of a token position are the last hidden state as the unembedding (``lm_head``) sees
it — after the final norm — captured by one forward pre-hook that removes itself on exit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

# No process of Collapse Lab may reach a hub, whatever the caller's environment says.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ModelLoadError(ValueError):
    """A model directory that does not exist, is not a causal LM, or does not fit its tokenizer."""


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a transformers causal LM, in eval mode
    tokenizer: object  # its tokenizer (PreTrainedTokenizerBase)
    path: Path
    identity: str  # hash of config + weights' file names and sizes: detects another model on resume

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
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except ValueError as err:
        raise ModelLoadError(
            f"{path} is not a causal language model (config type {type(config).__name__}): {err}"
        ) from err
    except OSError as err:
        raise ModelLoadError(f"{path}: the model weights cannot be read: {err}") from err
    if model.get_output_embeddings() is None:
        raise ModelLoadError(f"{path}: the model has no output embeddings (unembedding) to measure")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError) as err:
        raise ModelLoadError(f"{path}: no tokenizer could be loaded from the directory: {err}") from err
    loaded = LoadedModel(model.to(device).eval(), tokenizer, path, model_identity(path))
    if len(tokenizer) > loaded.vocab_size:
        raise ModelLoadError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens but the unembedding only "
            f"{loaded.vocab_size} rows; they do not belong together"
        )
    return loaded


def quiet_transformers() -> None:
    """No per-file progress bars from transformers: ours report tokens/s instead."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def model_identity(path: Path) -> str:
    """A short hash of the config and the weight files' names and sizes (cheap, no weights read)."""
    h = hashlib.sha256()
    h.update(json.dumps(json.loads((path / "config.json").read_text()), sort_keys=True).encode())
    for f in sorted(path.iterdir()):
        if f.suffix in (".safetensors", ".bin") and f.is_file():
            h.update(f"{f.name}:{f.stat().st_size}".encode())
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
