"""Masked-language-model training, BERT's objective (chapter 10).

A causal LM predicts token t+1 from tokens <= t. A masked LM sees the whole sequence, with
15% of its positions hidden, and predicts the hidden tokens. Of the chosen positions 80% are
replaced by [MASK], 10% by a random token and 10% left as they are, so the model cannot
assume that only [MASK] positions matter. Labels are the original tokens at the chosen
positions and -100 everywhere else; cross-entropy ignores -100 (`ignore_index`), so the loss
is the mean over the chosen positions only.

`lmkit.train` trains a masked LM when `TrainConfig.mlm_mask_id` is set: each batch of
`get_batch` goes through `mask_tokens`, and `lm_loss` (cross-entropy, which ignores -100)
becomes the masked-LM loss.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "apply_masking", "mask_tokens", "mlm_loss"]

IGNORE_INDEX = -100  # the label of a position the loss skips (PyTorch's and HF's default)


def apply_masking(
    ids: Tensor,
    u_select: Tensor,
    u_kind: Tensor,
    random_ids: Tensor,
    mask_id: int,
    p: float = 0.15,
    can_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The masking rule with its random numbers given, all of ids' shape (B, T).

    Position chosen iff u_select < p (and can_mask). Of the chosen: u_kind < 0.8 -> mask_id,
    0.8 <= u_kind < 0.9 -> random_ids, else unchanged. Returns (inputs, labels), labels the
    original ids at chosen positions and IGNORE_INDEX elsewhere.
    """
    chosen = u_select < p  # (B, T)
    if can_mask is not None:
        chosen &= can_mask
    inputs = ids.clone()
    inputs[chosen & (u_kind < 0.8)] = mask_id
    swap = chosen & (u_kind >= 0.8) & (u_kind < 0.9)
    inputs[swap] = random_ids[swap]
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


def mask_tokens(
    ids: Tensor,
    mask_id: int,
    vocab_size: int,
    p: float = 0.15,
    generator: torch.Generator | None = None,
    special_ids: Iterable[int] = (),
) -> tuple[Tensor, Tensor]:
    """BERT's masking of a batch of ids (B, T) -> (inputs, labels), both (B, T) (chapter 10).

    Random numbers come from `generator` (on the CPU) so a run is reproducible; tokens in
    `special_ids` ([CLS], [SEP], [PAD]) are never chosen.
    """
    if ids.dtype != torch.long:
        raise ValueError(f"expected ids as a LongTensor, got {ids.dtype}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"the masking probability p must be in (0, 1), got {p}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id {mask_id} is not a token id of a vocabulary of {vocab_size}")
    if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < vocab_size:
        bad = ids[(ids < 0) | (ids >= vocab_size)][0].item()
        raise ValueError(f"token id {bad} is outside the vocabulary of {vocab_size} tokens")
    if isinstance(special_ids, int):
        raise TypeError(f"special_ids must be a list of ids, got the single id {special_ids}; "
                        f"write special_ids=[{special_ids}]")
    u_select = torch.rand(ids.shape, generator=generator).to(ids.device)  # (B, T)
    u_kind = torch.rand(ids.shape, generator=generator).to(ids.device)  # (B, T)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator).to(ids.device)
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long, device=ids.device)
    can_mask = ~torch.isin(ids, special) if special.numel() else None
    return apply_masking(ids, u_select, u_kind, random_ids, mask_id, p, can_mask)


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the masked positions only: logits (B, T, V), labels (B, T) with
    IGNORE_INDEX where nothing is to be predicted. (With no masked position it is NaN.)"""
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V), labels.reshape(B * T),
                           ignore_index=IGNORE_INDEX)
