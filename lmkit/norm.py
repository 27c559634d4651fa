"""LayerNorm and RMSNorm, written out (chapter 05).

Both rescale each position's vector of C numbers; LayerNorm also centres it. `make_norm`
picks one by name, so a model config can say `norm="rmsnorm"`. With `fused=True` the same
computation runs as one PyTorch kernel (`F.layer_norm`, `F.rms_norm`), which is faster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerNorm", "RMSNorm", "make_norm", "NORMS"]


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dimension (Ba et al., 2016)."""

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True, fused: bool = False):
        super().__init__()
        self.d, self.eps, self.fused = d, eps, fused
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:  # the same formula in one kernel
            return F.layer_norm(x, (self.d,), self.weight, self.bias, self.eps)
        mean = x.mean(dim=-1, keepdim=True)  # (B, T, 1)
        var = x.var(dim=-1, keepdim=True, unbiased=False)  # (B, T, 1), the biased variance
        y = (x - mean) / torch.sqrt(var + self.eps) * self.weight  # (B, T, C)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, bias={self.bias is not None}, fused={self.fused}"


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: no centring, no bias (Zhang and Sennrich, 2019).

    Computed in float32 and cast back, as Llama does, so half-precision inputs stay stable.
    """

    def __init__(self, d: int, eps: float = 1e-6, fused: bool = False):
        super().__init__()
        self.d, self.eps, self.fused = d, eps, fused
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        if self.fused:  # the same formula in one kernel
            return self.weight * F.rms_norm(x32, (self.d,), eps=self.eps).to(x.dtype)
        inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (B, T, 1)
        return self.weight * (x32 * inv_rms).to(x.dtype)  # (B, T, C)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, fused={self.fused}"


NORMS = ("layernorm", "rmsnorm")


def make_norm(
    kind: str, d: int, eps: float = 1e-5, bias: bool = True, fused: bool = False
) -> nn.Module:
    """A LayerNorm or RMSNorm of width d; `bias` only applies to LayerNorm (chapter 05)."""
    if kind == "layernorm":
        return LayerNorm(d, eps=eps, bias=bias, fused=fused)
    if kind == "rmsnorm":
        return RMSNorm(d, eps=eps, fused=fused)
    raise ValueError(f"unknown norm {kind!r}; choose one of {list(NORMS)}")
