"""Training a TransformerLM: loss, optimizer, schedule, loop and checkpoints (chapter 07).

    loss         next-token cross-entropy: -log p(right next token), averaged over B * T
    optimizer    AdamW; weight decay on matrices (2-D), none on biases and norm gains (1-D)
    schedule     linear warm-up to `lr`, then cosine decay to `min_lr` at the last step
    clipping     the gradient is rescaled so that its global norm is at most `grad_clip`
    Trainer      the loop, periodic validation, a tqdm progress bar, the loss history
    checkpoints  safetensors for tensors + JSON for the rest, saved all or nothing (a new
                 folder swapped in); resuming from one continues the run exactly
    masked LM    with TrainConfig.mlm_mask_id set, every batch is masked BERT's way
                 (lmkit.mlm, chapter 10) and the loss covers the masked positions only

Scaling up (chapter 12), all options of TrainConfig and of `python -m lmkit train`:

    precision    "bf16": forward and loss under torch.autocast in bfloat16 (weights, gradients
                 and AdamW states stay float32); "fp32": everything in float32
    grad_accum   K micro-batches per optimizer step: the same step as a K times larger batch
    compile      torch.compile the model used for training steps
    activation_checkpointing   keep only each block's input; recompute the rest in backward
    data parallel  under `torchrun --nproc_per_node N` (lmkit.distributed), the model is wrapped
                 in DistributedDataParallel; `batch_size` is the global batch, split evenly
                 across the N processes, so a run gives the same model whatever N is

A checkpoint folder holds:

    config.json              ModelConfig.to_dict()
    model.safetensors        the weights (a tied lm_head is stored once, as tok_emb.weight)
    optimizer.safetensors    AdamW's moments and the RNG states (training checkpoints only)
    trainer_state.json       step, TrainConfig, loss history, optimizer hyper-parameters

Nothing is unpickled on load: safetensors holds only tensors, JSON only plain values.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from lmkit import distributed
from lmkit.data import get_batch
from lmkit.io import _fsync_folder, read_safetensors, read_text, write_atomic
from lmkit.mlm import IGNORE_INDEX, mask_tokens
from lmkit.model import ModelConfig, TransformerLM

__all__ = [
    "TrainConfig", "Trainer", "train", "pick_device", "lm_loss", "lr_at",
    "configure_optimizer", "clip_grad_norm", "evaluate", "save_model", "load_model",
    "sequence_loss", "load_course_model", "COURSE_MODEL", "check_save_folder", "PRECISIONS",
    "step_batches", "autocast", "checkpoint_blocks",
]

# The small model trained on Shakespeare by tools/train_course_model.py, shipped inside the
# package (package data, so a normal `pip install` has it too): lmkit/models/shakespeare.
COURSE_MODEL = Path(str(resources.files("lmkit").joinpath("models", "shakespeare")))


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}  # compute dtypes (chapter 12)


@dataclass
class TrainConfig:
    """Every knob of a training run; defaults suit a small model on a laptop CPU (chapter 07)."""

    steps: int = 1000
    batch_size: int = 32
    context_length: int | None = None  # None: the model's context_length
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0  # None: no clipping
    eval_interval: int = 100  # validate every this many steps, and at the last step
    eval_batches: int = 10  # batches per validation estimate (always the same batches)
    seed: int = 0
    device: str | None = None  # None: pick_device()
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; chapter 12)
    grad_accum: int = 1  # micro-batches per optimizer step (chapter 12)
    compile: bool = False  # torch.compile the training model (chapter 12)
    activation_checkpointing: bool = False  # recompute block activations in backward (ch. 12)
    mlm_mask_id: int | None = None  # the [MASK] id: masked-LM training (chapter 10); None: LM
    mlm_probability: float = 0.15  # share of positions a masked LM predicts

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of "
                             f"{list(PRECISIONS)}")
        for name in ("steps", "batch_size", "eval_interval", "eval_batches", "grad_accum"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("compile", "activation_checkpointing"):  # "no" would be truthy: ON
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        m = self.mlm_mask_id
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 0):
            raise ValueError(f"mlm_mask_id must be None or a token id (an integer >= 0), got {m!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        self.betas = tuple(self.betas)
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        return cls(**d)


def pick_device(preferred: str | None = None) -> torch.device:
    """`preferred` if given, else cuda if available, then mps, then cpu (chapter 12)."""
    if preferred is not None:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy: logits (B, T, V), targets (B, T) -> a scalar.

    Targets equal to -100 are skipped (cross-entropy's ignore_index): the masked LM's labels.
    """
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for step 0, 1, ..., total_steps - 1: linear warm-up, then cosine decay.

    Warm-up climbs lr/warmup, 2 lr/warmup, ..., reaching `lr` at step warmup_steps - 1; the
    cosine then goes from `lr` (at step warmup_steps) down to exactly `min_lr` at the last step.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    if step >= total_steps - 1 or decay_steps <= 0:
        return min_lr
    progress = (step - warmup_steps) / decay_steps  # 0 -> 1
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def configure_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW with two groups, as nanoGPT: decay every 2-D weight (matrices, embeddings), none
    on 1-D ones (biases, norm gains): shrinking a gain or a bias towards 0 is not regularisation.

    Where PyTorch has one (CPU and CUDA float parameters), the fused AdamW kernel updates all
    parameters in one pass: the same update as the plain loop, faster. Create the optimizer
    after moving the model to its device.
    """
    params = [p for p in model.parameters() if p.requires_grad]  # a tied matrix appears once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16,
                                                         torch.bfloat16, torch.float64)
        for p in params
    )
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def clip_grad_norm(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> Tensor:
    """Scale all gradients together so their global norm is at most max_norm; return the
    norm before clipping. Same as torch.nn.utils.clip_grad_norm_ (chapter 07 writes it out).

    `parameters` is what torch accepts: one tensor, or a list or generator of tensors.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) or not (
        math.isfinite(max_norm) and max_norm > 0
    ):
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm!r} (a negative "
                         "one would flip the gradient's sign; to not clip, skip the call)")
    if isinstance(parameters, Tensor):
        parameters = [parameters]  # iterating a tensor would give its rows, not the tensor
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm_type = float(norm_type)
    norms = [torch.linalg.vector_norm(g, norm_type) for g in grads]  # one per tensor
    total = torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in norms]),
                                     norm_type)
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError(f"the total gradient norm is {total.item()}: clipping cannot fix "
                           "a non-finite gradient (set error_if_nonfinite=False to go on)")
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.to(g.device))
    return total


@torch.no_grad()
def evaluate(
    model: TransformerLM,
    ids: Tensor,
    batch_size: int,
    context_length: int,
    batches: int,
    seed: int = 0,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    mask_id: int | None = None,
    mlm_probability: float = 0.15,
) -> float:
    """Mean loss over `batches` random batches drawn with a generator seeded with `seed`:
    the same batches every call, so successive estimates differ only because the model did.
    With `mask_id`, the masked-LM loss on batches masked the same way every call (chapter 10).

    Under torch.distributed each process scores its share of every batch and the mean is
    all-reduced, so every process returns the same number (chapter 12).
    """
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    rank, world = distributed.rank(), distributed.world_size()
    total, scored = 0.0, 0
    for _ in range(batches):
        if world == 1:
            x, y = get_batch(ids, batch_size, context_length, generator=g, device=device)
        else:
            ((x, y),) = step_batches(ids, batch_size, context_length, g, 1, rank, world, device)
        if mask_id is not None:  # inputs with [MASK]s, labels -100 except at masked positions
            x, y = mask_tokens(x, mask_id, model.config.vocab_size, mlm_probability, g)
            if not (y != IGNORE_INDEX).any():
                continue  # nothing masked (tiny batches): no loss to measure, skip the batch
        with autocast(device, precision):
            total += lm_loss(model(x), y).item()
        scored += 1
    model.train(was_training)
    # over all processes: the losses and the batches scored (averaging both keeps their ratio)
    total, scored = distributed.all_reduce_mean(
        torch.tensor([total, scored], dtype=torch.float64, device=device)).tolist()
    return total / scored if scored else float("nan")  # NaN only if no batch had a mask


def step_batches(
    ids: Tensor,
    batch_size: int,
    context_length: int,
    generator: torch.Generator | None = None,
    grad_accum: int = 1,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """This process's micro-batches (x, y) for one optimizer step (chapter 12).

    Every process draws the same grad_accum * batch_size window starts (they share the
    generator's seed), cuts them into grad_accum micro-batches of batch_size windows, and
    keeps its own 1/world_size of each: the processes see different windows, and together
    exactly the batches one process would see. With one process and grad_accum=1 this is
    `get_batch`.
    """
    if batch_size % world_size:
        raise ValueError(f"batch_size={batch_size} (the global batch) does not split evenly "
                         f"across {world_size} processes; use a multiple of {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0 ... {world_size - 1}, got {rank}")
    if ids.dim() != 1 or len(ids) < context_length + 1:
        get_batch(ids, batch_size, context_length)  # raises its clear error
    starts = torch.randint(len(ids) - context_length, (grad_accum * batch_size,),
                           generator=generator)
    mine = starts.view(grad_accum, world_size, batch_size // world_size)[:, rank]  # (K, B/N)
    out = []
    for row in mine.tolist():
        x = torch.stack([ids[s : s + context_length] for s in row])  # (B/N, T)
        y = torch.stack([ids[s + 1 : s + 1 + context_length] for s in row])  # (B/N, T)
        out.append((x.to(device), y.to(device)) if device is not None else (x, y))
    return out


def autocast(device: str | torch.device | None, precision: str):
    """The context a forward pass runs in: bf16 autocast, or nothing for fp32 (chapter 12).

    Under autocast, matrix products run in bfloat16 while the weights, their gradients and
    the optimizer's states stay float32 ("mixed precision"); softmax, norms and the loss are
    kept in float32 by autocast's own op lists.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type if device is not None else "cpu"
    return torch.autocast(device_type, dtype=PRECISIONS[precision])


class _Checkpointed:
    """A block's forward that stores only its input and recomputes the rest in backward."""

    def __init__(self, block: nn.Module):
        self.block = block
        self.forward = type(block).forward.__get__(block)  # the block's own forward

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        if (kwargs.get("cache") is None and self.block.training
                and torch.is_grad_enabled()):
            return torch.utils.checkpoint.checkpoint(self.forward, x, *args,
                                                     use_reentrant=False, **kwargs)
        return self.forward(x, *args, **kwargs)


def checkpoint_blocks(model: TransformerLM, enabled: bool = True) -> TransformerLM:
    """Activation checkpointing (chapter 12): while training, each block keeps only its input;
    backward runs the block's forward again to rebuild what it needs. Memory for activations
    drops from all intermediate tensors of every block to one (B, T, C) tensor per block, for
    about one more forward pass of compute. Weights and state_dict names do not change.
    """
    for block in model.blocks:
        if enabled and "forward" not in vars(block):
            block.forward = _Checkpointed(block)
        elif not enabled:
            vars(block).pop("forward", None)
    return model


@torch.no_grad()
def sequence_loss(model: TransformerLM, ids: Tensor, context_length: int | None = None) -> float:
    """Mean next-token loss over `ids` cut into consecutive, non-overlapping windows: a fixed,
    reproducible estimate (no sampling). The leftover tail shorter than a window is dropped.
    """
    T = context_length or model.config.context_length
    n = (len(ids) - 1) // T
    if n < 1:
        raise ValueError(f"need at least {T + 1} tokens for one window, got {len(ids)}")
    device = next(model.parameters()).device
    x = ids[: n * T].view(n, T).to(device)  # (n, T)
    y = ids[1 : n * T + 1].view(n, T).to(device)  # (n, T)
    was_training = model.training
    model.eval()
    loss = lm_loss(model(x), y).item()
    model.train(was_training)
    return loss


class Trainer:
    """The training loop, with its state (step, optimizer, RNGs, history) so it can be saved and
    resumed exactly. `run()` trains to `config.steps` (or `steps` more) and returns the history.

    Creating one seeds torch's global generator with config.seed too (dropout draws from it),
    so a run is reproducible from its TrainConfig alone.
    """

    def __init__(
        self, model: TransformerLM, train_ids: Tensor, val_ids: Tensor, config: TrainConfig
    ):
        if model.lm_head is None:
            raise ValueError(
                "the model has no head (ModelConfig head=\"none\"): it returns the trunk's "
                "vectors H, not logits, and there is nothing to train a loss on; use "
                "head=\"lm\" (next token) or head=\"mlm\" (masked LM, chapter 10)")
        if not model.config.causal and config.mlm_mask_id is None:
            raise ValueError(
                "the model is bidirectional (ModelConfig causal=False): trained to predict the "
                "next token it would see that token and learn to copy it. Train it as a masked "
                "LM (TrainConfig mlm_mask_id=<the [MASK] id>, chapter 10), or use causal=True")
        self.config = config
        self.device = pick_device(config.device)
        self.model = model.to(self.device)
        self.train_ids, self.val_ids = train_ids, val_ids
        self.context_length = config.context_length or model.config.context_length
        if self.context_length > model.config.context_length:
            raise ValueError(
                f"TrainConfig.context_length={self.context_length} exceeds the model's "
                f"context window {model.config.context_length}"
            )
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        if config.batch_size % self.world_size:
            raise ValueError(
                f"batch_size={config.batch_size} is the global batch and must split evenly "
                f"across the {self.world_size} processes; use a multiple of {self.world_size}")
        self.optimizer = configure_optimizer(model, config.lr, config.weight_decay, config.betas)
        self.generator = torch.Generator().manual_seed(config.seed)  # batch offsets
        torch.manual_seed(config.seed)  # dropout, if any
        checkpoint_blocks(model, config.activation_checkpointing)
        self.ddp, self.engine = self._wrap()
        self.step = 0
        self.history: dict[str, list] = {
            "step": [], "loss": [], "lr": [], "eval_step": [], "train_loss": [], "val_loss": []
        }

    def _wrap(self) -> tuple[nn.Module | None, nn.Module]:
        """(the DDP wrapper or None, the module that runs training steps) (chapter 12).

        `self.model` stays the plain TransformerLM: checkpoints never see DDP's `module.` or
        torch.compile's `_orig_mod.` prefixes, and `self.model.config` is always there.
        """
        ddp, engine = None, self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device] if self.device.type == "cuda" else None
            ddp = engine = DistributedDataParallel(self.model, device_ids=ids)
        if self.config.compile:
            engine = torch.compile(engine)
        return ddp, engine

    def lr(self, step: int) -> float:
        c = self.config
        return lr_at(step, c.lr, c.min_lr, c.warmup_steps, c.steps)

    def train_step(self) -> float:
        """One step: batch, zero_grad, forward, loss, backward (per micro-batch), clip, lr,
        optimizer step. With grad_accum K each micro-batch's loss is divided by K, so the
        summed gradient is that of the mean loss over all K micro-batches (chapter 12);
        under DDP the gradients are all-reduced once, after the last micro-batch.
        For a masked LM each micro-batch's loss is the mean over its own masked positions, so
        micro-batches (and processes) weigh equally, not masked tokens: close to, not exactly,
        the step of one K times larger batch.
        """
        c = self.config
        batches = step_batches(self.train_ids, c.batch_size, self.context_length,
                               self.generator, c.grad_accum, self.rank, self.world_size,
                               self.device)  # K pairs of (B/N, T)
        if c.mlm_mask_id is not None:  # masked LM (chapter 10): (inputs, labels) pairs
            batches = [mask_tokens(x, c.mlm_mask_id, self.model.config.vocab_size,
                                   c.mlm_probability, self.generator) for x, _ in batches]
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for k, (x, y) in enumerate(batches):
            last = k == len(batches) - 1
            skip_sync = self.ddp.no_sync() if self.ddp is not None and not last else None
            # a masked-LM batch with no masked position (tiny batches) has nothing to predict:
            # cross-entropy over no position is NaN, so it counts as loss 0 with gradient 0
            empty = c.mlm_mask_id is not None and not (y != IGNORE_INDEX).any()
            with skip_sync or contextlib.nullcontext():
                with autocast(self.device, c.precision):
                    logits = self.engine(x)  # (B/N, T, V)
                    loss = (logits.sum() * 0.0 if empty  # every weight still takes part (DDP)
                            else lm_loss(logits, y) / c.grad_accum)
                loss.backward()
            total += loss.detach().float()
        loss = distributed.all_reduce_mean(total)  # the global batch's loss, for the history
        if c.grad_clip is not None:
            clip_grad_norm(self.model.parameters(), c.grad_clip)
        lr = self.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step += 1
        h = self.history
        h["step"].append(self.step)
        h["loss"].append(loss.item())
        h["lr"].append(lr)
        return h["loss"][-1]

    def evaluate(self) -> tuple[float, float]:
        """(train loss, validation loss), each on the same fixed batches every time."""
        c = self.config
        args = (c.batch_size, self.context_length, c.eval_batches, c.seed + 1, self.device,
                c.precision, c.mlm_mask_id, c.mlm_probability)
        return evaluate(self.model, self.train_ids, *args), evaluate(self.model, self.val_ids, *args)

    def run(self, steps: int | None = None, progress: bool = True) -> dict[str, list]:
        """Train until config.steps (or for `steps` more, at most to config.steps)."""
        c = self.config
        end = c.steps if steps is None else min(c.steps, self.step + steps)
        bar = None
        if progress and self.rank == 0:  # one progress bar, not one per process
            from tqdm.auto import tqdm

            bar = tqdm(total=c.steps, initial=self.step, desc="training", unit="step")
        self.model.train()
        tokens_per_step = c.batch_size * c.grad_accum * self.context_length
        t0, start_step = time.perf_counter(), self.step
        try:
            while self.step < end:
                loss = self.train_step()
                if self.step % c.eval_interval == 0 or self.step == c.steps:
                    tr, va = self.evaluate()
                    self.history["eval_step"].append(self.step)
                    self.history["train_loss"].append(tr)
                    self.history["val_loss"].append(va)
                if bar is not None:
                    rate = (self.step - start_step) * tokens_per_step / (time.perf_counter() - t0)
                    post = {"loss": f"{loss:.3f}", "tok/s": f"{rate:,.0f}"}
                    if self.history["val_loss"]:
                        post["val"] = f"{self.history['val_loss'][-1]:.3f}"
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
        except (RuntimeError, distributed.dist.DistError) as e:
            if self.world_size > 1 and distributed.is_comm_failure(e):
                raise RuntimeError(
                    f"rank {self.rank} of {self.world_size}: lost contact with the other "
                    f"processes at step {self.step + 1} ({type(e).__name__}: "
                    f"{str(e).strip().splitlines()[0]}). Another process crashed or hangs; "
                    "its own error, printed above, is the cause") from e
            raise
        finally:
            if bar is not None:
                bar.close()
        return self.history

    # ------------------------------------------------------------------ checkpoints

    def save(
        self,
        folder: str | os.PathLike,
        extra: Callable[[Path], None] | None = None,
    ) -> None:
        """Write a checkpoint (weights, optimizer, RNG states, step, history) into `folder`.

        All or nothing: the checkpoint is written complete into a new folder beside `folder`,
        which then replaces it (two renames). Interrupted at any point, `folder` afterwards
        loads as the previous checkpoint or the new one; the next save removes what an
        interrupted save left behind (loading never deletes anything). Other files in a
        checkpoint folder (a tokenizer) are kept. `extra(new_folder)`, if given, writes more
        files (a tokenizer) into the new folder before the swap, so they change together; the
        kept files are then copies, which it may overwrite or delete.

        Because the whole folder is replaced, `folder` must be new, empty, or a checkpoint
        folder (see `check_save_folder`): a folder holding other files, the working directory
        or a folder above it is refused with a ValueError.

        Under torch.distributed only rank 0 writes; every process returns once it is written
        (chapter 12).
        """
        if self.rank != 0:
            distributed.barrier()  # wait for rank 0's files
            return
        folder = Path(folder).resolve()  # a symlinked folder: swap its target, keep the link
        check_save_folder(folder)
        opt = self.optimizer.state_dict()
        tensors = {f"state.{i}.{k}": v.detach().cpu().contiguous()
                   for i, s in opt["state"].items() for k, v in s.items()}
        tensors["rng.batches"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "step": self.step,
            "train_config": self.config.to_dict(),
            "history": self.history,
            "param_groups": opt["param_groups"],
        }
        meta = {"step": str(self.step)}
        with _save_lock(folder):
            _recover(folder)
            new = _sibling(folder, "saving")
            new.mkdir(parents=True)
            try:
                save_model(self.model, new, _last=False, _metadata=meta)
                write_atomic(new / "optimizer.safetensors",
                             lambda p: save_file(tensors, p, metadata=meta))
                write_atomic(new / "trainer_state.json", json.dumps(state, indent=1))
                _carry_over(folder, new, link=extra is None)
                if extra is not None:
                    extra(new)
            except BaseException:
                shutil.rmtree(new, ignore_errors=True)
                raise
            _swap_in(new, folder)
        distributed.barrier()  # the other ranks may go on

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        train_ids: Tensor,
        val_ids: Tensor,
        device: str | None = None,
        **changes,
    ) -> Trainer:
        """Rebuild a Trainer from `save`'s folder; `run()` then continues exactly where it was.

        `changes` overrides how the run executes (precision, compile, activation_checkpointing;
        chapter 12) without touching what it computes. Loading never deletes anything.
        """
        allowed = {"precision", "compile", "activation_checkpointing"}
        if set(changes) - allowed:
            raise ValueError(f"Trainer.load can change only {sorted(allowed)}, got "
                             f"{sorted(set(changes) - allowed)}")
        folder = _readable(Path(folder))
        state_path = folder / "trainer_state.json"
        if not state_path.is_file():
            raise FileNotFoundError(
                f"{state_path} not found: {folder} is not a training checkpoint "
                "(Trainer.save writes config.json, model.safetensors, optimizer.safetensors "
                "and trainer_state.json)"
            )
        state = json.loads(read_text(state_path))
        config = TrainConfig.from_dict(state["train_config"])
        if device is not None:
            config.device = device
        for key, value in changes.items():
            setattr(config, key, value)
        config.__post_init__()
        model = load_model(folder, _step=state["step"])
        self = cls(model, train_ids, val_ids, config)
        tensors, meta = read_safetensors(folder / "optimizer.safetensors")
        _check_step(folder / "optimizer.safetensors", meta, state["step"])
        opt_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("state."):
                _, i, name = key.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = value
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.generator.set_state(tensors["rng.batches"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.step = state["step"]
        self.history = state["history"]
        return self


def train(
    model: TransformerLM,
    train_ids: Tensor,
    val_ids: Tensor,
    config: TrainConfig,
    progress: bool = True,
) -> dict[str, list]:
    """Train `model` in place for config.steps; return the loss history for plotting.

    history["step"], ["loss"], ["lr"]: one entry per step (the batch's loss, the lr used);
    history["eval_step"], ["train_loss"], ["val_loss"]: one entry per validation.
    """
    return Trainer(model, train_ids, val_ids, config).run(progress=progress)


# ---------------------------------------------------------------------- model files


def save_model(
    model: TransformerLM,
    folder: str | os.PathLike,
    dtype: torch.dtype | None = None,
    *,
    _last: bool = True,
    _metadata: dict[str, str] | None = None,
) -> None:
    """Write config.json and model.safetensors into `folder` (created if needed), atomically.

    `dtype=torch.float16` halves the file (used for the shipped course model).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, t in _weights(model).items():
        t = t.detach().cpu()
        tensors[key] = (t.to(dtype) if dtype is not None else t).contiguous()
    config = json.dumps(model.config.to_dict(), indent=1)
    write_atomic(folder / "model.safetensors",
                 lambda p: save_file(tensors, p, metadata=_metadata or {}))
    write_atomic(folder / "config.json", config)


def load_model(
    folder: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    _step: int | None = None,
) -> TransformerLM:
    """A TransformerLM from a folder written by `save_model` or `Trainer.save` (float32 weights).

    A tensor whose name or shape does not match config.json is an error naming the first one.
    """
    folder = _readable(Path(folder))
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"model folder {folder} is a file, not a folder")
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: a model folder holds "
                                    "config.json and model.safetensors")
    config = ModelConfig.from_dict(json.loads(read_text(folder / "config.json")))
    tensors, meta = read_safetensors(folder / "model.safetensors")
    if _step is not None:
        _check_step(folder / "model.safetensors", meta, _step)
    model = TransformerLM(config)
    expected = _weights(model)
    for key, want in expected.items():
        if key not in tensors:
            raise ValueError(f"{folder / 'model.safetensors'} has no tensor {key!r} "
                             f"(shape {tuple(want.shape)} expected from config.json)")
        if tensors[key].shape != want.shape:
            raise ValueError(
                f"{folder / 'model.safetensors'}: tensor {key!r} has shape "
                f"{tuple(tensors[key].shape)} but config.json implies {tuple(want.shape)}"
            )
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise ValueError(f"{folder / 'model.safetensors'} has tensor {extra[0]!r}, which a model "
                         "with this config.json does not have")
    with torch.no_grad():
        for key, p in expected.items():
            p.copy_(tensors[key].to(p.dtype))
    return model.to(pick_device(None) if device is None else device)


def load_course_model(device: str | torch.device = "cpu"):
    """(model, tokenizer): the course's Shakespeare model, in eval mode, and its BPE tokenizer (ch. 00)."""
    from lmkit.tokenizer import BPETokenizer

    if not (COURSE_MODEL / "model.safetensors").is_file():
        raise FileNotFoundError(f"the course model is missing from {COURSE_MODEL}; rebuild it "
                                "with `make course-model`, or reinstall lmkit")
    return load_model(COURSE_MODEL, device=device).eval(), BPETokenizer.load(COURSE_MODEL)


def _weights(model: TransformerLM) -> dict[str, Tensor]:
    """The state dict without the tied copy of the embedding (safetensors stores each once)."""
    state = model.state_dict(keep_vars=True)
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # a model with head="none" has no lm_head
    return {k: v.data for k, v in state.items()}


def _check_step(path: Path, meta: dict[str, str], step: int) -> None:
    if "step" in meta and int(meta["step"]) != step:
        raise ValueError(f"{path} is from step {meta['step']} but trainer_state.json says step "
                         f"{step}: the checkpoint was only partly written; use another one")


CHECKPOINT_FILES = ("config.json", "model.safetensors", "optimizer.safetensors",
                    "trainer_state.json")


def check_save_folder(folder: str | os.PathLike) -> None:
    """Refuse a folder that `Trainer.save` must not replace: a file, the working directory or a
    folder above it, or a folder holding files other than a checkpoint's (ValueError naming it).

    Accepted: a folder that does not exist yet, an empty one, or a checkpoint folder (one with
    trainer_state.json, whose other files, e.g. a tokenizer, are carried over on each save).
    """
    folder = Path(folder).resolve()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; Trainer.save writes a folder")
    try:
        cwd = Path.cwd().resolve()
    except FileNotFoundError:  # the working directory itself was deleted
        cwd = None
    if cwd is not None and (folder == cwd or folder in cwd.parents):
        raise ValueError(
            f"cannot save a checkpoint into {folder}: it is the working directory or a folder "
            "above it, and Trainer.save replaces the whole folder; give a new folder dedicated "
            f"to the checkpoint, e.g. {folder / 'checkpoint'}"
        )
    if folder.is_dir() and not (folder / "trainer_state.json").is_file():
        others = sorted(p.name for p in folder.iterdir() if p.name not in CHECKPOINT_FILES)
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise ValueError(
                f"cannot save a checkpoint into {folder}: it holds other files ({shown}) and "
                "is not a checkpoint folder, and Trainer.save replaces the whole folder; give "
                "a new or empty folder dedicated to the checkpoint (files to keep with it, a "
                "tokenizer say, go in with Trainer.save(folder, extra=write_them))"
            )


def _sibling(folder: Path, tag: str) -> Path:
    """`.NAME.tag` beside `folder`: where a save writes (`saving`), parks the old one (`old`)
    or records its process id (`lock`)."""
    folder = folder.resolve()
    return folder.parent / f".{folder.name}.{tag}"


LOCK_STALE_S = 600.0  # a lock file without a readable live pid is stale after this long


def _lock_is_live(lock: Path) -> bool:
    """Whether the save that wrote `lock` may still be running: its pid is alive, or (pid not
    written yet, or no way to check one) the lock is younger than LOCK_STALE_S."""
    try:
        text = lock.read_text().strip()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if not text.isdigit() or os.name == "nt":  # Windows: os.kill(pid, 0) would kill it
        return age < LOCK_STALE_S
    try:
        os.kill(int(text), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


@contextmanager
def _save_lock(folder: Path):
    """Hold `.NAME.lock` (holding this process's id) while saving into `folder`; a second
    writer gets a RuntimeError naming the first. A lock left by a killed save is taken over."""
    lock = _sibling(folder, "lock")
    folder.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            if _lock_is_live(lock):
                owner = lock.read_text().strip() or "?"
                raise RuntimeError(
                    f"{folder} is being saved by another writer (process {owner}, lock file "
                    f"{lock}); wait for it to finish, or delete {lock} if no save is running"
                ) from None
            lock.unlink(missing_ok=True)  # left by a save that was killed
    else:
        raise RuntimeError(f"could not take the lock {lock} for saving into {folder}")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        yield
    finally:
        lock.unlink(missing_ok=True)


def _readable(folder: Path) -> Path:
    """Where a reader finds the newest complete checkpoint for `folder`, deleting nothing.

    That is `folder` itself, except when a save stopped between its two renames (no `folder`,
    the old one parked as `.NAME.old`): then the complete new `.NAME.saving` (or the parked
    old one). Only `Trainer.save` tidies such leftovers up.
    """
    if folder.exists():
        return folder
    new, old = _sibling(folder, "saving"), _sibling(folder, "old")
    if old.is_dir():
        return new if new.is_dir() else old
    return folder


def _carry_over(old: Path, new: Path, link: bool = True) -> None:
    """Hard-link (or copy) every file of `old` that is not part of a checkpoint into `new`.

    `link=False` copies: the files may then be written in place (by `Trainer.save`'s `extra`)
    without changing the old checkpoint's files through a shared hard link.
    """
    if not old.is_dir():
        return
    put = _link_or_copy if link else _copy
    for src in old.iterdir():
        if src.name in CHECKPOINT_FILES:
            continue
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, new / src.name, symlinks=True, copy_function=put)
        else:
            put(src, new / src.name)
    shutil.copymode(old, new)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        _copy(src, dst)


def _copy(src, dst) -> None:
    shutil.copy2(src, dst, follow_symlinks=False)


def _swap_in(new: Path, folder: Path) -> None:
    """Replace `folder` by the complete folder `new`: park the old one, rename, delete it."""
    old = _sibling(folder, "old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(new, folder)  # interrupted before this line: _recover finishes the swap
    _fsync_folder(folder.parent)  # the renames reach the disk before the old one goes
    if old.exists():
        shutil.rmtree(old)


def _recover(folder: Path) -> None:
    """Tidy up after an interrupted `Trainer.save`, keeping the newest complete checkpoint.
    Called only by `Trainer.save`, holding the save lock: no other writer is active.

    `.NAME.saving` is complete only once `folder` has been parked as `.NAME.old`; a missing
    `folder` with a parked one means the swap stopped between its two renames.
    """
    folder = folder.resolve()
    new, old = _sibling(folder, "saving"), _sibling(folder, "old")
    if not folder.exists() and old.exists():
        os.replace(new if new.exists() else old, folder)
    for leftover in (new, old):
        if leftover.exists():
            shutil.rmtree(leftover)
