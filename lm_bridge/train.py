"""Small GPT-Neo-style causal LMs for scaling studies (Wu & Papyan trained such models on TinyStories).

One run = one architecture (depth x width), a number of epochs, a weight decay and a seed. Each
epoch ends with a normal Hugging Face directory ``epoch{e}/`` (model, tokenizer, ``training.json``
with the validation loss) and a resume state, written every N steps as well when asked; a killed
run picks up at the step of its last state. The seed fixes
the initialization and the order of the blocks, so a run is reproducible on a given machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ufm.validate import check_positive_int, resolve_device
from ufm.io import atomic_directory, atomic_write, load_state
from ufm.threads import threads_for

from .corpus import Corpus, token_blocks
from .models import quiet_transformers


@dataclass(frozen=True)
class TrainSpec:
    depth: int = 2  # transformer layers
    width: int = 64  # hidden size d
    heads: int = 4  # attention heads (divides width)
    epochs: int = 2  # passes over the training blocks
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    lr: float = 3e-3  # peak learning rate (linear warm-up, cosine decay to 10%)
    batch_size: int = 16  # blocks per step
    block_size: int = 128  # tokens per block (= context length)
    seed: int = 0  # initialization and data order
    max_train_tokens: int | None = None  # cap on training tokens per epoch
    max_val_tokens: int | None = 50_000  # cap on validation tokens

    def __post_init__(self) -> None:
        for name in ("depth", "width", "heads", "epochs", "batch_size"):
            check_positive_int(getattr(self, name), name)
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {self.block_size}")

    @property
    def name(self) -> str:
        return f"d{self.depth}-w{self.width}-wd{self.weight_decay:g}-s{self.seed}"


@dataclass
class EpochResult:
    epoch: int
    val_loss: float
    train_loss: float
    path: str  # the Hugging Face directory of this epoch's model
    resumed: bool = False  # trained by an earlier, interrupted run of the same spec (read back from its state)


def gpt_neo_config(spec: TrainSpec, tokenizer):
    from transformers import GPTNeoConfig

    eos = tokenizer.eos_token_id
    return GPTNeoConfig(
        vocab_size=len(tokenizer), hidden_size=spec.width, num_layers=spec.depth, num_heads=spec.heads,
        max_position_embeddings=spec.block_size, attention_types=[[["global"], spec.depth]],
        intermediate_size=4 * spec.width, embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0,
        bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=True,
    )


def block_tensor(corpus: Corpus, tokenizer, block_size: int, max_tokens: int | None) -> torch.Tensor:
    """Full blocks only (a short tail block is dropped so batches stack): (N, block_size)."""
    blocks = [b for b in token_blocks(corpus, tokenizer, block_size, max_tokens=max_tokens) if len(b) == block_size]
    if not blocks:
        raise ValueError(f"the corpus at {corpus.root} is too small for one block of {block_size} tokens")
    return torch.tensor(blocks, dtype=torch.long)


@torch.no_grad()
def evaluate(model, blocks: torch.Tensor, batch_size: int, device) -> float:
    """Mean next-token cross-entropy (nats) over every position of ``blocks``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i:i + batch_size].to(device)
        logits = model(input_ids=ids).logits[:, :-1]
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                         ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
    model.train()
    return total / count


def train_clm(spec: TrainSpec, tokenizer, train: Corpus, val: Corpus, out: str | Path, *,
              device: str | torch.device = "auto", progress: bool = True, checkpoint_every: int = 0
              ) -> list[EpochResult]:
    """Train one GPT-Neo; return the per-epoch results (resuming a killed run where it stopped).

    ``checkpoint_every`` > 0 also saves the resumable state every that many optimizer steps, and a
    resumed run continues mid-epoch to the model an uninterrupted run gives (bit-identical on the
    CPU). On CUDA the forward pass runs under bf16 autocast where the GPU supports it (the weights,
    the optimizer and the loss stay float32). Under torchrun (torch.distributed initialized) the
    model is data-parallel: each rank takes its share of every batch, the gradient is the batch's,
    and rank 0 writes the checkpoints."""
    from transformers import GPTNeoForCausalLM

    quiet_transformers()
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 0):
        raise ValueError(f"checkpoint_every must be an integer >= 0 (steps), got {checkpoint_every!r}")
    rank, world = _rank_world()
    out, dev = Path(out), resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    train_blocks = block_tensor(train, tokenizer, spec.block_size, spec.max_train_tokens)
    val_blocks = block_tensor(val, tokenizer, spec.block_size, spec.max_val_tokens)
    torch.manual_seed(spec.seed)
    model = GPTNeoForCausalLM(gpt_neo_config(spec, tokenizer)).to(dev)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]  # no decay on norms and biases
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=spec.weight_decay), dict(params=rest, weight_decay=0.0)],
                            lr=spec.lr, betas=(0.9, 0.95))
    steps_per_epoch = math.ceil(len(train_blocks) / spec.batch_size)
    total_steps = steps_per_epoch * spec.epochs
    warmup = max(1, total_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))))
    results, first_epoch, first_step, losses = _resume(out, spec, model, opt, schedule)
    net = model if world == 1 else torch.nn.parallel.DistributedDataParallel(model)
    precision = "bf16 autocast" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if precision != "float32" else contextlib.nullcontext)

    def save_state(epoch_done: int, step: int) -> None:
        if rank == 0:
            state = dict(spec=asdict(spec), epoch=epoch_done, step=step, losses=list(losses), model=model.state_dict(),
                         opt=opt.state_dict(), schedule=schedule.state_dict(), results=[asdict(r) for r in results])
            _save_state(out / "state.pt", state)
        if world > 1:
            torch.distributed.barrier()  # no rank runs ahead of a checkpoint that might be its resume point

    with threads_for(reproducible=True) as threads:  # one thread: a seeded run gives one model
        for epoch in range(first_epoch, spec.epochs + 1):
            order = torch.randperm(len(train_blocks), generator=torch.Generator().manual_seed(spec.seed * 1000 + epoch))
            bar = tqdm(range(first_step, steps_per_epoch), desc=f"{spec.name} epoch {epoch}",
                       disable=not progress or rank != 0, leave=False)
            start = time.perf_counter()
            for step in bar:
                batch = train_blocks[order[step * spec.batch_size:(step + 1) * spec.batch_size]]
                with autocast():
                    loss = _step_loss(net, batch, rank, world, dev)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                schedule.step()
                losses.append(_batch_loss(loss, world))
                if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps_per_epoch:
                    save_state(epoch - 1, step + 1)
            first_step = 0
            val_loss = evaluate(model, val_blocks, spec.batch_size, dev)
            path = out / f"epoch{epoch}"
            info = dict(spec=asdict(spec), epoch=epoch, val_loss=val_loss, train_loss=sum(losses) / len(losses),
                        train_tokens=int(train_blocks.numel()), seconds=time.perf_counter() - start, threads=threads,
                        precision=precision, world_size=world)
            if rank == 0:
                _save_epoch(model, tokenizer, path, info)
            results.append(EpochResult(epoch, val_loss, info["train_loss"], str(path)))
            losses = []
            save_state(epoch, 0)
    return results


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _step_loss(net, batch: torch.Tensor, rank: int, world: int, dev) -> torch.Tensor:
    """The loss whose gradient, averaged over ranks by DDP, is the gradient of the whole batch's
    mean loss: rank r takes blocks r, r + world, ... and weighs its mean by its share of the batch
    (a rank without a block runs one with weight 0, so every rank joins the all-reduce)."""
    if world == 1:
        ids = batch.to(dev)
        return net(input_ids=ids, labels=ids).loss
    mine = batch[rank::world]
    weight = len(mine) * world / len(batch)
    if len(mine) == 0:
        mine, weight = batch[:1], 0.0
    ids = mine.to(dev)
    return net(input_ids=ids, labels=ids).loss * weight


def _batch_loss(loss: torch.Tensor, world: int) -> float:
    """The whole batch's mean loss, for the record (the ranks' weighted losses sum to world x it)."""
    value = loss.detach().float()
    if world > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= world
    return float(value)


def _save_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _resume(out: Path, spec: TrainSpec, model, opt, schedule) -> tuple[list[EpochResult], int, int, list[float]]:
    """(results so far, epoch to run, its first step, its losses so far) from ``out/state.pt``."""
    state_file = out / "state.pt"
    if not state_file.exists():
        return [], 1, 0, []
    state = load_state(state_file, ("spec", "epoch", "model", "opt", "schedule", "results"))
    if state["spec"] != asdict(spec):
        raise ValueError(f"{out} holds a run of another spec ({state['spec']}); choose another output folder")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    schedule.load_state_dict(state["schedule"])
    results = [EpochResult(**{**r, "resumed": True}) for r in state["results"]]
    return results, state["epoch"] + 1, state.get("step", 0), list(state.get("losses", []))


def _save_epoch(model, tokenizer, path: Path, info: dict) -> None:
    """A complete Hugging Face directory, renamed into place only when fully written."""
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(info, indent=2))
