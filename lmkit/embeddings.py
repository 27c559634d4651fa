"""Token embeddings and positional information (chapter 02; RoPE in chapter 09).

- `TokenEmbedding`: a lookup table, one row of `d_model` numbers per token id.
- `LearnedPositionalEmbedding`: one learned row per position (GPT-2's `wpe`).
- `SinusoidalPositionalEncoding`: fixed sines and cosines (Vaswani et al., 2017).
- `rope_frequencies`, `apply_rope`, `RotaryEmbedding`: rotary position embedding (Su et al.,
  2021), in both layouts real checkpoints use (`ROPE_LAYOUTS`): "half" pairs dimension i with
  i + D/2 (Hugging Face Llama's "rotate_half", GPT-NeoX); "interleaved" pairs 2i with 2i + 1
  (RoFormer, Meta's Llama code, llama.cpp's GGUF files). `rope_permutation` and
  `convert_rope_layout` move q/k projection weights from one layout to the other.

The positional modules take `start`, the position of the first token, so that a new token fed
after a KV cache of `start` tokens gets position `start` (chapter 08).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TokenEmbedding",
    "LearnedPositionalEmbedding",
    "SinusoidalPositionalEncoding",
    "sinusoidal_encoding",
    "RotaryEmbedding",
    "rope_frequencies",
    "rotate_half",
    "apply_rope",
    "apply_rope_interleaved",
    "ROPE_LAYOUTS",
    "rope_permutation",
    "convert_rope_layout",
]

ROPE_LAYOUTS = ("half", "interleaved")


class TokenEmbedding(nn.Module):
    """Row `i` of `weight` (V, C) is the vector of token `i`: one-hot times matrix (chapter 02)."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.vocab_size, self.d_model = vocab_size, d_model
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        # the check reads values back from the device, so torch.compile'd training skips it
        if ids.numel() > 0 and not torch.compiler.is_compiling():
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"token id {bad} is out of range for vocab_size {self.vocab_size} "
                    f"(ids must be in [0, {self.vocab_size - 1}])"
                )
        return F.embedding(ids, self.weight)  # (..., C)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}"


def _check_positions(start: int, T: int, context_length: int) -> None:
    if start < 0 or start + T > context_length:
        raise ValueError(
            f"positions {start}..{start + T - 1} do not fit in the context window of "
            f"{context_length} positions"
        )


class LearnedPositionalEmbedding(nn.Module):
    """One learned vector per position 0..context_length-1, as in GPT-2 (chapter 02)."""

    def __init__(self, context_length: int, d_model: int):
        super().__init__()
        self.context_length, self.d_model = context_length, d_model
        self.weight = nn.Parameter(torch.empty(context_length, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, T: int, start: int = 0) -> Tensor:
        _check_positions(start, T, self.context_length)
        return self.weight[start : start + T]  # (T, C)

    def extra_repr(self) -> str:
        return f"context_length={self.context_length}, d_model={self.d_model}"


def sinusoidal_encoding(T: int, d_model: int, base: float = 10000.0) -> Tensor:
    """PE[t, 2i] = sin(t / base^(2i/C)), PE[t, 2i+1] = cos(same), shape (T, C) (chapter 02)."""
    if d_model % 2 != 0:
        raise ValueError(f"sinusoidal encoding needs an even d_model, got {d_model}")
    t = torch.arange(T, dtype=torch.float32)[:, None]  # (T, 1)
    inv_freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # (C/2,)
    angles = t * inv_freq  # (T, C/2)
    pe = torch.empty(T, d_model)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe  # (T, C)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal positions: a buffer, not a parameter, so nothing is learned (chapter 02)."""

    def __init__(self, context_length: int, d_model: int, base: float = 10000.0):
        super().__init__()
        self.context_length, self.d_model, self.base = context_length, d_model, base
        pe = sinusoidal_encoding(context_length, d_model, base)
        self.register_buffer("pe", pe, persistent=False)  # (context_length, C)

    def forward(self, T: int, start: int = 0) -> Tensor:
        _check_positions(start, T, self.context_length)
        return self.pe[start : start + T]  # (T, C)

    def extra_repr(self) -> str:
        return f"context_length={self.context_length}, d_model={self.d_model}, base={self.base}"


# ----------------------------------------------------------------------------- RoPE


def rope_frequencies(
    head_dim: int, context_length: int, theta: float = 10000.0
) -> tuple[Tensor, Tensor]:
    """cos and sin tables of shape (context_length, head_dim) for RoPE (chapter 09).

    Pair (i, i + D/2) turns by angle t * theta^(-2i/D) at position t (HF Llama layout).
    """
    if head_dim % 2 != 0:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    t = torch.arange(context_length, dtype=torch.float32)
    angles = torch.outer(t, inv_freq)  # (T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, D)
    return angles.cos(), angles.sin()


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension (HF Llama convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(
    x: Tensor, cos: Tensor, sin: Tensor, start: int = 0, positions: Tensor | None = None
) -> Tensor:
    """Rotate x (B, H, T, D) by its positions: start..start+T-1, or `positions` (T,) / (B, T)."""
    T = x.shape[-2]
    if positions is None:
        if start < 0 or start + T > cos.shape[0]:
            raise ValueError(
                f"positions {start}..{start + T - 1} are outside the RoPE table of "
                f"{cos.shape[0]} positions"
            )
        cos, sin = cos[start : start + T], sin[start : start + T]  # (T, D)
    else:
        cos, sin = cos[positions], sin[positions]  # (T, D) or (B, T, D)
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def apply_rope_interleaved(x: Tensor, cos: Tensor, sin: Tensor, start: int = 0) -> Tensor:
    """RoPE on pairs (x[2i], x[2i+1]) (RoFormer, Meta, GGUF); same tables as `apply_rope`.

    Pair i turns by angle t * theta^(-2i/D), the angle of pair (i, i + D/2) in the half layout.
    """
    T, D = x.shape[-2], x.shape[-1]
    if start < 0 or start + T > cos.shape[0]:
        raise ValueError(f"positions {start}..{start + T - 1} are outside the RoPE table of "
                         f"{cos.shape[0]} positions")
    cos = cos[start : start + T, : D // 2].to(x.dtype)  # (T, D/2): pair i's angle
    sin = sin[start : start + T, : D // 2].to(x.dtype)
    pairs = x.unflatten(-1, (D // 2, 2))  # (B, H, T, D/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]  # (B, H, T, D/2) each
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2)  # (B, H, T, D)


def rope_permutation(head_dim: int, to: str = "half") -> Tensor:
    """Index p with half[j] = interleaved[p[j]] (to="half"), or the inverse (to="interleaved").

    In the half layout dimension j < D/2 is the first number of pair j and j + D/2 the second;
    in the interleaved layout they are dimensions 2j and 2j + 1.
    """
    if to not in ROPE_LAYOUTS:
        raise ValueError(f"unknown RoPE layout {to!r}; choose one of {list(ROPE_LAYOUTS)}")
    if head_dim % 2 != 0:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    half_from_interleaved = torch.arange(head_dim).view(head_dim // 2, 2).t().reshape(-1)
    if to == "half":
        return half_from_interleaved  # [0, 2, 4, ..., 1, 3, 5, ...]
    return torch.argsort(half_from_interleaved)  # [0, D/2, 1, D/2 + 1, ...]


def convert_rope_layout(weight: Tensor, n_heads: int, to: str) -> Tensor:
    """Reorder the output rows of a q or k projection (H * D, C) (or its bias) into layout `to`.

    Rotating the converted q, k in the new layout gives the same q . k scores: the same pairs
    turn by the same angles, only their dimensions are stored elsewhere (chapter 09).
    """
    if weight.shape[0] % n_heads != 0:
        raise ValueError(f"{weight.shape[0]} rows do not split into n_heads={n_heads} heads")
    D = weight.shape[0] // n_heads
    perm = rope_permutation(D, to)  # (D,)
    per_head = weight.reshape(n_heads, D, *weight.shape[1:])  # (H, D, C)
    return per_head[:, perm].reshape(weight.shape)  # (H * D, C)


class RotaryEmbedding(nn.Module):
    """Holds the RoPE cos/sin tables as buffers and rotates queries or keys (chapter 09)."""

    def __init__(self, head_dim: int, context_length: int, theta: float = 10000.0,
                 layout: str = "half"):
        super().__init__()
        if layout not in ROPE_LAYOUTS:
            raise ValueError(f"unknown RoPE layout {layout!r}; choose one of {list(ROPE_LAYOUTS)}")
        self.head_dim, self.context_length, self.theta = head_dim, context_length, theta
        self.layout = layout
        cos, sin = rope_frequencies(head_dim, context_length, theta)
        self.register_buffer("cos", cos, persistent=False)  # (context_length, D)
        self.register_buffer("sin", sin, persistent=False)  # (context_length, D)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        if self.layout == "interleaved":
            return apply_rope_interleaved(x, self.cos, self.sin, start)  # (B, H, T, D)
        return apply_rope(x, self.cos, self.sin, start)  # (B, H, T, D)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, context_length={self.context_length}, "
                f"theta={self.theta}, layout={self.layout!r}")

