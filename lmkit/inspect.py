"""Named activations: read them, replace them (chapter 11).

`run_with_cache(model, ids)` runs a forward pass and returns the logits and a dict of named
activations; `hooks(model, {name: fn})` replaces activations by `fn(activation)` while the
context is open (ablation, activation patching). The names follow TransformerLens:

    embed                       (B, T, C)     token (+ position) embedding, the stream's start
    blocks.{i}.resid_pre        (B, T, C)     the stream entering block i
    blocks.{i}.attn.pattern     (B, H, T, Tk) attention weights, one row per query
    blocks.{i}.attn.z           (B, T, H, D)  each head's output, before o_proj
    blocks.{i}.attn.out         (B, T, C)     what attention writes (o_proj's output)
    blocks.{i}.resid_mid        (B, T, C)     the stream after the attention add
    blocks.{i}.mlp.post         (B, T, d_ff)  the FFN's hidden activations (after the activation)
    blocks.{i}.mlp.out          (B, T, C)     what the FFN writes
    blocks.{i}.resid_post       (B, T, C)     the stream leaving block i
    final                       (B, T, C)     after the final norm, what the LM head reads

Nothing is hooked unless asked for: PyTorch forward hooks exist only inside `run_with_cache`
and `hooks`, and the two `HookPoint`s in the model (the stream after attention, the pattern)
are identities otherwise. Attention computes its pattern only when it is hooked, so the fused
kernel (`F.scaled_dot_product_attention`) is replaced by the written-out path just then.

For pre-norm models the stream is a sum (chapter 05): resid_post of the last block equals
`embed` plus every `attn.out` and `mlp.out`. `head_outputs`, `normalize_like` and
`logit_lens` are the small pieces that chapter 11's attributions are built from.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from lmkit.model import TransformerLM

__all__ = [
    "HookPoint", "hook_names", "run_with_cache", "hooks", "head_outputs", "normalize_like",
    "logit_lens",
]

BLOCK_NAMES = (
    "resid_pre", "attn.pattern", "attn.z", "attn.out", "resid_mid", "mlp.post", "mlp.out",
    "resid_post",
)
_NAME = re.compile(r"blocks\.(0|[1-9]\d*)\.(" + "|".join(re.escape(n) for n in BLOCK_NAMES) + r")")


class HookPoint(nn.Identity):
    """An identity that names an activation so that `lmkit.inspect` can read or replace it.

    Unhooked it costs one function call; `active` tells the model whether anyone listens.
    """

    @property
    def active(self) -> bool:
        return bool(self._forward_hooks)


def hook_names(model: TransformerLM) -> list[str]:
    """Every activation name of `model`, in the order the forward pass computes them."""
    blocks = [f"blocks.{i}.{n}" for i in range(len(model.blocks)) for n in BLOCK_NAMES]
    return ["embed", *blocks, "final"]


# A site is where a name lives: (module, "out" for its output or "in" for its first input,
# a function viewing the tensor as the user sees it, and one viewing it back).
_Site = tuple[nn.Module, str, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]


def _same(t: Tensor) -> Tensor:
    return t


def _site(model: TransformerLM, name: str) -> _Site:
    if not isinstance(name, str):
        raise TypeError(f"activation names are strings, got {name!r}")
    if name == "embed":
        return model.drop, "out", _same, _same
    if name == "final":
        return model.norm_f, "out", _same, _same
    m = _NAME.fullmatch(name)
    if m is None:
        raise ValueError(
            f"unknown activation name {name!r}; names are 'embed', 'final' and "
            f"'blocks.{{i}}.X' with X one of {list(BLOCK_NAMES)} (see hook_names(model))"
        )
    i, what = int(m.group(1)), m.group(2)
    if i >= len(model.blocks):
        raise ValueError(f"{name!r}: the model has {len(model.blocks)} blocks, numbered "
                         f"0..{len(model.blocks) - 1}")
    block = model.blocks[i]
    attn = block.attn
    if what == "resid_pre":
        return block, "in", _same, _same
    if what == "resid_post":
        return block, "out", _same, _same
    if what == "resid_mid":
        return block.hook_resid_mid, "out", _same, _same
    if what == "attn.pattern":
        return attn.hook_pattern, "out", _same, _same
    if what == "attn.out":
        return attn, "out", _same, _same
    if what == "attn.z":  # o_proj reads (B, T, H * D): show it as (B, T, H, D)
        H, D = attn.n_heads, attn.head_dim
        return (attn.o_proj, "in", lambda t: t.unflatten(-1, (H, D)),
                lambda t: t.flatten(-2))
    if what == "mlp.out":
        return block.mlp, "out", _same, _same
    return block.mlp.down_proj, "in", _same, _same  # mlp.post


@contextmanager
def _hooked(model: TransformerLM, fns: Mapping[str, Callable[[Tensor], Tensor | None]]
            ) -> Iterator[None]:
    """Register `fns[name](activation)` at each name; a tensor it returns replaces the
    activation, None leaves it as it was. Every hook is removed on exit."""
    handles = []

    def wrap(name, fn, view, unview):
        def apply(t: Tensor) -> Tensor | None:
            new = fn(view(t))
            if new is None:
                return None
            if not isinstance(new, Tensor) or new.shape != view(t).shape:
                got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
                raise ValueError(f"the hook on {name!r} returned {got}; it must return a "
                                 f"tensor of the activation's shape {tuple(view(t).shape)} "
                                 "(or None to leave it unchanged)")
            if new.dtype != t.dtype or new.device != t.device:
                raise ValueError(f"the hook on {name!r} returned a {new.dtype} tensor on "
                                 f"{new.device}; the activation is {t.dtype} on {t.device}: "
                                 "return it in the same dtype and device")
            return unview(new)
        return apply

    try:
        for name, fn in fns.items():
            module, where, view, unview = _site(model, name)
            if not callable(fn):
                raise TypeError(f"the hook for {name!r} must be a function, got {fn!r}")
            apply = wrap(name, fn, view, unview)
            if where == "out":
                handles.append(module.register_forward_hook(
                    lambda mod, args, out, apply=apply: apply(out)))
            else:  # replace the first positional input, keep the others
                def pre(mod, args, apply=apply):
                    new = apply(args[0])
                    return None if new is None else (new, *args[1:])
                handles.append(module.register_forward_pre_hook(pre))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def hooks(model: TransformerLM, fns: Mapping[str, Callable[[Tensor], Tensor | None]]
          ) -> Iterator[TransformerLM]:
    """While open, every forward pass replaces activation `name` by `fn(activation)` (ch. 11).

    `fn` receives the activation in the shape listed in this module's docstring and returns
    a tensor of that shape (or None to keep it). Used for ablation and activation patching:

        with hooks(model, {"blocks.0.attn.z": zero_head_3}):
            logits = model(ids)
    """
    if not isinstance(fns, Mapping):
        raise TypeError(f"hooks(model, fns) needs a dict {{name: function}}, got {type(fns).__name__}")
    with _hooked(model, fns):
        yield model


def run_with_cache(
    model: TransformerLM, ids: Tensor, names: Iterable[str] | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits (B, T, V) and a dict name -> activation, detached, for `names` (default: all).

    Runs without gradients. Asking for `attn.pattern` makes attention take the written-out
    path, whose logits may differ from the fused kernel's by float rounding (~1e-6).
    Use `model.eval()` first: with dropout active the activations are random.
    """
    if isinstance(names, str):
        raise TypeError(f"names must be a list of names, got the string {names!r}; "
                        f"write names=[{names!r}]")
    wanted = hook_names(model) if names is None else list(names)
    for name in wanted:
        _site(model, name)  # a wrong name fails before the forward pass
    cache: dict[str, Tensor] = {}

    def store(name):
        def fn(t: Tensor) -> None:
            cache[name] = t.detach()
        return fn

    with torch.no_grad(), _hooked(model, {n: store(n) for n in wanted}):
        logits = model(ids)
    order = {n: k for k, n in enumerate(hook_names(model))}
    return logits, {n: cache[n] for n in sorted(cache, key=order.__getitem__)}


def head_outputs(model: TransformerLM, cache: Mapping[str, Tensor], layer: int) -> Tensor:
    """What each head of block `layer` writes into the stream: z_h W_O^h, (B, T, H, C).

    Attention's output is their sum over heads plus o_proj's bias (if any), chapter 11.
    """
    n = len(model.blocks)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"layer must be a block number 0..{n - 1}, got {layer!r}")
    if f"blocks.{layer}.attn.z" not in cache:
        raise ValueError(f"the cache has no 'blocks.{layer}.attn.z'; run run_with_cache with "
                         f"names=None (all) or names including 'blocks.{layer}.attn.z'")
    attn = model.blocks[layer].attn
    z = cache[f"blocks.{layer}.attn.z"]  # (B, T, H, D)
    H, D = attn.n_heads, attn.head_dim
    W_O = attn.o_proj.weight.T.reshape(H, D, -1)  # (H, D, C): rows of W_O^T per head
    return torch.einsum("bthd,hdc->bthc", z, W_O.to(z.dtype))  # (B, T, H, C)


def normalize_like(norm: nn.Module, x: Tensor, resid: Tensor) -> Tensor:
    """The linear part of `norm` applied to a piece x of the stream, scale frozen from `resid`.

    A norm divides by a statistic of the whole stream; freezing that divisor at the value it
    had for `resid` makes the norm linear, so norm(resid) = sum of normalize_like(norm, piece,
    resid) over the pieces of resid, plus norm's bias (chapter 11, direct logit attribution).
    """
    if getattr(norm, "eps", None) is None or getattr(norm, "weight", None) is None:
        raise TypeError(
            f"normalize_like needs a LayerNorm or an RMSNorm (with eps and weight), got "
            f"{type(norm).__name__}; a post-norm model's norm_f is an Identity: its last norm is "
            "the last block's norm2")
    eps = norm.eps
    r32, x32 = resid.float(), x.float()
    if hasattr(norm, "bias"):  # LayerNorm: centre each piece, divide by the stream's std
        std = torch.sqrt(r32.var(dim=-1, keepdim=True, unbiased=False) + eps)  # (..., 1)
        y = (x32 - x32.mean(dim=-1, keepdim=True)) / std
    else:  # RMSNorm: divide by the stream's root mean square
        y = x32 * torch.rsqrt(r32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (y * norm.weight.float()).to(x.dtype)


def logit_lens(model: TransformerLM, resid: Tensor) -> Tensor:
    """Read a stream state as if it were the last one: the model's head on norm_f(resid), so
    lm_head(norm_f(resid)), with a masked LM's transform between them (chapters 10, 11)."""
    return model.head(model.norm_f(resid))  # (..., V); a model with no head raises
