"""The position-wise feed-forward network: up-project, activate, down-project (chapter 04).

`FeedForward` uses Hugging Face Llama's names: `up_proj` (C -> d_ff), `down_proj` (d_ff -> C)
and, for SwiGLU, `gate_proj` (C -> d_ff). GPT-2's `mlp.c_fc` is `up_proj`, `mlp.c_proj` is
`down_proj`. The activations are written out so chapter 04 can plot and compare them;
`fast=True` (the default) uses PyTorch's own kernels for the same functions
(`FUSED_ACTIVATIONS`), which are faster; `fast=False` uses the written-out ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmkit._validate import check_fast

__all__ = [
    "ACTIVATIONS", "FUSED_ACTIVATIONS", "get_activation", "gelu", "gelu_tanh", "relu", "silu",
    "FeedForward",
]


def relu(x: Tensor) -> Tensor:
    """max(0, x)."""
    return torch.clamp(x, min=0.0)


def gelu(x: Tensor) -> Tensor:
    """Exact GELU: x * Phi(x), Phi the standard normal CDF (Hendrycks and Gimpel, 2016)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU's tanh approximation, used by GPT-2 (HF calls it `gelu_new`)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def silu(x: Tensor) -> Tensor:
    """SiLU (swish): x * sigmoid(x); the gate of SwiGLU."""
    return x * torch.sigmoid(x)


# "swiglu" is not an elementwise function: it is silu applied to a gate (see FeedForward).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": relu,
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
    "silu": silu,
    "swiglu": silu,
}


# The same functions as single PyTorch kernels.
FUSED_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swiglu": F.silu,
}


def get_activation(name: str, fast: bool = True) -> Callable[[Tensor], Tensor]:
    """The activation function called `name`; a ValueError lists the choices (chapter 04).

    `fast=True`: PyTorch's kernel (`FUSED_ACTIVATIONS`); `fast=False`: the written-out function.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    check_fast(fast)
    return (FUSED_ACTIVATIONS if fast else ACTIVATIONS)[name]


class FeedForward(nn.Module):
    """down(act(up(x))), or down(silu(gate(x)) * up(x)) for SwiGLU (chapters 04, 09)."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "gelu",
        bias: bool = True,
        dropout: float = 0.0,
        fast: bool = True,
    ):
        super().__init__()
        get_activation(activation, fast)  # a clear error for an unknown name or a non-bool fast
        self.activation, self.fast = activation, fast
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    @property
    def act(self) -> Callable[[Tensor], Tensor]:
        """The activation in use: PyTorch's kernel if `self.fast`, else the written-out one."""
        return get_activation(self.activation, self.fast)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_proj is not None:
            h = self.act(self.gate_proj(x)) * self.up_proj(x)  # (B, T, d_ff)
        else:
            h = self.act(self.up_proj(x))  # (B, T, d_ff)
        return self.dropout(self.down_proj(h))  # (B, T, C)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, fast={self.fast}"
