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
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ufm import ClassStats, NC4Accumulator, StatsAccumulator
from ufm.stats import StatsFileError, load_accumulators, save_accumulators
from ufm.validate import free_memory, resolve_device
from ufm.threads import threads_for

from .corpus import Corpus, token_blocks
from .models import LoadedModel, capture_unembedding_input


# Which held-out positions NC4 counts under each metric preset (see collect_nc4).
NC4_POSITIONS = {"lc2024": "kept", "papyan2020": "all"}


class CollectError(ValueError):
    """Bad hidden states or settings, a request that cannot fit, or a checkpoint of another run."""


FINAL = "final"  # name of the unembedding-input accumulator in checkpoints
MEMORY_FRACTION = 0.5  # the statistics state may use at most this share of the free memory


@dataclass(frozen=True)
class CollectConfig:
    block_size: int | None = None  # tokens per block; None: the model's maximum positions
    batch_size: int = 8  # blocks per forward pass
    max_tokens: int | None = None  # stop after this many corpus tokens
    checkpoint_every: int = 0  # blocks between checkpoints (0: none)
    layers: tuple[int, ...] = ()  # also these entries of output_hidden_states (0 = embeddings)

    def __post_init__(self) -> None:
        if self.block_size is not None and not (isinstance(self.block_size, int) and self.block_size >= 2):
            raise CollectError(f"block size must be an integer >= 2, got {self.block_size!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise CollectError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if self.max_tokens is not None and not (isinstance(self.max_tokens, int) and self.max_tokens >= 1):
            raise CollectError(f"max tokens must be a positive integer, got {self.max_tokens!r}")
        if not (isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0):
            raise CollectError(f"checkpoint_every must be an integer >= 0, got {self.checkpoint_every!r}")
        if any(not isinstance(i, int) or i < 0 for i in self.layers) or len(set(self.layers)) != len(self.layers):
            raise CollectError(f"layers must be distinct integers >= 0, got {self.layers!r}")


@dataclass
class CollectResult:
    stats: ClassStats  # of the unembedding's input
    tokens: int  # labelled positions accumulated (all ranks)
    blocks: int  # blocks processed (all ranks)
    resumed_blocks: int  # blocks this rank skipped thanks to a checkpoint
    seconds: float
    layers: dict[int, ClassStats] = field(default_factory=dict)  # output_hidden_states index -> stats


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batches(blocks: Iterable[list[int]], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(ids (B, T), lengths (B,)) of up to ``batch_size`` consecutive blocks of one length.

    A batch never mixes lengths, so no position is padded: with right padding, the padded tail of a
    short block is masked out of every sliding attention window (Gemma-2, Mistral), its rows come out
    NaN, and 0 x NaN then reaches the real positions that attend to it. Blocks are all full but the
    corpus's last, which runs alone."""
    chunk: list[list[int]] = []
    for block in blocks:
        if chunk and (len(chunk) == batch_size or len(block) != len(chunk[0])):
            yield torch.tensor(chunk, dtype=torch.long), torch.full((len(chunk),), len(chunk[0]))
            chunk = []
        chunk.append(block)
    if chunk:
        yield torch.tensor(chunk, dtype=torch.long), torch.full((len(chunk),), len(chunk[0]))


def labelled_positions(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T-1) mask of positions t with a next token t+1 inside the block."""
    t = torch.arange(ids.shape[1] - 1, device=ids.device)
    return t[None, :] < (lengths.to(ids.device)[:, None] - 1)


def forward_features(loaded: LoadedModel, ids: torch.Tensor, lengths: torch.Tensor, store: dict,
                     hidden_states: bool = False):
    """Run the model on a right-padded batch; return (logits (B, T, V), unembedding input (B, T, D),
    the output_hidden_states tuple or None)."""
    dev = loaded.device
    ids = ids.to(dev)
    mask = (torch.arange(ids.shape[1], device=dev)[None, :] < lengths.to(dev)[:, None]).long()
    out = loaded.model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden_states)
    return out.logits, store["hidden"], out.hidden_states if hidden_states else None


def resolve_block_size(loaded: LoadedModel, config: CollectConfig) -> int:
    """The configured block size, or the model's maximum positions; more than that is refused."""
    limit = loaded.max_positions
    if config.block_size is None:
        if limit is None:
            raise CollectError(f"{loaded.path}: the model states no maximum positions; give a block size")
        return limit
    if limit is not None and config.block_size > limit:
        raise CollectError(f"block size {config.block_size} exceeds the {limit} positions of {loaded.path}; "
                           f"use a block size of at most {limit} (the default)")
    return config.block_size


def resolve_layers(loaded: LoadedModel, layers: tuple[int, ...]) -> tuple[int, ...]:
    """Validated output_hidden_states indices: 0 (embeddings) to the number of blocks (final)."""
    last = loaded.num_hidden_states - 1
    bad = [i for i in layers if i > last]
    if bad:
        raise CollectError(f"layer(s) {bad} do not exist: {loaded.path} has hidden states 0..{last} "
                           "(0 = embeddings, last = the final hidden state)")
    return tuple(sorted(layers))


def state_bytes(num_classes: int, dim: int) -> int:
    """Bytes of one accumulator's state: means (K, D), weights, counts and M2 (K,), scatter (D, D)."""
    return 8 * (num_classes * dim + 3 * num_classes + dim * dim)


def state_widths(loaded: LoadedModel, layers: tuple[int, ...]) -> dict[str, int]:
    """D of each accumulator: the unembedding's input for the final one, each hidden state's own
    width for the layers (they differ where a projection sits between the last block and the head)."""
    widths = {FINAL: loaded.hidden_size}
    if layers:
        widths |= {layer_name(i): loaded.hidden_state_widths[i] for i in layers}
    return widths


def check_memory(loaded: LoadedModel, widths: dict[str, int]) -> int:
    """Refuse, before the pass, statistics that cannot fit; return their size in bytes."""
    need = sum(state_bytes(loaded.vocab_size, d) for d in widths.values())
    have = free_memory(loaded.device)
    if need > MEMORY_FRACTION * have:
        dims = ", ".join(sorted({str(d) for d in widths.values()}))
        raise CollectError(
            f"{len(widths)} statistics states of K={loaded.vocab_size} x D={dims} float64 need "
            f"{need / 2**30:.2f} GiB, more than {MEMORY_FRACTION:.0%} of the {have / 2**30:.2f} GiB free on "
            f"{loaded.device}; ask for fewer --layers"
        )
    return need


def _rank_blocks(loaded: LoadedModel, corpus: Corpus, config: CollectConfig, block_size: int, rank: int, world: int):
    """This rank's share of the corpus blocks: block i goes to rank i % world."""
    blocks = token_blocks(corpus, loaded.tokenizer, block_size, max_tokens=config.max_tokens)
    return (b for i, b in enumerate(blocks) if i % world == rank)


def layer_name(index: int) -> str:
    """The name of hidden state ``index``'s statistics (in checkpoints, metadata and file names)."""
    return f"layer_{index:02d}"


def _names(layers: tuple[int, ...]) -> list[str]:
    return [FINAL, *map(layer_name, layers)]


def _load_checkpoint(path: Path, identity: dict, dev, names: list[str]):
    if not path.exists():
        return None
    try:
        accs, meta = load_accumulators(path, device=dev)
    except StatsFileError as err:
        raise CollectError(f"checkpoint {path} cannot be read ({err}); delete it to start over") from err
    if meta.get("identity") != identity or sorted(accs) != sorted(names):
        raise CollectError(
            f"checkpoint {path} belongs to another run (model, tokenizer, corpus or settings differ: "
            f"{meta.get('identity')} vs {identity}); delete it or choose another output"
        )
    return accs, meta["blocks_done"], meta["tokens"]


def collect_stats(loaded: LoadedModel, corpus: Corpus, config: CollectConfig = CollectConfig(), *,
                  checkpoint: str | Path | None = None, progress: bool = True) -> CollectResult:
    """ClassStats of (hidden state, next token) over every labelled position of the corpus: of the
    unembedding's input, and of each hidden state in ``config.layers``, from the same forward pass."""
    rank, world = _rank_world()
    dev = loaded.device
    block_size = resolve_block_size(loaded, config)
    layers = resolve_layers(loaded, config.layers)
    names = _names(layers)
    widths = state_widths(loaded, layers)
    check_memory(loaded, widths)
    accs = {n: StatsAccumulator(loaded.vocab_size, widths[n], device=dev) for n in names}
    blocks_done = tokens = resumed = 0
    corpus_id = corpus.identity()  # hashes (and checks) every file: once per run
    ckpt = identity = None
    if checkpoint is not None:
        ckpt = Path(checkpoint) if world == 1 else Path(f"{checkpoint}.rank{rank}")
        identity = dict(model=loaded.identity, corpus=corpus_id, block_size=block_size,
                        max_tokens=config.max_tokens, layers=list(layers), rank=rank, world=world)
        found = _load_checkpoint(ckpt, identity, dev, names)
        if found is not None:
            accs, blocks_done, tokens = found
            resumed = blocks_done
    # A resumed run skips what it already has.
    mine = itertools.islice(_rank_blocks(loaded, corpus, config, block_size, rank, world), blocks_done, None)
    start = time.perf_counter()
    bar = tqdm(desc=f"collect (rank {rank})" if world > 1 else "collect", unit="tok", unit_scale=True,
               disable=not progress or rank != 0)
    since_ckpt = 0
    with torch.inference_mode(), capture_unembedding_input(loaded.model) as store, threads_for():
        for n_batch, (ids, lengths) in enumerate(batches(mine, config.batch_size)):
            _, hidden, states = forward_features(loaded, ids, lengths, store, hidden_states=bool(layers))
            keep = labelled_positions(ids, lengths)  # (B, T-1), built on the CPU: no device sync
            n_tokens = int(keep.sum())
            keep = keep.to(dev, non_blocking=True)
            labels = ids[:, 1:].to(dev, non_blocking=True)[keep]
            features = {FINAL: hidden, **{layer_name(i): states[i] for i in layers}}
            for name, h in features.items():
                try:
                    accs[name].update(h[:, :-1][keep], labels)
                except ValueError as err:  # the run stops here; the checkpoint on disk is untouched
                    what = "NaN or Inf hidden states" if "NaN or Inf" in str(err) else "hidden states of an unexpected shape"
                    raise CollectError(
                        f"{what} in batch {n_batch} ({name}, blocks {blocks_done}.."
                        f"{blocks_done + len(lengths) - 1} of this rank): {err}"
                    ) from err
            blocks_done += len(lengths)
            tokens += n_tokens
            since_ckpt += len(lengths)
            bar.update(n_tokens)
            if ckpt is not None and config.checkpoint_every and since_ckpt >= config.checkpoint_every:
                save_accumulators(ckpt, accs, dict(identity=identity, blocks_done=blocks_done, tokens=tokens))
                since_ckpt = 0
    bar.close()
    if ckpt is not None and tokens:
        save_accumulators(ckpt, accs, dict(identity=identity, blocks_done=blocks_done, tokens=tokens))
    if world > 1:
        accs, blocks_done, tokens = _merge_ranks(accs, blocks_done, tokens, loaded)
    if tokens == 0:
        raise CollectError("no labelled positions were collected (is the corpus empty?)")
    meta = dict(model=str(loaded.path), model_identity=loaded.identity, corpus=str(corpus.root),
                corpus_identity=corpus_id, tokens=tokens, blocks=blocks_done, **asdict(config),
                resolved_block_size=block_size)
    stats = {n: acc.compute(metadata=dict(meta, layer=n)) for n, acc in accs.items()}
    return CollectResult(stats[FINAL], tokens, blocks_done, resumed, time.perf_counter() - start,
                         {i: stats[layer_name(i)] for i in layers})


def _merge_ranks(accs: dict[str, StatsAccumulator], blocks: int, tokens: int, loaded: LoadedModel):
    """Gather every rank's states and merge in rank order on each rank: all ranks end equal."""
    states = {n: {k: v.cpu() for k, v in acc.state().items()} for n, acc in accs.items()} if tokens else None
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (states, blocks, tokens))
    merged = {n: StatsAccumulator(acc.num_classes, acc.dim, device=loaded.device) for n, acc in accs.items()}
    for rank_states, _, _ in gathered:
        if rank_states is not None:
            for n, state in rank_states.items():
                merged[n].merge(StatsAccumulator.from_state({k: v.to(loaded.device) for k, v in state.items()}))
    return merged, sum(g[1] for g in gathered), sum(g[2] for g in gathered)


@dataclass
class NC4Result:
    agreement: float  # fraction of counted held-out positions where NCC(h) == argmax logits
    tokens: int  # positions counted
    positions: str = "all"  # "all" labelled positions, or "kept": those whose true next token is kept
    loss: float | None = None  # mean next-token cross-entropy over every labelled position (nats)
    accuracy: float | None = None  # top-1 accuracy of the model over every labelled position
    layers: dict[int, float] = field(default_factory=dict)  # NC4 with each layer's own class means


def collect_nc4(loaded: LoadedModel, corpus: Corpus, stats: ClassStats, config: CollectConfig = CollectConfig(),
                *, min_count: int = 1, positions: str = "all", layer_stats: dict[int, ClassStats] | None = None,
                progress: bool = True) -> NC4Result:
    """NC4 agreement over the held-out corpus, against the training class means in ``stats`` (and,
    for each entry of ``layer_stats``, of that hidden state against that layer's means), with the
    model's mean cross-entropy on the same positions (its validation loss).

    positions "kept" counts only positions whose true next token is a kept class (Wu & Papyan's
    code); "all" counts every labelled position."""
    if positions not in ("all", "kept"):
        raise ValueError(f"NC4 positions must be 'all' or 'kept', got {positions!r}")
    rank, world = _rank_world()
    block_size = resolve_block_size(loaded, config)
    layer_stats = layer_stats or {}
    resolve_layers(loaded, tuple(layer_stats))
    accs = {FINAL: NC4Accumulator(stats.to(loaded.device), min_count=min_count)}
    accs |= {i: NC4Accumulator(s.to(loaded.device), min_count=min_count) for i, s in layer_stats.items()}
    loss_sum = torch.zeros((), dtype=torch.float64, device=loaded.device)
    correct = torch.zeros((), dtype=torch.int64, device=loaded.device)
    loss_count = 0
    bar = tqdm(desc="nc4", unit="tok", unit_scale=True, disable=not progress or rank != 0)
    with torch.inference_mode(), capture_unembedding_input(loaded.model) as store, threads_for():
        for ids, lengths in batches(_rank_blocks(loaded, corpus, config, block_size, rank, world), config.batch_size):
            logits, hidden, states = forward_features(loaded, ids, lengths, store, hidden_states=bool(layer_stats))
            keep = labelled_positions(ids, lengths)  # on the CPU: counting it needs no device sync
            loss_count += int(keep.sum())
            bar.update(int(keep.sum()))
            keep = keep.to(loaded.device)
            targets = ids[:, 1:].to(loaded.device)[keep]
            kept_logits = logits[:, :-1][keep]
            loss_sum += torch.nn.functional.cross_entropy(kept_logits.double(), targets, reduction="sum")
            labels = targets if positions == "kept" else None
            pred = kept_logits.argmax(-1)
            correct += (pred == targets).sum()
            accs[FINAL].update(hidden[:, :-1][keep], pred, labels)
            for i in layer_stats:
                accs[i].update(states[i][:, :-1][keep], pred, labels)
    bar.close()
    loss_total, n_correct = float(loss_sum), int(correct)
    if world > 1:
        counts = torch.tensor([v for a in accs.values() for v in (a.agree, a.total)], dtype=torch.int64)
        dist.all_reduce(counts)
        for j, a in enumerate(accs.values()):
            a.agree, a.total = int(counts[2 * j]), int(counts[2 * j + 1])
        sums = torch.tensor([loss_total, float(loss_count), float(n_correct)], dtype=torch.float64)
        dist.all_reduce(sums)
        loss_total, loss_count, n_correct = float(sums[0]), int(sums[1]), int(sums[2])
    return NC4Result(accs[FINAL].compute(), accs[FINAL].total, positions, loss_total / max(loss_count, 1),
                     n_correct / max(loss_count, 1), {i: accs[i].compute() for i in layer_stats})


def init_distributed(device: str) -> tuple[int, int, str]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; return (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    use_cuda = resolve_device(device).type == "cuda"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return dist.get_rank(), world, device
