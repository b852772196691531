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
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ufm import ClassStats, NC4Accumulator, StatsAccumulator
from ufm.stats import ClassRows
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
    plan: PassPlan | None = None  # the passes the statistics came from
    checkpoints: list[Path] = field(default_factory=list)  # this rank's checkpoint files


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


@dataclass(frozen=True)
class PassPlan:
    """How the statistics are collected: which states each pass over the same blocks holds, for
    how many classes (rows are allocated only for classes that occur)."""

    passes: tuple[tuple[str, ...], ...]  # state names of each pass; the final state in the first
    classes: int  # rows each state allocates: the classes the blocks can label
    classes_counted: bool  # True: counted in the corpus; False: the vocabulary (or max_tokens) bound
    bytes_per_pass: tuple[int, ...]
    budget: int  # MEMORY_FRACTION of the free memory on the device

    def describe(self) -> str:
        what = "classes that occur in the corpus" if self.classes_counted else "classes at most"
        sizes = ", ".join(f"{b / 2**30:.3g}" for b in self.bytes_per_pass)
        return (f"{sum(map(len, self.passes))} statistics states of {self.classes:,} {what} in {len(self.passes)} "
                f"pass(es) over the same blocks ({sizes} GiB; budget {self.budget / 2**30:.3g} GiB)")


def distinct_labels(loaded: LoadedModel, corpus: Corpus, config: CollectConfig, block_size: int) -> int:
    """How many classes (next tokens) the corpus's blocks label: a tokenization pass, no model."""
    seen = torch.zeros(loaded.vocab_size, dtype=torch.bool)
    for block in token_blocks(corpus, loaded.tokenizer, block_size, max_tokens=config.max_tokens):
        labels = torch.tensor(block[1:], dtype=torch.long)
        if len(labels) and int(labels.max()) >= loaded.vocab_size:
            raise CollectError(f"the tokenizer gives token id {int(labels.max())}, beyond the model's "
                               f"{loaded.vocab_size} classes: {loaded.path}'s tokenizer and model disagree")
        seen[labels] = True
    return int(seen.sum())


def plan_passes(loaded: LoadedModel, corpus: Corpus, config: CollectConfig, widths: dict[str, int],
                block_size: int) -> PassPlan:
    """The passes that fit ``MEMORY_FRACTION`` of the free memory. Rows are allocated for the
    classes the blocks can label: at most min(vocabulary, tokens); when that bound does not fit,
    the classes are counted (a tokenization pass), and the states that still do not fit together
    are split over several passes over the same blocks, which give exactly the single pass's
    statistics. A single state that cannot fit is refused, before the pass."""
    budget = int(MEMORY_FRACTION * free_memory(loaded.device))
    row_map = 8 * loaded.vocab_size  # the class -> row map of each pass
    k = loaded.vocab_size if config.max_tokens is None else min(loaded.vocab_size, config.max_tokens)
    counted = False
    # Uncounted, rows grow by doubling as classes appear, and a growth briefly holds the old and
    # the new arrays: up to twice the bound. Counted, each state allocates its rows once.
    if row_map + 2 * sum(state_bytes(k, d) for d in widths.values()) > budget:
        k, counted = distinct_labels(loaded, corpus, config, block_size), True
    passes: list[list[str]] = []
    sizes: list[int] = []
    for name, d in widths.items():
        size = state_bytes(k, d)
        if row_map + size > budget:
            raise CollectError(
                f"one statistics state of K={k:,} classes x D={d} float64 needs {size / 2**30:.2f} GiB, more than "
                f"{MEMORY_FRACTION:.0%} of the {budget / MEMORY_FRACTION / 2**30:.2f} GiB free on {loaded.device}; "
                "measure fewer tokens (--max-tokens), or on a device with more memory")
        if passes and sizes[-1] + size <= budget:
            passes[-1].append(name)
            sizes[-1] += size
        else:
            passes.append([name])
            sizes.append(row_map + size)
    return PassPlan(tuple(map(tuple, passes)), k, counted, tuple(sizes), budget)


def _rank_blocks(loaded: LoadedModel, corpus: Corpus, config: CollectConfig, block_size: int, rank: int, world: int):
    """This rank's share of the corpus blocks: block i goes to rank i % world."""
    blocks = token_blocks(corpus, loaded.tokenizer, block_size, max_tokens=config.max_tokens)
    return (b for i, b in enumerate(blocks) if i % world == rank)


def layer_name(index: int) -> str:
    """The name of hidden state ``index``'s statistics (in checkpoints, metadata and file names)."""
    return f"layer_{index:02d}"


def layer_index(name: str) -> int:
    return int(name.removeprefix("layer_"))


def state_of(name: str, hidden: torch.Tensor, states) -> torch.Tensor:
    """The (B, T, D) features of the named state: the unembedding's input, or a hidden state."""
    return hidden if name == FINAL else states[layer_index(name)]


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


def _accumulators(names, widths: dict[str, int], num_classes: int, dev, capacity: int, sparse: bool = True
                  ) -> dict[str, StatsAccumulator]:
    """Accumulators of the named states (sparse: rows for the classes seen), sharing one class ->
    row map: the label work of a batch is done once for all of them."""
    rows = ClassRows(num_classes, sparse=sparse, device=dev)
    return {n: StatsAccumulator(num_classes, widths[n], rows=rows, capacity=capacity) for n in names}


def collect_stats(loaded: LoadedModel, corpus: Corpus, config: CollectConfig = CollectConfig(), *,
                  checkpoint: str | Path | None = None, progress: bool = True) -> CollectResult:
    """ClassStats of (hidden state, next token) over every labelled position of the corpus: of the
    unembedding's input, and of each hidden state in ``config.layers``, from the same forward pass
    (or, when they do not fit together, from several passes over the same blocks: ``plan_passes``)."""
    rank, world = _rank_world()
    block_size = resolve_block_size(loaded, config)
    layers = resolve_layers(loaded, config.layers)
    widths = state_widths(loaded, layers)
    plan = plan_passes(loaded, corpus, config, widths, block_size)
    if len(plan.passes) > 1 and rank == 0:
        print(f"collect: {plan.describe()}", file=sys.stderr)
    corpus_id = corpus.identity()  # hashes (and checks) every file: once per run
    start = time.perf_counter()
    stats: dict[str, ClassStats] = {}
    resumed = 0
    checkpoints = []
    for i, names in enumerate(plan.passes):
        ckpt = None
        if checkpoint is not None:
            ckpt = Path(checkpoint) if len(plan.passes) == 1 else Path(f"{checkpoint}.pass{i}")
            ckpt = ckpt if world == 1 else Path(f"{ckpt}.rank{rank}")
            checkpoints.append(ckpt)
        capacity = plan.classes if plan.classes_counted else 0
        accs, tokens, blocks, skipped = _collect_pass(loaded, corpus, config, block_size, names, widths, capacity,
                                                      ckpt, corpus_id, progress=progress)
        resumed += skipped
        meta = dict(model=str(loaded.path), model_identity=loaded.identity, corpus=str(corpus.root),
                    corpus_identity=corpus_id, tokens=tokens, blocks=blocks, **asdict(config),
                    resolved_block_size=block_size, passes=len(plan.passes), planned_classes=plan.classes)
        stats |= {n: acc.compute(metadata=dict(meta, layer=n)) for n, acc in accs.items()}
    return CollectResult(stats[FINAL], tokens, blocks, resumed, time.perf_counter() - start,
                         {layer_index(n): s for n, s in stats.items() if n != FINAL}, plan, checkpoints)


def _collect_pass(loaded: LoadedModel, corpus: Corpus, config: CollectConfig, block_size: int, names: tuple[str, ...],
                  widths: dict[str, int], capacity: int, ckpt: Path | None, corpus_id: str, *, progress: bool):
    """One pass over the blocks into the states ``names``, each with room for ``capacity`` classes
    to start with; (accumulators, tokens, blocks, blocks skipped)."""
    rank, world = _rank_world()
    dev = loaded.device
    layers = [layer_index(n) for n in names if n != FINAL]
    accs = _accumulators(names, widths, loaded.vocab_size, dev, capacity)
    blocks_done = tokens = resumed = 0
    identity = None
    if ckpt is not None:
        identity = dict(model=loaded.identity, corpus=corpus_id, block_size=block_size,
                        max_tokens=config.max_tokens, layers=layers, rank=rank, world=world)
        found = _load_checkpoint(ckpt, identity, dev, list(names))
        if found is not None:
            for n, acc in found[0].items():  # into the shared rows: a merge into empty states is exact
                accs[n].merge(acc)
            _, blocks_done, tokens = found
            resumed = blocks_done
    # A resumed run skips what it already has.
    mine = itertools.islice(_rank_blocks(loaded, corpus, config, block_size, rank, world), blocks_done, None)
    bar = tqdm(desc=f"collect (rank {rank})" if world > 1 else "collect", unit="tok", unit_scale=True,
               disable=not progress or rank != 0)
    since_ckpt = 0
    with torch.inference_mode(), capture_unembedding_input(loaded.model) as store, threads_for():
        for n_batch, (ids, lengths) in enumerate(batches(mine, config.batch_size)):
            _, hidden, states = forward_features(loaded, ids, lengths, store, hidden_states=bool(layers))
            where = f"batch {n_batch}, blocks {blocks_done}..{blocks_done + len(lengths) - 1} of this rank"
            n_tokens = fold_batch(accs, ids, lengths, hidden, states, where=where)
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
    return accs, tokens, blocks_done, resumed


def fold_batch(accs: dict[str, StatsAccumulator], ids: torch.Tensor, lengths: torch.Tensor, hidden: torch.Tensor,
               states, *, where: str = "") -> int:
    """Fold the labelled positions of one batch into every state of ``accs`` (sharing one row map):
    the labels are grouped once, each state folds its own features; returns the tokens folded.
    hidden (B, T, D) is the unembedding's input, states the output_hidden_states tuple (or None)."""
    keep = labelled_positions(ids, lengths)  # (B, T-1), built on the CPU: no device sync
    n_tokens = int(keep.sum())
    every = n_tokens == keep.numel()  # full blocks: every position, as a reshape instead of a gather
    first = next(iter(accs.values()))
    labels = ids[:, 1:].to(first.device, non_blocking=True)
    keep = keep.to(first.device, non_blocking=True)
    name = next(iter(accs))
    try:
        batch = first.rows.batch(labels.reshape(-1) if every else labels[keep])  # the label work, once
        for name, acc in accs.items():
            x = state_of(name, hidden, states)[:, :-1]
            acc.fold(x.to(torch.float64).reshape(-1, x.shape[-1]) if every else x[keep], batch)
    except ValueError as err:  # the run stops here; the checkpoint on disk is untouched
        what = ("NaN or Inf hidden states" if "NaN or Inf" in str(err) else
                "token ids beyond the model's classes" if "labels must lie" in str(err) else
                "hidden states of an unexpected shape")
        raise CollectError(f"{what} in {where or 'a batch'} ({name}): {err}") from err
    return n_tokens


def _merge_ranks(accs: dict[str, StatsAccumulator], blocks: int, tokens: int, loaded: LoadedModel):
    """Gather every rank's states and merge in rank order on each rank: all ranks end equal."""
    states = {n: {k: v.cpu() for k, v in acc.state().items()} for n, acc in accs.items()} if tokens else None
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (states, blocks, tokens))
    first = next(iter(accs.values()))  # room for this rank's classes; the union may grow it
    merged = _accumulators(list(accs), {n: a.dim for n, a in accs.items()}, first.num_classes, loaded.device,
                           first.rows.size, first.rows.sparse)
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
    # FINAL or layer index -> (class ids, hits, misses) by true next token over the kept classes
    per_class: dict = field(default_factory=dict)


def collect_means(loaded: LoadedModel, corpus: Corpus, config: CollectConfig, layers: tuple[int, ...] = ()
                  ) -> dict[str | int, torch.Tensor]:
    """The mean (D,) float64 of the unembedding's input (key FINAL) and of each hidden state in
    ``layers`` over every labelled position of ``corpus``: the out-of-distribution global mean of
    NC5. One class of a Chan-merged accumulator, so ranks merge as the statistics do."""
    rank, world = _rank_world()
    block_size = resolve_block_size(loaded, config)
    layers = resolve_layers(loaded, layers)
    names = [FINAL, *map(layer_name, layers)]
    accs = _accumulators(names, state_widths(loaded, layers), 1, loaded.device, 1, sparse=False)
    rows, tokens = accs[FINAL].rows, 0
    with torch.inference_mode(), capture_unembedding_input(loaded.model) as store, threads_for():
        for ids, lengths in batches(_rank_blocks(loaded, corpus, config, block_size, rank, world), config.batch_size):
            _, hidden, states = forward_features(loaded, ids, lengths, store, hidden_states=bool(layers))
            keep = labelled_positions(ids, lengths)
            n_tokens = int(keep.sum())
            keep = keep.to(loaded.device)
            batch = rows.batch(torch.zeros(n_tokens, dtype=torch.long, device=loaded.device))  # one class: all
            tokens += n_tokens
            for n in names:
                accs[n].fold(state_of(n, hidden, states)[:, :-1][keep], batch)
    if world > 1:
        accs, _, tokens = _merge_ranks(accs, 0, tokens, loaded)
    if tokens == 0:
        raise CollectError(f"no labelled positions in the out-of-distribution corpus {corpus.root}")
    return {n if n == FINAL else layer_index(n): accs[n].compute().means[0] for n in names}


def collect_nc4(loaded: LoadedModel, corpus: Corpus, stats: ClassStats, config: CollectConfig = CollectConfig(),
                *, min_count: int = 1, max_count: int | None = None, positions: str = "all",
                layer_stats: dict[int, ClassStats] | None = None, progress: bool = True) -> NC4Result:
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
    kept = dict(min_count=min_count, max_count=max_count)
    accs = {FINAL: NC4Accumulator(stats.to(loaded.device), **kept)}
    accs |= {i: NC4Accumulator(s.to(loaded.device), **kept) for i, s in layer_stats.items()}
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
            only_kept = positions == "kept"
            pred = kept_logits.argmax(-1)
            correct += (pred == targets).sum()
            accs[FINAL].update(hidden[:, :-1][keep], pred, targets, only_kept=only_kept)
            for i in layer_stats:
                accs[i].update(states[i][:, :-1][keep], pred, targets, only_kept=only_kept)
    bar.close()
    loss_total, n_correct = float(loss_sum), int(correct)
    if world > 1:
        counts = torch.tensor([v for a in accs.values() for v in (a.agree, a.total)], dtype=torch.int64)
        dist.all_reduce(counts)
        for j, a in enumerate(accs.values()):
            a.agree, a.total = int(counts[2 * j]), int(counts[2 * j + 1])
            for tally in (a.hits, a.seen):  # per class, in place
                dist.all_reduce(tally)
        sums = torch.tensor([loss_total, float(loss_count), float(n_correct)], dtype=torch.float64)
        dist.all_reduce(sums)
        loss_total, loss_count, n_correct = float(sums[0]), int(sums[1]), int(sums[2])
    per_class = {i: tuple(t.cpu().numpy() for t in a.per_class()) for i, a in accs.items()}
    return NC4Result(accs[FINAL].compute(), accs[FINAL].total, positions, loss_total / max(loss_count, 1),
                     n_correct / max(loss_count, 1), {i: accs[i].compute() for i in layer_stats}, per_class)


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
