"""The chapter 02 checkers accept lmkit's answers and reject typical mistakes with a useful hint."""

import pytest
import torch
import torch.nn.functional as F

from lmkit.checks import ch02
from lmkit.embeddings import sinusoidal_encoding


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


@pytest.mark.parametrize(
    "check",
    [ch02.check_one_hot_embed, ch02.check_sinusoidal, ch02.check_add_positions,
     ch02.check_position_similarity, ch02.check_permutation_test],
)
def test_stub_fails(check):
    with pytest.raises(NotImplementedError):
        check(stub)


def test_one_hot_embed(capsys):
    ch02.check_one_hot_embed(lambda ids, W: F.one_hot(ids, W.shape[0]).to(W.dtype) @ W)
    assert "✓ one_hot_embed" in capsys.readouterr().out
    ch02.check_one_hot_embed(lambda ids, W: torch.nn.functional.embedding(ids, W))
    with pytest.raises(AssertionError, match=r"convert the one-hot with \.to\(W\.dtype\)"):
        ch02.check_one_hot_embed(lambda ids, W: F.one_hot(ids, W.shape[0]) @ W)
    with pytest.raises(AssertionError, match="pass num_classes=W.shape"):
        ch02.check_one_hot_embed(lambda ids, W: F.one_hot(ids).float() @ W)
    with pytest.raises(AssertionError, match="the shape of the one-hot itself"):
        ch02.check_one_hot_embed(lambda ids, W: F.one_hot(ids, W.shape[0]).float())
    with pytest.raises(AssertionError, match="off by one"):
        ch02.check_one_hot_embed(lambda ids, W: W[(ids + 1) % W.shape[0]])


def _interleave(s, c):
    pe = torch.empty(s.shape[0], 2 * s.shape[1])
    pe[:, 0::2], pe[:, 1::2] = s, c
    return pe


def _angles(T, d, exponent=lambda two_i, d: two_i / d, first=0):
    t = torch.arange(first, first + T, dtype=torch.float32)[:, None]
    return t / 10000.0 ** exponent(torch.arange(0, d, 2, dtype=torch.float32), d)


def test_sinusoidal(capsys):
    ch02.check_sinusoidal(sinusoidal_encoding)
    assert "✓ sinusoidal" in capsys.readouterr().out
    ch02.check_sinusoidal(lambda T, d: _interleave(_angles(T, d).sin(), _angles(T, d).cos()))

    def concatenated(T, d):
        return torch.cat([_angles(T, d).sin(), _angles(T, d).cos()], dim=1)

    with pytest.raises(AssertionError, match="interleaves them"):
        ch02.check_sinusoidal(concatenated)
    with pytest.raises(AssertionError, match="sin and cos are swapped"):
        ch02.check_sinusoidal(lambda T, d: _interleave(_angles(T, d).cos(), _angles(T, d).sin()))

    def exponent_i(T, d):  # i/d instead of 2i/d
        a = _angles(T, d, exponent=lambda two_i, d: (two_i / 2) / d)
        return _interleave(a.sin(), a.cos())

    with pytest.raises(AssertionError, match="exponent should be 2i/d_model"):
        ch02.check_sinusoidal(exponent_i)

    def exponent_per_column(T, d):  # column j uses j/d, so cos columns get the next frequency
        t = torch.arange(T, dtype=torch.float32)[:, None]
        a = t / 10000.0 ** (torch.arange(d, dtype=torch.float32) / d)
        return _interleave(a[:, 0::2].sin(), a[:, 1::2].cos())

    with pytest.raises(AssertionError, match="same frequency as column 2i"):
        ch02.check_sinusoidal(exponent_per_column)

    def multiplied(T, d):
        a = _angles(T, d, exponent=lambda two_i, d: -two_i / d)
        return _interleave(a.sin(), a.cos())

    with pytest.raises(AssertionError, match="divide by the power"):
        ch02.check_sinusoidal(multiplied)
    with pytest.raises(AssertionError, match="positions start at 0"):
        ch02.check_sinusoidal(
            lambda T, d: _interleave(_angles(T, d, first=1).sin(), _angles(T, d, first=1).cos())
        )
    with pytest.raises(AssertionError, match="you returned the transpose"):
        ch02.check_sinusoidal(lambda T, d: sinusoidal_encoding(T, d).T)
    with pytest.raises(AssertionError, match=r"last dimension of size 2; reshape to \(T, d_model\)"):
        ch02.check_sinusoidal(lambda T, d: torch.stack([_angles(T, d).sin(), _angles(T, d).cos()], -1))


def add_positions(ids, tok_table, pos_table):
    T = ids.shape[1]
    if T > pos_table.shape[0]:
        raise ValueError(f"{T} tokens but only {pos_table.shape[0]} positions")
    return tok_table[ids] + pos_table[:T]


def test_add_positions(capsys):
    ch02.check_add_positions(add_positions)
    assert "✓ add_positions" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="token vectors alone"):
        ch02.check_add_positions(lambda ids, tok, pos: tok[ids])
    with pytest.raises(AssertionError, match="indexed the position table with the token ids"):
        ch02.check_add_positions(lambda ids, tok, pos: tok[ids] + pos[ids])
    with pytest.raises(AssertionError, match=r"must match the size(.|\n)*pos_table\[:T\]"):
        ch02.check_add_positions(lambda ids, tok, pos: tok[ids] + pos)
    with pytest.raises(AssertionError, match="positions start at 0"):
        ch02.check_add_positions(lambda ids, tok, pos: tok[ids] + pos[1 : ids.shape[1] + 1])
    with pytest.raises(AssertionError, match="raised RuntimeError(.|\n)*raise a ValueError"):
        ch02.check_add_positions(lambda ids, tok, pos: tok[ids] + pos[: ids.shape[1]])

    def pads_positions(ids, tok, pos):  # quietly repeats the last position instead of raising
        T = ids.shape[1]
        idx = torch.arange(T).clamp(max=pos.shape[0] - 1)
        return tok[ids] + pos[idx]

    with pytest.raises(AssertionError, match="returned a result, but there are only 16"):
        ch02.check_add_positions(pads_positions)

    def rejects_full_window(ids, tok, pos):  # off by one: T == context_length still fits
        if ids.shape[1] >= pos.shape[0]:
            raise ValueError("too long")
        return add_positions(ids, tok, pos)

    with pytest.raises(AssertionError, match=r"T = 16 tokens fit(.|\n)*only when T > pos_table"):
        ch02.check_add_positions(rejects_full_window)


def test_position_similarity(capsys):
    def cosine(pe):
        pe = F.normalize(pe, dim=-1)
        return pe @ pe.T

    ch02.check_position_similarity(cosine)
    assert "✓ position_similarity" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="plain dot products"):
        ch02.check_position_similarity(lambda pe: pe @ pe.T)
    with pytest.raises(AssertionError, match="normalised the columns"):
        ch02.check_position_similarity(lambda pe: F.normalize(pe, dim=0) @ F.normalize(pe, dim=0).T)
    with pytest.raises(AssertionError, match="you compared the columns"):
        ch02.check_position_similarity(lambda pe: cosine(pe.T))
    with pytest.raises(AssertionError, match="diagonal should be all 1"):
        ch02.check_position_similarity(lambda pe: F.normalize(pe, dim=-1) @ pe.T)

    def norm_without_keepdim(pe):  # (T, C) / (T,) lines up with the columns
        unit = pe / pe.norm(dim=-1)
        return unit @ unit.T

    with pytest.raises(AssertionError, match="keepdim=True"):
        ch02.check_position_similarity(norm_without_keepdim)


def is_permutation_equivariant(layer, x, n_trials=3):
    y = layer(x)
    for _ in range(n_trials):
        perm = torch.randperm(x.shape[1])
        if not torch.allclose(layer(x[:, perm]), y[:, perm], atol=1e-5):
            return False
    return True


def test_permutation_test(capsys):
    ch02.check_permutation_test(is_permutation_equivariant)
    assert "✓ is_permutation_equivariant" in capsys.readouterr().out

    def inverse_on_output(layer, x):
        perm = torch.randperm(x.shape[1])
        return torch.allclose(layer(x[:, perm]), layer(x)[:, perm.argsort()], atol=1e-5)

    with pytest.raises(AssertionError, match="identity layer .* is NOT permutation-equivariant"):
        ch02.check_permutation_test(inverse_on_output)

    def reversal_only(layer, x):
        return torch.allclose(layer(x.flip(1)), layer(x).flip(1), atol=1e-5)

    with pytest.raises(AssertionError, match=r"x \+ x reversed .*use random permutations"):
        ch02.check_permutation_test(reversal_only)

    def permutes_batch(layer, x):
        perm = torch.randperm(x.shape[0])
        return torch.allclose(layer(x[perm]), layer(x)[perm], atol=1e-5)

    with pytest.raises(AssertionError, match="learned positions is permutation-equivariant, but "
                                             "it is not(.|\n)*permuting dim 1"):
        ch02.check_permutation_test(permutes_batch)
    with pytest.raises(AssertionError, match="return True or False"):
        ch02.check_permutation_test(lambda layer, x: None)
