"""One pass over a corpus into ClassStats (classes = next tokens), and the NC4 pass on held-out text.

Every position t of every block contributes (last hidden state at t, token t+1) to a
StatsAccumulator on the model's device, in float64; padding never does. Progress is checkpointed
every N blocks (atomically; the checkpoint names the model, corpus and settings, and a resume from a
different one is refused), so a killed run resumes where it stopped and ends with the statistics an
uninterrupted run gives. Under torch.distributed each rank takes blocks i with i % world == rank and
the ranks' accumulators are merged in rank order (the same Chan merge as batches).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ufm import PRESETS, ClassStats, CollapseMetrics, NC4Accumulator, StatsAccumulator, collapse_metrics
from ufm.stats import StatsFileError

from .corpus import Corpus, token_blocks
from .models import LoadedModel, capture_unembedding_input


# Which held-out positions NC4 counts under each metric preset (see collect_nc4).
NC4_POSITIONS = {"lc2024": "kept", "papyan2020": "all"}


class CollectError(ValueError):
    """Bad hidden states, or a checkpoint that belongs to another run."""


@dataclass(frozen=True)
class CollectConfig:
    block_size: int = 512  # tokens per block
    batch_size: int = 8  # blocks per forward pass
    max_tokens: int | None = None  # stop after this many corpus tokens
    checkpoint_every: int = 0  # blocks between checkpoints (0: none)


@dataclass
class CollectResult:
    stats: ClassStats
    tokens: int  # labelled positions accumulated (all ranks)
    blocks: int  # blocks processed (all ranks)
    resumed_blocks: int  # blocks this rank skipped thanks to a checkpoint
    seconds: float


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batches(blocks: Iterable[list[int]], batch_size: int, pad_id: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(ids (B, T), lengths (B,)) right-padded with ``pad_id`` (never labelled, never attended)."""
    it = iter(blocks)
    while chunk := list(itertools.islice(it, batch_size)):
        lengths = torch.tensor([len(b) for b in chunk])
        ids = torch.full((len(chunk), int(lengths.max())), pad_id, dtype=torch.long)
        for i, b in enumerate(chunk):
            ids[i, : len(b)] = torch.tensor(b)
        yield ids, lengths


def labelled_positions(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T-1) mask of positions t with a next token t+1 inside the block."""
    t = torch.arange(ids.shape[1] - 1, device=ids.device)
    return t[None, :] < (lengths.to(ids.device)[:, None] - 1)


def forward_features(loaded: LoadedModel, ids: torch.Tensor, lengths: torch.Tensor, store: dict):
    """Run the model; return (logits (B, T, V), hidden (B, T, D)) for a right-padded batch."""
    dev = loaded.device
    ids = ids.to(dev)
    mask = (torch.arange(ids.shape[1], device=dev)[None, :] < lengths.to(dev)[:, None]).long()
    out = loaded.model(input_ids=ids, attention_mask=mask)
    return out.logits, store["hidden"]


def _rank_blocks(loaded: LoadedModel, corpus: Corpus, config: CollectConfig, rank: int, world: int):
    """This rank's share of the corpus blocks: block i goes to rank i % world."""
    blocks = token_blocks(corpus, loaded.tokenizer, config.block_size, max_tokens=config.max_tokens)
    return (b for i, b in enumerate(blocks) if i % world == rank)


def _load_checkpoint(path: Path, identity: dict, dev) -> tuple[StatsAccumulator, int, int] | None:
    if not path.exists():
        return None
    try:
        saved = ClassStats.load(path, device=dev)
    except StatsFileError as err:
        raise CollectError(f"checkpoint {path} cannot be read ({err}); delete it to start over") from err
    if saved.metadata.get("identity") != identity:
        raise CollectError(
            f"checkpoint {path} belongs to another run (model, corpus or settings differ: "
            f"{saved.metadata.get('identity')} vs {identity}); delete it or choose another output"
        )
    return StatsAccumulator.from_stats(saved), saved.metadata["blocks_done"], saved.metadata["tokens"]


def collect_stats(loaded: LoadedModel, corpus: Corpus, config: CollectConfig = CollectConfig(), *,
                  checkpoint: str | Path | None = None, progress: bool = True) -> CollectResult:
    """ClassStats of (last hidden state, next token) over every labelled position of the corpus."""
    rank, world = _rank_world()
    dev = loaded.device
    acc = StatsAccumulator(loaded.vocab_size, loaded.hidden_size, device=dev)
    blocks_done = tokens = resumed = 0
    corpus_id = corpus.identity()  # hashes every file: once per run
    ckpt = None
    if checkpoint is not None:
        ckpt = Path(checkpoint) if world == 1 else Path(f"{checkpoint}.rank{rank}")
        identity = dict(model=loaded.identity, corpus=corpus_id, block_size=config.block_size,
                        max_tokens=config.max_tokens, rank=rank, world=world)
        found = _load_checkpoint(ckpt, identity, dev)
        if found is not None:
            acc, blocks_done, tokens = found
            resumed = blocks_done
    # A resumed run skips what it already has.
    mine = itertools.islice(_rank_blocks(loaded, corpus, config, rank, world), blocks_done, None)
    start = time.perf_counter()
    bar = tqdm(desc=f"collect (rank {rank})" if world > 1 else "collect", unit="tok", unit_scale=True,
               disable=not progress or rank != 0)
    since_ckpt = 0
    with torch.inference_mode(), capture_unembedding_input(loaded.model) as store:
        for n_batch, (ids, lengths) in enumerate(batches(mine, config.batch_size)):
            _, hidden = forward_features(loaded, ids, lengths, store)
            keep = labelled_positions(ids, lengths)  # (B, T-1), built on the CPU: no device sync
            n_tokens = int(keep.sum())
            keep = keep.to(dev, non_blocking=True)
            try:
                acc.update(hidden[:, :-1][keep], ids[:, 1:].to(dev, non_blocking=True)[keep])
            except ValueError as err:  # the accumulator is unchanged: nothing half-done to undo
                raise CollectError(
                    f"NaN or Inf hidden states in batch {n_batch} (blocks {blocks_done}.."
                    f"{blocks_done + len(lengths) - 1} of this rank): {err}"
                ) from err
            blocks_done += len(lengths)
            tokens += n_tokens
            since_ckpt += len(lengths)
            bar.update(n_tokens)
            if ckpt is not None and config.checkpoint_every and since_ckpt >= config.checkpoint_every:
                _save_checkpoint(acc, ckpt, identity, blocks_done, tokens)
                since_ckpt = 0
    bar.close()
    if ckpt is not None and tokens:
        _save_checkpoint(acc, ckpt, identity, blocks_done, tokens)
    if world > 1:
        acc, blocks_done, tokens = _merge_ranks(acc, blocks_done, tokens, loaded)
    if tokens == 0:
        raise CollectError("no labelled positions were collected (is the corpus empty?)")
    meta = dict(model=str(loaded.path), model_identity=loaded.identity, corpus=str(corpus.root),
                corpus_identity=corpus_id, tokens=tokens, blocks=blocks_done, **asdict(config))
    return CollectResult(acc.compute(metadata=meta), tokens, blocks_done, resumed, time.perf_counter() - start)


def _save_checkpoint(acc: StatsAccumulator, path: Path, identity: dict, blocks_done: int, tokens: int) -> None:
    acc.compute(metadata=dict(identity=identity, blocks_done=blocks_done, tokens=tokens)).save(path)


def _merge_ranks(acc: StatsAccumulator, blocks: int, tokens: int, loaded: LoadedModel):
    """Gather every rank's state and merge in rank order on each rank: all ranks end equal."""
    state = acc.compute().to("cpu") if tokens else None
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (state, blocks, tokens))
    merged = StatsAccumulator(loaded.vocab_size, loaded.hidden_size, device=loaded.device)
    for stats, _, _ in gathered:
        if stats is not None:
            merged.merge(StatsAccumulator.from_stats(stats, device=loaded.device))
    return merged, sum(g[1] for g in gathered), sum(g[2] for g in gathered)


@dataclass
class NC4Result:
    agreement: float  # fraction of counted held-out positions where NCC(h) == argmax logits
    tokens: int  # positions counted
    positions: str = "all"  # "all" labelled positions, or "kept": those whose true next token is kept


def collect_nc4(loaded: LoadedModel, corpus: Corpus, stats: ClassStats, config: CollectConfig = CollectConfig(),
                *, min_count: int = 1, positions: str = "all", progress: bool = True) -> NC4Result:
    """NC4 agreement over the held-out corpus, against the training class means in ``stats``.

    positions "kept" counts only positions whose true next token is a kept class (Wu & Papyan's
    code); "all" counts every labelled position."""
    if positions not in ("all", "kept"):
        raise ValueError(f"NC4 positions must be 'all' or 'kept', got {positions!r}")
    rank, world = _rank_world()
    acc = NC4Accumulator(stats.to(loaded.device), min_count=min_count)
    bar = tqdm(desc="nc4", unit="tok", unit_scale=True, disable=not progress or rank != 0)
    with torch.inference_mode(), capture_unembedding_input(loaded.model) as store:
        for ids, lengths in batches(_rank_blocks(loaded, corpus, config, rank, world), config.batch_size):
            logits, hidden = forward_features(loaded, ids, lengths, store)
            keep = labelled_positions(ids, lengths)  # on the CPU: counting it needs no device sync
            bar.update(int(keep.sum()))
            keep = keep.to(loaded.device)
            labels = ids[:, 1:].to(loaded.device)[keep] if positions == "kept" else None
            acc.update(hidden[:, :-1][keep], logits[:, :-1].argmax(-1)[keep], labels)
    bar.close()
    if world > 1:
        counts = torch.tensor([acc.agree, acc.total], dtype=torch.int64)
        dist.all_reduce(counts)
        acc.agree, acc.total = int(counts[0]), int(counts[1])
    return NC4Result(acc.compute(), acc.total, positions)


@dataclass
class Measurement:
    stats: ClassStats  # of the training text
    metrics: CollapseMetrics  # with the preset's options and the model's classifier
    nc4: NC4Result  # on the held-out text


def measure_model(loaded: LoadedModel, train: Corpus, heldout: Corpus, config: CollectConfig, *,
                  heldout_tokens: int | None = None, preset: str = "lc2024") -> Measurement:
    """Statistics in one pass over ``train``, collapse metrics with a preset, NC4 on ``heldout``."""
    stats = collect_stats(loaded, train, config, progress=False).stats
    metrics = collapse_metrics(stats, loaded.classifier(), **PRESETS[preset])
    nc4_config = config if heldout_tokens is None else replace(config, max_tokens=heldout_tokens)
    nc4 = collect_nc4(loaded, heldout, stats, nc4_config, min_count=metrics.options["min_count"],
                      positions=NC4_POSITIONS.get(preset, "all"), progress=False)
    return Measurement(stats, metrics, nc4)
