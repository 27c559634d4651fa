"""Helpers shared by the tests that compare lmkit with Hugging Face models built from a config."""

from __future__ import annotations

import torch
from torch import nn


def perturbed(model: nn.Module, seed: int = 1) -> nn.Module:
    """Random weights everywhere, norms and biases included, so a wrong mapping shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()
