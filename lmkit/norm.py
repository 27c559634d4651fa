"""LayerNorm and RMSNorm, written out (chapter 05).

Both rescale each position's vector of C numbers; LayerNorm also centres it. `make_norm`
picks one by name, so a model config can say `norm="rmsnorm"`. With `fast=True` (the
default) the same computation runs as one PyTorch kernel (`F.layer_norm`, `F.rms_norm`),
which is faster; `fast=False` runs the formula as written out in chapter 05.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmkit._validate import check_fast

__all__ = ["LayerNorm", "RMSNorm", "make_norm", "NORMS"]


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dimension (Ba et al., 2016)."""

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True, fast: bool = True):
        super().__init__()
        check_fast(fast)
        self.d, self.eps, self.fast = d, eps, fast
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:  # the same formula in one kernel
            return F.layer_norm(x, (self.d,), self.weight, self.bias, self.eps)
        mean = x.mean(dim=-1, keepdim=True)  # (B, T, 1)
        var = x.var(dim=-1, keepdim=True, unbiased=False)  # (B, T, 1), the biased variance
        y = (x - mean) / torch.sqrt(var + self.eps) * self.weight  # (B, T, C)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, bias={self.bias is not None}, fast={self.fast}"


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: no centring, no bias (Zhang and Sennrich, 2019).

    Computed in float32 and cast back, as Llama does, so half-precision inputs stay stable.
    """

    def __init__(self, d: int, eps: float = 1e-6, fast: bool = True):
        super().__init__()
        check_fast(fast)
        self.d, self.eps, self.fast = d, eps, fast
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        if self.fast:  # the same formula in one kernel
            return self.weight * F.rms_norm(x32, (self.d,), eps=self.eps).to(x.dtype)
        inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (B, T, 1)
        return self.weight * (x32 * inv_rms).to(x.dtype)  # (B, T, C)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, fast={self.fast}"


NORMS = ("layernorm", "rmsnorm")


def make_norm(
    kind: str, d: int, eps: float = 1e-5, bias: bool = True, fast: bool = True
) -> nn.Module:
    """A LayerNorm or RMSNorm of width d; `bias` only applies to LayerNorm (chapter 05)."""
    if kind == "layernorm":
        return LayerNorm(d, eps=eps, bias=bias, fast=fast)
    if kind == "rmsnorm":
        return RMSNorm(d, eps=eps, fast=fast)
    raise ValueError(f"unknown norm {kind!r}; choose one of {list(NORMS)}")
