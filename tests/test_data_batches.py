"""lmkit.data's training helpers: encoding, the deterministic split, shifted random batches."""

import pytest
import torch

from lmkit import data
from lmkit.tokenizer import CharTokenizer


def test_encode_gives_a_long_tensor_that_decodes_back():
    text = "ROMEO:\nBut soft!\n"
    tok = CharTokenizer(text)
    ids = data.encode(tok, text)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert tok.decode(ids.tolist()) == text


def test_split_holds_out_the_tail():
    ids = torch.arange(100)
    train, val = data.split(ids, 0.1)
    assert torch.equal(train, torch.arange(90)) and torch.equal(val, torch.arange(90, 100))
    with pytest.raises(ValueError, match="val_fraction"):
        data.split(ids, 1.0)


def test_targets_are_inputs_shifted_by_one():
    ids = torch.arange(1000)
    x, y = data.get_batch(ids, 8, 16, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y, x + 1)  # in arange, the next token is always id + 1
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_batches_are_reproducible_with_a_seeded_generator():
    ids = torch.randint(50, (500,), generator=torch.Generator().manual_seed(1))
    a = data.get_batch(ids, 4, 8, generator=torch.Generator().manual_seed(3))
    b = data.get_batch(ids, 4, 8, generator=torch.Generator().manual_seed(3))
    c = data.get_batch(ids, 4, 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_every_window_fits_including_the_last_one():
    ids = torch.arange(9)  # exactly context_length + 1 tokens: one possible window
    x, y = data.get_batch(ids, 5, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, torch.arange(8).expand(5, 8)) and torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="at least context_length"):
        data.get_batch(torch.arange(8), 1, 8)
    with pytest.raises(ValueError, match="1-D"):
        data.get_batch(torch.zeros(2, 20, dtype=torch.long), 1, 8)


def test_shakespeare_encodes_and_splits_ninety_ten():
    text = data.shakespeare()
    tok = CharTokenizer(text)
    train, val = data.split(data.encode(tok, text[:200_000]))
    assert len(val) == 20_000 and len(train) == 180_000
