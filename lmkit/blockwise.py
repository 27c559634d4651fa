"""The FlashAttention idea in PyTorch: attention block by block with an online softmax (ch. 09).

Plain attention builds the whole (T, T) score matrix, whose memory grows with T^2. But
softmax(s) v can be computed from blocks of keys, one after another, keeping per query only

    m   the largest score seen so far        (B, H, Tq, 1)
    l   the sum of exp(score - m) so far     (B, H, Tq, 1)
    o   the sum of exp(score - m) * value     (B, H, Tq, D)

When a new block raises the maximum from m to m', the old sums are rescaled by exp(m - m'):
`merge_softmax_blocks`. At the end the output is o / l. Memory: one (block_q, block_k) tile
of scores at a time instead of (Tq, Tk). FlashAttention (Dao et al., 2022) does exactly this
inside one GPU kernel; `F.scaled_dot_product_attention` is PyTorch's version of such kernels.

`peak_bytes(fn)` measures the largest amount of tensor memory alive while `fn` runs.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["merge_softmax_blocks", "blockwise_attention", "peak_bytes"]


def merge_softmax_blocks(
    m1: Tensor, l1: Tensor, o1: Tensor, m2: Tensor, l2: Tensor, o2: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Combine the running (max, sum, weighted values) of two sets of keys into one.

    Each part was computed relative to its own max; both are rescaled to the common max m.
    A row whose max is -inf saw no key (all masked): that part contributes nothing, even if
    its sums are nan (exp(-inf - -inf)), and two such parts give sums of 0, not nan.
    """
    m = torch.maximum(m1, m2)  # (..., Tq, 1)
    safe = m.clamp_min(torch.finfo(m.dtype).min)  # two empty parts (-inf): no nan, sums stay 0
    a1, a2 = torch.exp(m1 - safe), torch.exp(m2 - safe)  # how much each part shrinks
    empty1, empty2 = m1 == float("-inf"), m2 == float("-inf")  # (..., Tq, 1) rows with no key
    l1, o1 = l1.masked_fill(empty1, 0.0), o1.masked_fill(empty1, 0.0)
    l2, o2 = l2.masked_fill(empty2, 0.0), o2.masked_fill(empty2, 0.0)
    return m, a1 * l1 + a2 * l2, a1 * o1 + a2 * o2


def blockwise_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, block_q: int = 128,
    block_k: int = 128,
) -> Tensor:
    """softmax(q k^T / sqrt(D)) v for q (B, H, Tq, D), k and v (B, H, Tk, D), block by block.

    With `causal`, the Tq queries are the last Tq of the Tk positions (as with a KV cache);
    key blocks entirely in a query block's future are skipped, never computed.
    """
    if not all(isinstance(b, int) and not isinstance(b, bool) and b > 0
               for b in (block_q, block_k)):  # True would be a block of 1
        raise ValueError(f"block sizes must be positive integers, got block_q={block_q!r}, "
                         f"block_k={block_k!r}")
    if q.dim() < 2 or q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"q, k and v need the same leading (B, H) dimensions, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"shapes do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    Tq, Tk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    if causal and Tq > Tk:
        raise ValueError(f"causal attention needs Tq <= Tk, got {Tq} > {Tk}")
    scale = 1.0 / math.sqrt(D)
    offset = Tk - Tq  # query i sits at position offset + i
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    for i in range(0, Tq, block_q):
        qi = q[..., i : i + block_q, :] * scale  # (B, H, bq, D)
        bq = qi.shape[-2]
        m = torch.full((*qi.shape[:-1], 1), float("-inf"), dtype=q.dtype, device=q.device)
        l = torch.zeros_like(m)  # noqa: E741  (the paper's name)
        o = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        last_key = offset + i + bq if causal else Tk  # keys at or after it are all masked
        for j in range(0, last_key, block_k):
            s = qi @ k[..., j : j + block_k, :].transpose(-2, -1)  # (B, H, bq, bk) one tile
            if causal and j + s.shape[-1] > offset + i:  # the tile crosses the diagonal
                q_pos = torch.arange(offset + i, offset + i + bq, device=q.device)[:, None]
                k_pos = torch.arange(j, j + s.shape[-1], device=q.device)[None, :]
                s = s.masked_fill(k_pos > q_pos, float("-inf"))
            m_tile = s.amax(dim=-1, keepdim=True)  # (B, H, bq, 1); -inf: a row sees no key
            p = torch.exp(s - m_tile.clamp_min(torch.finfo(s.dtype).min))  # (B, H, bq, bk)
            m, l, o = merge_softmax_blocks(  # noqa: E741
                m, l, o, m_tile, p.sum(dim=-1, keepdim=True), p @ v[..., j : j + block_k, :]
            )
        out[..., i : i + bq, :] = o / l
    return out


class _LiveTensors(TorchDispatchMode):
    """Counts the bytes of every tensor storage created inside it, until it is freed."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            storage = t.untyped_storage()
            if storage.data_ptr() in inputs or storage.nbytes() == 0:
                continue  # a view of an input, or an in-place result: no new memory
            inputs.add(storage.data_ptr())
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, storage.nbytes())  # when the memory goes
        return out


def _tensors(tree) -> list[Tensor]:
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [t for x in tree for t in _tensors(x)]
    if isinstance(tree, dict):
        return [t for x in tree.values() for t in _tensors(x)]
    return []


def peak_bytes(fn: Callable[[], object]) -> int:
    """The most bytes of new tensors alive at once while `fn()` runs (inputs not counted)."""
    mode = _LiveTensors()
    with mode:
        result = fn()
    del result
    return mode.peak
