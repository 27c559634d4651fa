"""Attention: scores, masks, multi-head attention and the KV cache (chapters 03, 08, 09).

- `scaled_dot_product_attention`: softmax(q k^T / sqrt(D)) v written out, one line per step.
- `causal_mask`: who may attend to whom; True = may attend.
- `MultiHeadAttention`: q/k/v/o projections (HF names), multi-head, grouped-query (GQA/MQA),
  sliding window, RoPE, and PyTorch's fused kernel behind one flag (`fast`, default True;
  `fast=False` runs the written-out `scaled_dot_product_attention` of chapter 03).
- `KVCache`: the keys and values of one layer, grown one step at a time while decoding.

Shapes: B batch, T time (query length), Tk key length, C channels, H heads, D head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmkit._validate import check_fast
from lmkit.embeddings import RotaryEmbedding
from lmkit.inspect import HookPoint

__all__ = [
    "scaled_dot_product_attention", "causal_mask", "KVCache", "RollingKVCache", "MultiHeadAttention",
]


def _check_mask(mask: Tensor, shape: tuple[int, ...]) -> None:
    """Raise unless `mask` is boolean and broadcastable to `shape` = (B, H, Tq, Tk)."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = may attend), got dtype {mask.dtype}")
    ok = mask.dim() <= 4 and all(
        m in (1, s) for m, s in zip(reversed(mask.shape), reversed(shape), strict=False)
    )
    if not ok:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to (B, H, Tq, Tk) = {shape}"
        )


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    return_weights: bool = False,
    dropout_p: float = 0.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(D), masked) v for q (B, H, Tq, D), k and v (B, H, Tk, D) (chapter 03).

    `mask` is boolean, True where a query may attend to a key, broadcastable to (B, H, Tq, Tk).
    A query with no key it may attend to (a left-padding position) gets all-zero weights and
    a zero output, as in PyTorch's kernel: softmax of a row of -inf alone would be NaN.
    """
    *_, Tq, D = q.shape
    Tk = k.shape[-2]
    scores = (q / math.sqrt(D)) @ k.transpose(-2, -1)  # (B, H, Tq, Tk); scaling q is cheaper
    if mask is not None:
        _check_mask(mask, (*scores.shape[:-2], Tq, Tk))
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, Tq, Tk), each row sums to 1
    if mask is not None:
        no_key = ~mask.any(dim=-1, keepdim=True)  # queries that may attend to nothing
        if no_key.any():
            weights = weights.masked_fill(no_key, 0.0)  # their rows of NaN -> 0
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v  # (B, H, Tq, D)
    return (out, weights) if return_weights else out


def causal_mask(
    Tq: int, Tk: int | None = None, device: torch.device | str | None = None,
    window: int | None = None,
) -> Tensor:
    """Boolean (Tq, Tk) mask: query i sits at position Tk - Tq + i and sees keys j <= it (ch. 03).

    With a KV cache the Tq queries are the last of Tk positions (chapter 08); with `window`
    a query sees only itself and the window - 1 keys before it (sliding window, chapter 09).
    """
    Tk = Tq if Tk is None else Tk
    if Tq > Tk:
        raise ValueError(f"causal mask needs Tq <= Tk (queries are the last keys), got {Tq} > {Tk}")
    if window is not None and window < 1:
        raise ValueError(f"window must be a positive number of positions, got {window}")
    q_pos = torch.arange(Tk - Tq, Tk, device=device)[:, None]  # (Tq, 1)
    k_pos = torch.arange(Tk, device=device)[None, :]  # (1, Tk)
    mask = k_pos <= q_pos  # (Tq, Tk)
    if window is not None:
        mask = mask & (q_pos - k_pos < window)
    return mask


class KVCache:
    """Keys and values of the positions seen so far, for one attention layer (chapter 08).

    `update` appends the new step's keys and values and returns all of them; `length` is the
    number of cached positions, so the next token's position (for RoPE and learned positions).
    `k` and `v` are the cached tensors (B, H_kv, length, D). Appending with `torch.cat` would
    copy the whole cache at every step; instead they are views into buffers with room for
    `CHUNK` more positions, which grow (one copy) only when full.
    """

    CHUNK = 256  # positions of spare room added when the buffers are full

    def __init__(self):
        self.k: Tensor | None = None  # (B, H_kv, T_past, D), a view into _k_buf
        self.v: Tensor | None = None  # (B, H_kv, T_past, D), a view into _v_buf
        self._k_buf: Tensor | None = None  # (B, H_kv, capacity, D)
        self._v_buf: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        past, T = self.length, k.shape[-2]
        if k.requires_grad or v.requires_grad:  # autograd must see every step: no in-place
            self.k = k if self.k is None else torch.cat((self.k, k), dim=-2)
            self.v = v if self.v is None else torch.cat((self.v, v), dim=-2)
            self._k_buf = self._v_buf = None
            return self.k, self.v
        buf = self._k_buf
        if (buf is None or buf.shape[-2] < past + T or buf.shape[:2] != k.shape[:2]
                or buf.dtype != k.dtype or buf.device != k.device):
            capacity = -(-(past + T) // self.CHUNK) * self.CHUNK  # rounded up to a chunk
            self._k_buf = k.new_empty(*k.shape[:-2], capacity, k.shape[-1])
            self._v_buf = v.new_empty(*v.shape[:-2], capacity, v.shape[-1])
            if past:  # the one copy per CHUNK positions
                self._k_buf[..., :past, :] = self.k
                self._v_buf[..., :past, :] = self.v
        self._k_buf[..., past : past + T, :] = k  # written in place
        self._v_buf[..., past : past + T, :] = v
        self.k = self._k_buf[..., : past + T, :]  # (B, H_kv, T_past + T, D)
        self.v = self._v_buf[..., : past + T, :]
        return self.k, self.v

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (LongTensor), e.g. the surviving beams of beam search."""
        if self.k is not None:
            self.k, self.v = self.k[index], self.v[index]
            self._k_buf = self._v_buf = None  # the next update copies into new buffers

    def __repr__(self) -> str:
        shape = None if self.k is None else tuple(self.k.shape)
        return f"KVCache(length={self.length}, k_shape={shape})"


class RollingKVCache(KVCache):
    """A KV cache for sliding-window attention that never holds more than `window - 1` positions.

    A query sees itself and the `window - 1` keys before it (chapter 09), so older keys can go:
    memory stays bounded however long the text. `length` still counts every position seen (the
    next token's position, for RoPE); `stored` is how many are kept.
    """

    def __init__(self, window: int):
        super().__init__()
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be a positive number of positions, got {window!r}")
        self.window, self.seen = window, 0

    @property
    def length(self) -> int:
        return self.seen

    @property
    def stored(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Return the kept keys/values followed by the new ones; keep the last window - 1."""
        if self.k is not None:
            k = torch.cat((self.k, k), dim=-2)  # (B, H_kv, stored + T, D)
            v = torch.cat((self.v, v), dim=-2)
        self.seen += k.shape[-2] - self.stored
        keep = min(self.window - 1, k.shape[-2])
        self.k = k[..., k.shape[-2] - keep :, :]  # (B, H_kv, <= window - 1, D)
        self.v = v[..., v.shape[-2] - keep :, :]
        return k, v

    def __repr__(self) -> str:
        return f"RollingKVCache(window={self.window}, length={self.length}, stored={self.stored})"


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with GQA, sliding window, RoPE and a KV cache (ch. 03, 08, 09).

    n_kv_heads < n_heads shares each key/value head among n_heads // n_kv_heads query heads.
    `fast=True` (the default) uses `F.scaled_dot_product_attention`; `fast=False`, and any call
    with `return_weights=True`, the written-out `scaled_dot_product_attention` above.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        bias: bool = True,
        causal: bool = True,
        dropout: float = 0.0,
        window: int | None = None,
        fast: bool = True,
        rope_theta: float | None = None,
        context_length: int = 2048,
        rope_layout: str = "half",
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if n_kv_heads < 1 or n_heads % n_kv_heads != 0:
            raise ValueError(f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
        if window is not None and not causal:
            raise ValueError("a sliding window needs causal=True")
        check_fast(fast)
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.causal, self.window, self.fast, self.dropout = causal, window, fast, dropout
        kv_dim = n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.hook_pattern = HookPoint()  # names the weights; computed only when hooked (ch. 11)
        self.rotary_emb = None
        if rope_theta is not None:
            self.rotary_emb = RotaryEmbedding(self.head_dim, context_length, rope_theta,
                                              rope_layout)

    def forward(
        self,
        x: Tensor,
        cache: KVCache | None = None,
        return_weights: bool = False,
        mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, T, C) -> (B, T, C); with `return_weights` also the (B, H, T, Tk) weights.

        `mask` (optional, boolean, broadcastable to (B, H, T, Tk)) is combined with the causal
        mask, e.g. `attention_mask[:, None, None, :]` to hide padding keys. A query left with no
        key at all (a left-padding position) gets a zero output on both paths, never NaN.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"expected x of shape (B, T, C) with C={self.d_model}, got {tuple(x.shape)}"
            )
        B, T, C = x.shape
        H, H_kv, D = self.n_heads, self.n_kv_heads, self.head_dim
        start = 0 if cache is None else cache.length  # position of x's first token

        q, k, v = self._project_qkv(x)  # (B, T, C), (B, T, H_kv*D), (B, T, H_kv*D)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
        v = v.view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(q, start), self.rotary_emb(k, start)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, H_kv, Tk, D) with Tk = start + T
        Tk = k.shape[-2]
        # one new query (cached decoding) sits after every key, so it may see them all
        one_step = self.causal and self.window is None and T == 1
        # the weights need the written-out path, and so does lmkit.inspect's pattern hook
        use_kernel = self.fast and not return_weights and not self.hook_pattern.active
        # GQA decoding: the G = H // H_kv query heads that share a key/value head are G
        # queries of that head, so the cached keys and values need no copies
        grouped = H_kv != H and use_kernel and one_step and mask is None
        if H_kv != H and not grouped:  # GQA: query head h uses key/value head h // (H // H_kv)
            k = k.repeat_interleave(H // H_kv, dim=1)  # (B, H, Tk, D)
            v = v.repeat_interleave(H // H_kv, dim=1)  # (B, H, Tk, D)

        # plain causal attention over the whole sequence: let PyTorch's kernel build the mask
        fused_causal = (self.causal and self.window is None and mask is None and T == Tk
                        and not grouped)
        given_mask = mask is not None  # may leave a query no key at all (left padding)
        if given_mask:
            _check_mask(mask, (B, H, T, Tk))
        if self.causal and not one_step and not (use_kernel and fused_causal):
            cm = causal_mask(T, Tk, device=x.device, window=self.window)  # (T, Tk)
            mask = cm if mask is None else mask & cm
        dropout_p = self.dropout if self.training else 0.0

        weights = None
        if use_kernel:
            y = F.scaled_dot_product_attention(  # (B, H, T, D); grouped: (B, H_kv, G, D)
                q.reshape(B, H_kv, H // H_kv, D) if grouped else q, k, v,
                attn_mask=None if fused_causal else mask, dropout_p=dropout_p,
                is_causal=fused_causal,
            ).reshape(B, H, T, D)  # grouped: the G queries of head j are heads jG..jG+G-1
            if given_mask:  # zeros for a query with no key, on every backend, as written out
                no_key = ~mask.any(dim=-1, keepdim=True)  # (B or 1, H or 1, T or 1, 1)
                if no_key.any():  # e.g. left padding; right padding leaves every query a key
                    y = y.masked_fill(no_key, 0.0)
        else:
            y, weights = scaled_dot_product_attention(
                q, k, v, mask, return_weights=True, dropout_p=dropout_p
            )
            if self.hook_pattern.active:  # lmkit.inspect reads or replaces the weights
                hooked = self.hook_pattern(weights)  # (B, H, T, Tk)
                if hooked is not weights:
                    weights, y = hooked, hooked @ v  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, H*D) = (B, T, C)
        y = self.resid_dropout(self.o_proj(y))  # (B, T, C)
        return (y, weights) if return_weights else y

    def _project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v = q_proj(x), k_proj(x), v_proj(x); when training with `fast`, as one product.

        Training on the fast path multiplies by the three weights stacked (as GPT-2's c_attn
        does): one large product instead of three, faster forwards and backwards. Without
        gradients (decoding, evaluation) stacking the weights on every call would cost more
        memory traffic than it saves, so the three projections run as they are; so do
        projections that are not plain `nn.Linear`s (a LoRA layer, a quantised Linear) or that
        carry hooks, whose own forward must run.
        """
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if (not self.fast or not torch.is_grad_enabled()
                or any(type(m) is not nn.Linear or m._forward_hooks or m._forward_pre_hooks
                       for m in projs)):
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        w = torch.cat([m.weight for m in projs])  # (C + 2 kv_dim, C)
        b = None if self.q_proj.bias is None else torch.cat([m.bias for m in projs])
        kv_dim = self.k_proj.out_features
        return F.linear(x, w, b).split((self.d_model, kv_dim, kv_dim), dim=-1)

    def extra_repr(self) -> str:
        rope = None if self.rotary_emb is None else self.rotary_emb.theta
        return (
            f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
            f"causal={self.causal}, window={self.window}, rope_theta={rope}, "
            f"fast={self.fast}"
        )
