"""Checkers for the chapter 02 exercises (embeddings and position)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..embeddings import sinusoidal_encoding
from .common import call, close, fail, passed, shape_of

__all__ = ["check_one_hot_embed", "check_sinusoidal", "check_add_positions",
           "check_position_similarity", "check_permutation_test"]


def _as_tensor(got, name: str) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        fail(f"{name} should return a torch.Tensor, got {type(got).__name__}")
    return got


def _call(fn, *args, name: str, shown: str):
    """`call`, but a crash is reported with argument shapes rather than whole tensors."""
    try:
        return call(fn, *args, name=name)
    except AssertionError as e:
        raise AssertionError(f"{shown} raised {str(e).split(' raised ', 1)[-1]}") from e.__cause__


# ----------------------------------------------------------------------------- exercise 1


def _one_hot_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.tensor([3]), torch.arange(15.0).reshape(5, 3)),  # one id, readable rows
        (torch.tensor([0, 4, 4, 1]), torch.arange(15.0).reshape(5, 3)),  # first, last, repeated
        (torch.tensor([[0, 2, 3], [1, 1, 5]]), torch.randn(7, 4, generator=g)),  # max id < V - 1
        (torch.randint(50, (4, 8), generator=g), torch.randn(50, 16, generator=g)),
    ]


def check_one_hot_embed(fn) -> None:
    """Exercise 1: fn(ids, W) -> one_hot(ids) @ W, shape ids.shape + (C,)."""
    cases = _one_hot_cases()
    for ids, W in cases:
        V, C = W.shape
        shown = f"one_hot_embed(ids of shape {shape_of(ids)}, W of shape {(V, C)})"
        try:
            got = _call(fn, ids.clone(), W.clone(), name="one_hot_embed", shown=shown)
        except AssertionError as e:
            msg = str(e)
            if "dtype" in msg:
                fail(f"{msg}\nF.one_hot returns integers (torch.int64) and W holds floats: convert "
                     "the one-hot with .to(W.dtype) (or .float()) before multiplying")
            if "cannot be multiplied" in msg or "must match the size" in msg:
                fail(f"{msg}\nThe one-hot must have V = W.shape[0] columns: F.one_hot(ids) without "
                     "num_classes is only max(ids) + 1 wide; pass num_classes=W.shape[0]")
            raise
        got = _as_tensor(got, "one_hot_embed")
        want = W[ids]  # (..., C)
        if shape_of(got) != shape_of(want):
            if shape_of(got) == (*ids.shape, V):
                fail(f"{shown} returned shape {shape_of(got)}, the shape of the one-hot itself: "
                     "multiply it by W to get one C-dimensional row per id")
            fail(f"{shown} should have shape {shape_of(want)} (the shape of ids, plus C), "
                 f"got {shape_of(got)}")
        if not torch.allclose(got.double(), want.double(), atol=1e-6):
            flat_got, flat_ids = got.reshape(-1, C), ids.reshape(-1)
            k = next(k for k in range(len(flat_ids))
                     if not torch.allclose(flat_got[k].double(), W[flat_ids[k]].double()))
            tid = int(flat_ids[k])
            other = [j for j in range(V) if torch.allclose(flat_got[k].double(), W[j].double())]
            if other:
                fail(f"{shown}: for token id {tid} you returned row {other[0]} of W instead of row "
                     f"{tid}: put the 1 of the one-hot at index id (off by one?)")
            fail(f"{shown}: the vector for token id {tid} should be row {tid} of W, "
                 f"{W[tid].tolist()[:4]}..., got {flat_got[k].tolist()[:4]}...")
    passed("one_hot_embed", len(cases))


# ----------------------------------------------------------------------------- exercise 2


def _interleave(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    pe = torch.empty(s.shape[0], 2 * s.shape[1], dtype=s.dtype)
    pe[:, 0::2], pe[:, 1::2] = s, c
    return pe


def _sinusoidal_mistakes(T: int, C: int) -> list[tuple[torch.Tensor, str]]:
    """What typical wrong versions of the formula give, with the hint for each."""
    t = torch.arange(T, dtype=torch.float64)[:, None]  # (T, 1)
    two_i = torch.arange(0, C, 2, dtype=torch.float64)  # (C/2,) even column indices 2i
    a = t * 10000.0 ** (-two_i / C)  # (T, C/2), the right angles
    a_half = t * 10000.0 ** (-(two_i / 2) / C)  # exponent i/C
    cols = torch.arange(C, dtype=torch.float64)
    a_cols = t * 10000.0 ** (-cols / C)  # (T, C): exponent j/C for column j
    return [
        (torch.cat([a.sin(), a.cos()], dim=1),
         "you put all the sines first and then all the cosines (concatenation); lmkit "
         "interleaves them: column 2i holds sin and column 2i+1 holds cos of the same angle"),
        (_interleave(a.cos(), a.sin()),
         "sin and cos are swapped: even columns (0, 2, 4, ...) hold sin, odd columns hold cos"),
        (_interleave(a_half.sin(), a_half.cos()),
         "the exponent should be 2i/d_model, where 2i is the even column index (0, 2, 4, ...); "
         "you used i/d_model, so the frequencies fall too slowly"),
        (_interleave(a_cols[:, 0::2].sin(), a_cols[:, 1::2].cos()),
         "column 2i+1 must use the same frequency as column 2i: the exponent is 2i/d_model for "
         "both the sin and the cos of a pair, not j/d_model for column j"),
        (_interleave((t * 10000.0 ** (two_i / C)).sin(), (t * 10000.0 ** (two_i / C)).cos()),
         "the angle is t / 10000^(2i/d_model): divide by the power (or multiply by "
         "10000^(-2i/d_model)), so that the frequencies fall as i grows"),
        (_interleave(((t + 1) * 10000.0 ** (-two_i / C)).sin(),
                     ((t + 1) * 10000.0 ** (-two_i / C)).cos()),
         "positions start at 0: row 0 should be [0, 1, 0, 1, ...] (sin 0 and cos 0)"),
    ]


_SINUSOIDAL_CASES = [(1, 2), (4, 2), (10, 8), (6, 6), (50, 16), (128, 64)]


def check_sinusoidal(fn) -> None:
    """Exercise 2: fn(T, d_model) -> the (T, d_model) sinusoidal table, sin/cos interleaved."""
    for T, C in _SINUSOIDAL_CASES:
        got = _as_tensor(call(fn, T, C, name="sinusoidal"), "sinusoidal")
        want = sinusoidal_encoding(T, C)
        if shape_of(got) != (T, C):
            hint = ""
            if shape_of(got) == (C, T) and T != C:
                hint = ": rows are positions and columns are dimensions, you returned the transpose"
            elif shape_of(got) == (T, C // 2):
                hint = ": each frequency gives two columns, one sin and one cos"
            elif shape_of(got) == (T, C // 2, 2):
                hint = (": each (sin, cos) pair sits in a last dimension of size 2; reshape to "
                        "(T, d_model), which puts sin in the even and cos in the odd columns")
            fail(f"sinusoidal({T}, {C}) should have shape ({T}, {C}), got {shape_of(got)}{hint}")
        if not torch.is_floating_point(got):
            fail(f"sinusoidal({T}, {C}) returned dtype {got.dtype}: build the table from float "
                 "positions, e.g. torch.arange(T, dtype=torch.float32)")
        if close(got, want, atol=1e-4):
            continue
        for wrong, hint in _sinusoidal_mistakes(T, C):
            if close(got, wrong, atol=1e-2):
                fail(f"sinusoidal({T}, {C}) is not the expected table: {hint}")
        r, c = divmod(int((got.double() - want.double()).abs().argmax()), C)
        fail(f"sinusoidal({T}, {C})[{r}, {c}] should be {want[r, c].item():.4f}, got "
             f"{got[r, c].item():.4f}; PE[t, 2i] = sin(t / 10000^(2i/d_model)) and "
             "PE[t, 2i+1] = cos(t / 10000^(2i/d_model))")
    passed("sinusoidal", len(_SINUSOIDAL_CASES))


# ----------------------------------------------------------------------------- exercise 3


def _position_cases() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)

    def case(B, T, V, L, C):
        return (torch.randint(V, (B, T), generator=g), torch.randn(V, C, generator=g),
                torch.randn(L, C, generator=g))

    return [case(2, 5, 10, 16, 4), case(1, 1, 10, 16, 4), case(3, 16, 10, 16, 4),
            case(4, 7, 100, 16, 8), case(5, 5, 30, 12, 6)]


def check_add_positions(fn) -> None:
    """Exercise 3: fn(ids, tok_table, pos_table) -> tok_table[ids] + pos_table[:T], (B, T, C)."""
    cases = _position_cases()
    for ids, tok_table, pos_table in cases:
        (B, T), (L, C) = ids.shape, pos_table.shape
        shown = f"add_positions(ids {(B, T)}, tok_table {shape_of(tok_table)}, pos_table {(L, C)})"
        try:
            got = _call(fn, ids.clone(), tok_table.clone(), pos_table.clone(), name="add_positions",
                        shown=shown)
        except AssertionError as e:
            if "must match the size" in str(e):
                fail(f"{e}\npos_table has a row for each of the {L} positions of the context "
                     "window; take the rows of the T positions in use, pos_table[:T], so that "
                     "(B, T, C) + (T, C) broadcasts")
            if "raised ValueError" in str(e):
                fail(f"{e}\nT = {T} tokens fit in a table of {L} positions (0 to {L - 1}): "
                     "raise the ValueError only when T > pos_table.shape[0]")
            raise
        got = _as_tensor(got, "add_positions")
        tok = tok_table[ids]  # (B, T, C)
        want = tok + pos_table[:T]  # (B, T, C) + (T, C)
        if shape_of(got) != (B, T, C):
            fail(f"{shown} should have shape (B, T, C) = {(B, T, C)}, got {shape_of(got)}: one "
                 "vector per token of every sequence")
        if close(got, want):
            continue
        if close(got, tok):
            fail(f"{shown} returned the token vectors alone: add the position vectors "
                 "pos_table[:T]")
        if int(ids.max()) < L and close(got, tok + pos_table[ids]):
            fail(f"{shown}: you indexed the position table with the token ids; it is indexed "
                 "by position, 0, 1, ..., T-1 (torch.arange(T)), whatever the tokens are")
        if T < L and close(got, tok + pos_table[1 : T + 1]):
            fail(f"{shown}: positions start at 0, so the first token gets pos_table[0]")
        fail(f"{shown} should be tok_table[ids] + pos_table[:T]; your values differ at "
             f"batch row {int((got - want).abs().amax(dim=(1, 2)).argmax())}")
    ids, tok_table, pos_table = cases[0]
    long_ids = torch.zeros(2, pos_table.shape[0] + 4, dtype=torch.long)
    shown = f"add_positions(ids {shape_of(long_ids)}, ..., pos_table {shape_of(pos_table)})"
    try:
        fn(long_ids, tok_table, pos_table)
    except ValueError:
        pass
    except NotImplementedError:
        raise
    except Exception as e:
        fail(f"{shown} raised {type(e).__name__}: {e}\nWhen T is longer than the position table, "
             "check it yourself and raise a ValueError that names T and the table's length")
    else:
        fail(f"{shown} returned a result, but there are only {pos_table.shape[0]} learned "
             "positions: raise a ValueError when T > pos_table.shape[0]")
    passed("add_positions", len(cases) + 1)


# ----------------------------------------------------------------------------- exercise 4


def _similarity_cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    scaled = torch.randn(12, 3, generator=g) * torch.arange(1.0, 13.0)[:, None]  # varied norms
    return [sinusoidal_encoding(64, 16), torch.randn(10, 8, generator=g) * 0.02,
            torch.randn(1, 4, generator=g), torch.randn(5, 32, generator=g), scaled]


def check_position_similarity(fn) -> None:
    """Exercise 4: fn(pe) -> (T, T) cosine similarity between the rows (positions) of pe."""
    cases = _similarity_cases()
    for pe in cases:
        T, C = pe.shape
        shown = f"position_similarity(pe of shape {(T, C)})"
        try:
            got = _call(fn, pe.clone(), name="position_similarity", shown=shown)
        except AssertionError as e:
            if "must match the size" in str(e):
                fail(f"{e}\npe.norm(dim=-1) has shape (T,), which lines up with the columns of "
                     "pe, not its rows: keep it as a (T, 1) column with keepdim=True so that "
                     "each row is divided by its own length")
            raise
        got = _as_tensor(got, "position_similarity")
        want = F.cosine_similarity(pe[:, None, :], pe[None, :, :], dim=-1)  # (T, T)
        if shape_of(got) != (T, T):
            hint = ""
            if shape_of(got) == (C, C):
                hint = ": you compared the columns; compare positions, i.e. rows (pe @ pe.T)"
            fail(f"{shown} should have shape (T, T) = {(T, T)}, got {shape_of(got)}{hint}")
        if close(got, want):
            continue
        if close(got, pe @ pe.T):
            fail(f"{shown} returned plain dot products: divide by the lengths of both vectors, "
                 "(a . b) / (|a| |b|), so that every position has similarity 1 with itself")
        by_col = F.normalize(pe, dim=0)
        if close(got, by_col @ by_col.T):
            fail(f"{shown}: you normalised the columns (dim=0); normalise each position's "
                 "vector, i.e. each row (dim=-1)")
        diag = got.diagonal()
        if not torch.allclose(diag.double(), torch.ones(T, dtype=torch.float64), atol=1e-5):
            fail(f"{shown}: the diagonal should be all 1 (each position is identical to itself), "
                 f"got {diag[:4].tolist()}...: divide by the lengths of both vectors")
        if not torch.allclose(got, got.T, atol=1e-5):
            fail(f"{shown} is not symmetric, but sim(t, s) = sim(s, t): normalise both sides, "
                 "not only one")
        i, j = divmod(int((got.double() - want.double()).abs().argmax()), T)
        fail(f"{shown}[{i}, {j}] should be {want[i, j].item():.4f}, got {got[i, j].item():.4f}")
    passed("position_similarity", len(cases))


# ----------------------------------------------------------------------------- exercise 5


def _layers() -> list[tuple[str, object, bool, str]]:
    """(name, layer on (B, T, C), is it equivariant?, why) for the permutation-test exercise."""
    g = torch.Generator().manual_seed(4)
    C = 8
    Wq, Wk, Wv, W1, W2 = (torch.randn(C, C, generator=g) / math.sqrt(C) for _ in range(5))
    pos = torch.randn(16, C, generator=g)

    def attention(x, causal=False):
        q, k, v = x @ Wq, x @ Wk, x @ Wv  # (B, T, C)
        scores = q @ k.transpose(-2, -1) / math.sqrt(C)  # (B, T, T)
        if causal:
            T = x.shape[1]
            scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        return torch.softmax(scores, dim=-1) @ v  # (B, T, C)

    return [
        ("the identity layer (returns its input)", lambda x: x.clone(), True, ""),
        ("a per-position MLP, relu(x W1) W2", lambda x: torch.relu(x @ W1) @ W2, True, ""),
        ("single-head self-attention, no mask", attention, True, ""),
        ("x + mean of x over positions", lambda x: x + x.mean(dim=1, keepdim=True), True, ""),
        ("self-attention after adding learned positions",
         lambda x: attention(x + pos[: x.shape[1]]), False, "positions are added"),
        ("causal self-attention", lambda x: attention(x, causal=True), False,
         "each position sees only the ones before it"),
        ("a running sum over positions", lambda x: x.cumsum(dim=1), False,
         "position t sums positions 0..t"),
        ("x + x reversed (x + x.flip(1))", lambda x: x + x.flip(1), False,
         "it commutes with reversing the sequence, but not with other permutations"),
    ]


def check_permutation_test(fn) -> None:
    """Exercise 5: fn(layer, x) -> True iff layer(x[:, perm]) == layer(x)[:, perm] for random perms."""
    layers = _layers()
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(5))  # (B, T, C)
    for name, layer, equivariant, why in layers:
        torch.manual_seed(0)  # the student's torch.randperm draws the same permutations each run
        got = _call(fn, layer, x.clone(), name="is_permutation_equivariant",
                    shown=f"is_permutation_equivariant({name}, x of shape {shape_of(x)})")
        if isinstance(got, torch.Tensor) and got.numel() == 1 and got.dtype == torch.bool:
            got = bool(got)
        if not isinstance(got, bool):
            fail(f"is_permutation_equivariant should return True or False, got "
                 f"{type(got).__name__}")
        if got == equivariant:
            continue
        if equivariant:
            fail(f"your test says {name} is NOT permutation-equivariant, but it is. Compare "
                 "layer(x[:, perm]) with layer(x)[:, perm]: the same perm on both, along dim 1 "
                 "(positions), and with torch.allclose, because sums taken in a different "
                 "order differ in the last bits")
        hint = ("use random permutations (torch.randperm(T)), not one fixed reordering"
                if "reversed" in name else
                "are you permuting dim 1 (positions) of x, which is (B, T, C), and applying "
                "the same perm to the output?")
        fail(f"your test says {name} is permutation-equivariant, but it is not ({why}): {hint}")
    passed("is_permutation_equivariant", len(layers))
