"""Training a TransformerLM: loss, optimizer, schedule, loop and checkpoints (chapter 07).

    loss         next-token cross-entropy: -log p(right next token), averaged over B * T
    optimizer    AdamW; weight decay on matrices (2-D), none on biases and norm gains (1-D)
    schedule     linear warm-up to `lr`, then cosine decay to `min_lr` at the last step
    clipping     the gradient is rescaled so that its global norm is at most `grad_clip`
    Trainer      the loop, periodic validation, a tqdm progress bar, the loss history
    checkpoints  safetensors for tensors + JSON for the rest, saved all or nothing (a new
                 folder swapped in); resuming from one continues the run exactly

A checkpoint folder holds:

    config.json              ModelConfig.to_dict()
    model.safetensors        the weights (a tied lm_head is stored once, as tok_emb.weight)
    optimizer.safetensors    AdamW's moments and the RNG states (training checkpoints only)
    trainer_state.json       step, TrainConfig, loss history, optimizer hyper-parameters

Nothing is unpickled on load: safetensors holds only tensors, JSON only plain values.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from lmkit.data import get_batch
from lmkit.io import read_safetensors, read_text, write_atomic
from lmkit.model import ModelConfig, TransformerLM

__all__ = [
    "TrainConfig", "Trainer", "train", "pick_device", "lm_loss", "lr_at",
    "configure_optimizer", "clip_grad_norm", "evaluate", "save_model", "load_model",
    "sequence_loss", "load_course_model", "COURSE_MODEL",
]

# The small model trained on Shakespeare by tools/train_course_model.py, shipped inside the
# package (package data, so a normal `pip install` has it too): lmkit/models/shakespeare.
COURSE_MODEL = Path(str(resources.files("lmkit").joinpath("models", "shakespeare")))


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

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_interval", "eval_batches"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        self.betas = tuple(self.betas)

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
    """Mean next-token cross-entropy: logits (B, T, V), targets (B, T) -> a scalar."""
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
) -> float:
    """Mean loss over `batches` random batches drawn with a generator seeded with `seed`:
    the same batches every call, so successive estimates differ only because the model did.
    """
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x, y = get_batch(ids, batch_size, context_length, generator=g, device=device)
        total += lm_loss(model(x), y).item()
    model.train(was_training)
    return total / batches


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
        self.optimizer = configure_optimizer(model, config.lr, config.weight_decay, config.betas)
        self.generator = torch.Generator().manual_seed(config.seed)  # batch offsets
        torch.manual_seed(config.seed)  # dropout, if any
        self.step = 0
        self.history: dict[str, list] = {
            "step": [], "loss": [], "lr": [], "eval_step": [], "train_loss": [], "val_loss": []
        }

    def lr(self, step: int) -> float:
        c = self.config
        return lr_at(step, c.lr, c.min_lr, c.warmup_steps, c.steps)

    def train_step(self) -> float:
        """One step: batch, forward, loss, zero_grad, backward, clip, lr, optimizer step."""
        c = self.config
        x, y = get_batch(self.train_ids, c.batch_size, self.context_length,
                         generator=self.generator, device=self.device)  # (B, T), (B, T)
        loss = lm_loss(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
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
        args = (c.batch_size, self.context_length, c.eval_batches, c.seed + 1, self.device)
        return evaluate(self.model, self.train_ids, *args), evaluate(self.model, self.val_ids, *args)

    def run(self, steps: int | None = None, progress: bool = True) -> dict[str, list]:
        """Train until config.steps (or for `steps` more, at most to config.steps)."""
        c = self.config
        end = c.steps if steps is None else min(c.steps, self.step + steps)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=c.steps, initial=self.step, desc="training", unit="step")
        self.model.train()
        tokens_per_step = c.batch_size * self.context_length
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
        finally:
            if bar is not None:
                bar.close()
        return self.history

    # ------------------------------------------------------------------ checkpoints

    def save(self, folder: str | os.PathLike) -> None:
        """Write a checkpoint (weights, optimizer, RNG states, step, history) into `folder`.

        All or nothing: the checkpoint is written complete into a new folder beside `folder`,
        which then replaces it (two renames). Interrupted at any point, `folder` afterwards
        loads as the previous checkpoint or the new one; the next save or load removes what
        an interrupted save left behind. Other files in `folder` (a tokenizer) are kept.
        """
        folder = Path(folder).resolve()  # a symlinked folder: swap its target, keep the link
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder} is a file; Trainer.save writes a folder")
        _recover(folder)
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
        new = _sibling(folder, "saving")
        new.mkdir(parents=True)
        try:
            save_model(self.model, new, _last=False, _metadata=meta)
            write_atomic(new / "optimizer.safetensors",
                         lambda p: save_file(tensors, p, metadata=meta))
            write_atomic(new / "trainer_state.json", json.dumps(state, indent=1))
            _carry_over(folder, new)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        _swap_in(new, folder)

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        train_ids: Tensor,
        val_ids: Tensor,
        device: str | None = None,
    ) -> Trainer:
        """Rebuild a Trainer from `save`'s folder; `run()` then continues exactly where it was."""
        folder = Path(folder)
        _recover(folder)
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
    folder = Path(folder)
    _recover(folder)
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
        state.pop("lm_head.weight")
    return {k: v.data for k, v in state.items()}


def _check_step(path: Path, meta: dict[str, str], step: int) -> None:
    if "step" in meta and int(meta["step"]) != step:
        raise ValueError(f"{path} is from step {meta['step']} but trainer_state.json says step "
                         f"{step}: the checkpoint was only partly written; use another one")


CHECKPOINT_FILES = ("config.json", "model.safetensors", "optimizer.safetensors",
                    "trainer_state.json")


def _sibling(folder: Path, tag: str) -> Path:
    """`.NAME.tag` beside `folder`: where a save writes (`saving`) or parks the old one (`old`)."""
    folder = folder.resolve()
    return folder.parent / f".{folder.name}.{tag}"


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) every file of `old` that is not part of a checkpoint into `new`."""
    if not old.is_dir():
        return
    for src in old.iterdir():
        if src.name in CHECKPOINT_FILES:
            continue
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, new / src.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, new / src.name)
    shutil.copymode(old, new)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _swap_in(new: Path, folder: Path) -> None:
    """Replace `folder` by the complete folder `new`: park the old one, rename, delete it."""
    old = _sibling(folder, "old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(new, folder)  # interrupted before this line: _recover finishes the swap
    if old.exists():
        shutil.rmtree(old)


def _recover(folder: Path) -> None:
    """Tidy up after an interrupted `Trainer.save`, keeping the newest complete checkpoint.

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
