"""Checkers for the chapter 02 exercises (embeddings and position)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..embeddings import sinusoidal_encoding
from .common import (
    INPLACE,
    NO_RETURN,
    Mistake,
    call,
    checker,
    close,
    fail,
    forbid,
    guard,
    passed,
    shape_of,
)

__all__ = ["check_one_hot_embed", "check_sinusoidal", "check_add_positions",
           "check_position_similarity", "check_permutation_test", "MISTAKES"]

M = Mistake
MISTAKES: dict[str, dict[str, Mistake]] = {
    "one_hot_embed": {
        "index": M("indexing the table (`W[ids]`, `F.embedding`, `nn.Embedding`)",
                   "this exercise asks you to embed WITHOUT indexing W: build the one-hot "
                   "vectors and multiply them by W (one_hot @ W)"),
        "dtype": M("multiplying the integer one-hot by the float table",
                   "F.one_hot returns integers (torch.int64) and W holds floats: convert the "
                   "one-hot with .to(W.dtype) (or .float()) before multiplying; the result "
                   "has W's dtype"),
        "num_classes": M("calling `F.one_hot(ids)` without `num_classes`",
                         "the one-hot must have V = W.shape[0] columns: F.one_hot(ids) without "
                         "num_classes is only max(ids) + 1 wide; pass num_classes=W.shape[0]"),
        "transpose": M("multiplying by `W.T`", "W is (V, C) and the one-hot (..., V): compute "
                                                "one_hot @ W, not one_hot @ W.T"),
        "one_hot_only": M("returning the one-hot itself",
                          "that is the shape of the one-hot itself: multiply it by W to get one "
                          "C-dimensional row per id"),
        "off_by_one": M("putting the 1 at index `id - 1` or `id + 1`",
                        "put the 1 of the one-hot at index id (off by one?)"),
        "shape": M("flattening or summing over the ids (losing their shape)",
                   "the result has the shape of ids plus a last dimension C: (B, T) ids give "
                   "(B, T, C)"),
        "none": NO_RETURN,
    },
    "sinusoidal": {
        "concat": M("all the sines first, then all the cosines",
                    "you put all the sines first and then all the cosines (concatenation); "
                    "lmkit interleaves them: column 2i holds sin and column 2i+1 holds cos of "
                    "the same angle"),
        "swap": M("sin and cos swapped",
                  "sin and cos are swapped: even columns (0, 2, 4, ...) hold sin, odd columns "
                  "hold cos"),
        "half": M("exponent i/d_model instead of 2i/d_model",
                  "the exponent should be 2i/d_model, where 2i is the even column index (0, 2, "
                  "4, ...); you used i/d_model, so the frequencies fall too slowly"),
        "per_column": M("a different frequency for the sin and the cos of a pair",
                        "column 2i+1 must use the same frequency as column 2i: the exponent is "
                        "2i/d_model for both the sin and the cos of a pair, not j/d_model for "
                        "column j"),
        "multiply": M("multiplying by 10000^(2i/d) instead of dividing",
                      "the angle is t / 10000^(2i/d_model): divide by the power (or multiply by "
                      "10000^(-2i/d_model)), so that the frequencies fall as i grows"),
        "from_one": M("positions starting at 1", "positions start at 0: row 0 should be "
                                                 "[0, 1, 0, 1, ...] (sin 0 and cos 0)"),
        "transpose": M("returning the (d_model, T) transpose",
                       "rows are positions and columns are dimensions, you returned the "
                       "transpose"),
        "half_width": M("only d_model/2 columns", "each frequency gives two columns, one sin "
                                                  "and one cos"),
        "pairs": M("a (T, d_model/2, 2) stack of pairs",
                   "each (sin, cos) pair sits in a last dimension of size 2; reshape to "
                   "(T, d_model), which puts sin in the even and cos in the odd columns"),
        "int_dtype": M("an integer table (`torch.zeros_like` of an integer `arange`)",
                       "build the table from float positions, e.g. torch.arange(T, "
                       "dtype=torch.float32), and store it in a float tensor"),
        "none": NO_RETURN,
    },
    "add_positions": {
        "tok_only": M("forgetting to add the positions",
                      "you returned the token vectors alone: add the position vectors "
                      "pos_table[:T]"),
        "pos_by_id": M("indexing the position table with the token ids",
                       "you indexed the position table with the token ids; it is indexed by "
                       "position, 0, 1, ..., T-1 (torch.arange(T)), whatever the tokens are"),
        "from_one": M("positions starting at 1 (`pos_table[1:T + 1]`)",
                      "positions start at 0, so the first token gets pos_table[0]"),
        "slice": M("adding the whole position table, or slicing it by the batch size",
                   "pos_table has a row for each position of the context window; take the rows "
                   "of the T = ids.shape[1] positions in use, pos_table[:T], so that (B, T, C) + "
                   "(T, C) broadcasts"),
        "no_check": M("no ValueError when T > context_length",
                      "raise a ValueError when T > pos_table.shape[0]: there are no learned "
                      "positions beyond the table"),
        "error_type": M("raising the wrong error (IndexError, AssertionError) or crashing",
                        "when T is longer than the position table, check it yourself and raise "
                        "a ValueError that names T and the table's length"),
        "boundary": M("refusing T == context_length (`>=` instead of `>`)",
                      "a sequence as long as the table fits: raise the ValueError only when "
                      "T > pos_table.shape[0]"),
        "message": M("an error message without the two numbers",
                     "say both numbers in the message: T and the table's length"),
        "shape": M("summing or averaging over the batch", "return one vector per token of "
                                                          "every sequence, shape (B, T, C)"),
        "none": NO_RETURN,
    },
    "position_similarity": {
        "dot": M("plain dot products, not divided by the lengths",
                 "you returned plain dot products: divide by the lengths of both vectors, "
                 "(a . b) / (|a| |b|), so that every position has similarity 1 with itself"),
        "cols": M("normalising the columns (`dim=0`)",
                  "you normalised the columns (dim=0); normalise each position's vector, i.e. "
                  "each row (dim=-1)"),
        "keepdim": M("dividing by `pe.norm(dim=-1)` without `keepdim=True` (a shape error)",
                     "pe.norm(dim=-1) has shape (T,), which lines up with the columns of pe, "
                     "not its rows: keep it as a (T, 1) column with keepdim=True so that each "
                     "row is divided by its own length"),
        "one_side": M("normalising only one side of the product",
                      "sim(t, s) = sim(s, t): normalise both sides, not only one"),
        "columns": M("comparing columns (`pe.T @ pe`)",
                     "you compared the columns; compare positions, i.e. rows (pe @ pe.T)"),
        "lengths": M("dividing by squared lengths or one global norm",
                     "the diagonal should be all 1 (each position is identical to itself): "
                     "divide by the length (the square root of the sum of squares) of each of "
                     "the two vectors"),
        "distance": M("computing distances (`torch.cdist`) instead of cosine similarities",
                      "that is a distance (0 on the diagonal); the cosine similarity is "
                      "(a . b) / (|a| |b|), 1 on the diagonal"),
        "pairwise": M("`F.cosine_similarity(pe, pe)`, which compares each row with itself only",
                      "F.cosine_similarity(pe, pe) compares each row with itself only: every "
                      "pair of positions (T, T) is one matrix product of the normalised rows"),
        "inplace": INPLACE,
    },
    "permutation_test": {
        "all_trials": M("returning after the first trial (or when any trial agrees)",
                        "return True only after ALL n_trials permutations agree: return False "
                        "as soon as one disagrees, and True after the loop"),
        "reversal": M("one fixed reordering (`x.flip(1)`, a swap, a roll) instead of random "
                      "permutations",
                      "use random permutations (torch.randperm(T)), not one fixed reordering"),
        "dim": M("permuting the batch or the channel dimension",
                 "permute dim 1 (positions) of x, which is (B, T, C): x[:, perm]"),
        "compare": M("comparing with the output not shuffled, or shuffled by another perm",
                     "compare layer(x[:, perm]) with layer(x)[:, perm]: the output is shuffled "
                     "too, by the same perm, along dim 1"),
        "tolerance": M("`torch.equal` or a tolerance too tight for float rounding",
                       "compare with torch.allclose(..., atol=1e-5): sums taken in a different "
                       "order differ in the last bits"),
        "type": M("returning a tensor or a number instead of True/False",
                  "return a Python bool, True or False"),
        "inplace": INPLACE,
    },
}


def _as_tensor(got, name: str, shown: str = "") -> torch.Tensor:
    if got is None:
        fail(f"{shown or name}: {NO_RETURN.hint}")
    if not isinstance(got, torch.Tensor):
        fail(f"{name} should return a torch.Tensor, got {type(got).__name__}")
    return got


def _call(fn, *args, name: str, shown: str):
    """`call`, but a crash is reported with argument shapes rather than whole tensors."""
    try:
        return call(fn, *args, name=name)
    except AssertionError as e:
        if e.__cause__ is None:
            raise
        raise AssertionError(f"{shown} raised {str(e).split(' raised ', 1)[-1]}") from e.__cause__


# ----------------------------------------------------------------------------- exercise 1

_INDEXING = [torch.Tensor.__getitem__, F.embedding, torch.embedding, torch.index_select,
             torch.Tensor.index_select, torch.take, torch.Tensor.take, torch.gather,
             torch.Tensor.gather, torch.Tensor.unbind, torch.unbind, torch.Tensor.tolist,
             torch.Tensor.narrow, torch.narrow, torch.Tensor.split, torch.split,
             torch.Tensor.chunk, torch.chunk, torch.Tensor.select, torch.select,
             torch.Tensor.numpy, torch.Tensor.__iter__, torch.index_add, torch.Tensor.item]


def _one_hot_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.tensor([3]), torch.arange(15.0).reshape(5, 3)),  # one id, readable rows
        (torch.tensor([0, 4, 4, 1]), torch.arange(15.0).reshape(5, 3)),  # first, last, repeated
        (torch.tensor([[0, 2, 3], [1, 1, 5]]), torch.randn(7, 4, generator=g)),  # max id < V - 1
        (torch.randint(50, (4, 8), generator=g), torch.randn(50, 16, generator=g)),
        (torch.tensor([1, 2]), torch.randn(3, 3, generator=g) + 0.5),  # V == C
    ]


@checker
def check_one_hot_embed(fn) -> None:
    """Exercise 1: fn(ids, W) -> one_hot(ids) @ W, shape ids.shape + (C,), W never indexed."""
    H = MISTAKES["one_hot_embed"]
    cases = _one_hot_cases()
    for ids, W in cases:
        V, C = W.shape
        shown = f"one_hot_embed(ids of shape {shape_of(ids)}, W of shape {(V, C)})"
        try:
            with forbid([], "one_hot_embed", H["index"]):
                got = _call(fn, ids.clone(), guard(W.clone(), _INDEXING), name="one_hot_embed",
                            shown=shown)
        except AssertionError as e:
            msg = str(e)
            if "raised" in msg and ("dtype" in msg or "Long" in msg):
                fail(f"{msg}\n{H['dtype'].hint}")
            if f"and {C}x{V})" in msg:
                fail(f"{msg}\n{H['transpose'].hint}")
            if "cannot be multiplied" in msg or "must match the size" in msg:
                fail(f"{msg}\n{H['num_classes'].hint}")
            raise
        got = _as_tensor(got, "one_hot_embed", shown)
        if type(got) is not torch.Tensor:
            got = got.as_subclass(torch.Tensor)
        want = W[ids]  # (..., C)
        if shape_of(got) != shape_of(want):
            if shape_of(got) == (*ids.shape, V) and V != C:
                fail(f"{shown} returned shape {shape_of(got)}: {H['one_hot_only'].hint}")
            fail(f"{shown} returned shape {shape_of(got)}, expected {shape_of(want)}: "
                 f"{H['shape'].hint}")
        if got.dtype != W.dtype:
            fail(f"{shown} returned dtype {got.dtype}: {H['dtype'].hint}")
        if close(got, F.one_hot(ids, V).to(W.dtype)) and V == C:
            fail(f"{shown} returned the one-hot: {H['one_hot_only'].hint}")
        if V == C and close(got, F.one_hot(ids, V).to(W.dtype) @ W.T):
            fail(f"{shown}: {H['transpose'].hint}")
        if not torch.allclose(got.double(), want.double(), atol=1e-6):
            flat_got, flat_ids = got.reshape(-1, C), ids.reshape(-1)
            k = next(k for k in range(len(flat_ids))
                     if not torch.allclose(flat_got[k].double(), W[flat_ids[k]].double()))
            tid = int(flat_ids[k])
            other = [j for j in range(V) if torch.allclose(flat_got[k].double(), W[j].double())]
            if other:
                fail(f"{shown}: for token id {tid} you returned row {other[0]} of W instead of row "
                     f"{tid}: {H['off_by_one'].hint}")
            fail(f"{shown}: the vector for token id {tid} should be row {tid} of W, "
                 f"{W[tid].tolist()[:4]}..., got {flat_got[k].tolist()[:4]}...")
    passed("one_hot_embed", len(cases))


# ----------------------------------------------------------------------------- exercise 2


def _interleave(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    pe = torch.empty(s.shape[0], 2 * s.shape[1], dtype=s.dtype)
    pe[:, 0::2], pe[:, 1::2] = s, c
    return pe


def _sinusoidal_mistakes(T: int, C: int) -> list[tuple[torch.Tensor, str]]:
    """What typical wrong versions of the formula give, with the key of the hint for each."""
    t = torch.arange(T, dtype=torch.float64)[:, None]  # (T, 1)
    two_i = torch.arange(0, C, 2, dtype=torch.float64)  # (C/2,) even column indices 2i
    a = t * 10000.0 ** (-two_i / C)  # (T, C/2), the right angles
    a_half = t * 10000.0 ** (-(two_i / 2) / C)  # exponent i/C
    cols = torch.arange(C, dtype=torch.float64)
    a_cols = t * 10000.0 ** (-cols / C)  # (T, C): exponent j/C for column j
    a_mul = t * 10000.0 ** (two_i / C)
    a_one = (t + 1) * 10000.0 ** (-two_i / C)
    return [
        (torch.cat([a.sin(), a.cos()], dim=1), "concat"),
        (_interleave(a.cos(), a.sin()), "swap"),
        (_interleave(a_half.sin(), a_half.cos()), "half"),
        (_interleave(a_cols[:, 0::2].sin(), a_cols[:, 1::2].cos()), "per_column"),
        (_interleave(a_mul.sin(), a_mul.cos()), "multiply"),
        (_interleave(a_one.sin(), a_one.cos()), "from_one"),
    ]


_SINUSOIDAL_CASES = [(1, 2), (4, 2), (10, 8), (6, 6), (50, 16), (128, 64)]


@checker
def check_sinusoidal(fn) -> None:
    """Exercise 2: fn(T, d_model) -> the (T, d_model) sinusoidal table, sin/cos interleaved."""
    H = MISTAKES["sinusoidal"]
    for T, C in _SINUSOIDAL_CASES:
        shown = f"sinusoidal({T}, {C})"
        got = _as_tensor(call(fn, T, C, name="sinusoidal"), "sinusoidal", shown)
        want = sinusoidal_encoding(T, C)
        if shape_of(got) != (T, C):
            key = ("transpose" if shape_of(got) == (C, T) and T != C else
                   "half_width" if shape_of(got) == (T, C // 2) else
                   "pairs" if shape_of(got) == (T, C // 2, 2) else None)
            fail(f"{shown} should have shape ({T}, {C}), got {shape_of(got)}"
                 + (f": {H[key].hint}" if key else ""))
        if not torch.is_floating_point(got):
            fail(f"{shown} returned dtype {got.dtype}: {H['int_dtype'].hint}")
        if close(got, want, atol=1e-4):
            continue
        for wrong, key in _sinusoidal_mistakes(T, C):
            if close(got, wrong, atol=1e-2):
                fail(f"{shown} is not the expected table: {H[key].hint}")
        r, c = divmod(int((got.double() - want.double()).abs().argmax()), C)
        fail(f"{shown}[{r}, {c}] should be {want[r, c].item():.4f}, got "
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


@checker
def check_add_positions(fn) -> None:
    """Exercise 3: fn(ids, tok_table, pos_table) -> tok_table[ids] + pos_table[:T], (B, T, C)."""
    H = MISTAKES["add_positions"]
    cases = _position_cases()
    for ids, tok_table, pos_table in cases:
        (B, T), (L, C) = ids.shape, pos_table.shape
        shown = f"add_positions(ids {(B, T)}, tok_table {shape_of(tok_table)}, pos_table {(L, C)})"
        try:
            got = _call(fn, ids.clone(), tok_table.clone(), pos_table.clone(), name="add_positions",
                        shown=shown)
        except AssertionError as e:
            if isinstance(e.__cause__, ValueError) and T == L:
                fail(f"{e}\n{H['boundary'].hint}")
            if "must match the size" in str(e):
                fail(f"{e}\n{H['slice'].hint}")
            raise
        got = _as_tensor(got, "add_positions", shown)
        tok = tok_table[ids]  # (B, T, C)
        want = tok + pos_table[:T]  # (B, T, C) + (T, C)
        if shape_of(got) != (B, T, C):
            fail(f"{shown} should have shape (B, T, C) = {(B, T, C)}, got {shape_of(got)}: "
                 f"{H['shape'].hint}")
        if close(got, want):
            continue
        if close(got, tok):
            fail(f"{shown}: {H['tok_only'].hint}")
        if int(ids.max()) < L and close(got, tok + pos_table[ids]):
            fail(f"{shown}: {H['pos_by_id'].hint}")
        if T < L and close(got, tok + pos_table[1 : T + 1]):
            fail(f"{shown}: {H['from_one'].hint}")
        if B <= L and close(got, tok + pos_table[:B, None]):
            fail(f"{shown}: {H['slice'].hint}")
        fail(f"{shown} should be tok_table[ids] + pos_table[:T]; your values differ at "
             f"batch row {int((got - want).abs().amax(dim=(1, 2)).argmax())}")
    ids, tok_table, pos_table = cases[0]
    L = pos_table.shape[0]
    long_ids = torch.zeros(2, L + 4, dtype=torch.long)
    shown = f"add_positions(ids {shape_of(long_ids)}, ..., pos_table {shape_of(pos_table)})"
    try:
        call(fn, long_ids, tok_table, pos_table, name="add_positions")
    except AssertionError as e:
        err = e.__cause__
        if err is None:
            raise
        if not isinstance(err, ValueError):
            fail(f"{shown} raised {type(err).__name__}: {err}\n{H['error_type'].hint}")
        if str(L + 4) not in str(err) or str(L) not in str(err):
            fail(f"{shown} raised ValueError({str(err)!r}): {H['message'].hint} "
                 f"({L + 4} and {L})")
    else:
        fail(f"{shown} returned a result, but there are only {L} learned positions: "
             f"{H['no_check'].hint}")
    passed("add_positions", len(cases) + 1)


# ----------------------------------------------------------------------------- exercise 4


def _similarity_cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    scaled = torch.randn(12, 3, generator=g) * torch.arange(1.0, 13.0)[:, None]  # varied norms
    return [sinusoidal_encoding(64, 16), torch.randn(10, 8, generator=g) * 0.02,
            torch.randn(1, 4, generator=g), torch.randn(5, 32, generator=g), scaled]


@checker
def check_position_similarity(fn) -> None:
    """Exercise 4: fn(pe) -> (T, T) cosine similarity between the rows (positions) of pe."""
    H = MISTAKES["position_similarity"]
    cases = _similarity_cases()
    for pe in cases:
        T, C = pe.shape
        shown = f"position_similarity(pe of shape {(T, C)})"
        try:
            got = _call(fn, pe.clone(), name="position_similarity", shown=shown)
        except AssertionError as e:
            if "must match the size" in str(e):
                fail(f"{e}\n{H['keepdim'].hint}")
            raise
        got = _as_tensor(got, "position_similarity", shown)
        want = F.cosine_similarity(pe[:, None, :], pe[None, :, :], dim=-1)  # (T, T)
        if shape_of(got) != (T, T):
            key = ("columns" if shape_of(got) == (C, C) else
                   "pairwise" if shape_of(got) == (T,) else None)
            fail(f"{shown} should have shape (T, T) = {(T, T)}, got {shape_of(got)}"
                 + (f": {H[key].hint}" if key else ""))
        if close(got, want):
            continue
        if close(got, pe @ pe.T):
            fail(f"{shown}: {H['dot'].hint}")
        by_col = F.normalize(pe, dim=0)
        if close(got, by_col @ by_col.T):
            fail(f"{shown}: {H['cols'].hint}")
        if close(got, torch.cdist(pe, pe), atol=1e-4):
            fail(f"{shown}: {H['distance'].hint}")
        if C == T and close(got, F.normalize(pe.T, dim=-1) @ F.normalize(pe.T, dim=-1).T):
            fail(f"{shown}: {H['columns'].hint}")
        unit = F.normalize(pe, dim=-1)
        if close(got, unit @ pe.T) or close(got, pe @ unit.T):
            fail(f"{shown}: {H['one_side'].hint}")
        diag = got.diagonal()
        if not torch.allclose(diag.double(), torch.ones(T, dtype=torch.float64), atol=1e-5):
            fail(f"{shown}: the diagonal is {diag[:4].tolist()}...: {H['lengths'].hint}")
        if not torch.allclose(got, got.T, atol=1e-5):
            fail(f"{shown} is not symmetric: {H['one_side'].hint}")
        i, j = divmod(int((got.double() - want.double()).abs().argmax()), T)
        fail(f"{shown}[{i}, {j}] should be {want[i, j].item():.4f}, got {got[i, j].item():.4f}")
    passed("position_similarity", len(cases))


# ----------------------------------------------------------------------------- exercise 5


def _layers() -> list[tuple[str, object, bool, str, int]]:
    """(name, layer on (B, T, C), is it equivariant?, why, seed) for the permutation test."""
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

    # Under seed 33 the first torch.randperm(6) keeps position 0 in place and the next two do
    # not: a test that stops after one trial calls "x + x[:, :1]" equivariant.
    return [
        ("the identity layer (returns its input)", lambda x: x.clone(), True, "", 0),
        ("a per-position MLP, relu(x W1) W2", lambda x: torch.relu(x @ W1) @ W2, True, "", 0),
        ("single-head self-attention, no mask", attention, True, "", 0),
        ("x + mean of x over positions", lambda x: x + x.mean(dim=1, keepdim=True), True, "", 0),
        ("x + its first position (x + x[:, :1])", lambda x: x + x[:, :1], False,
         "it commutes only with the permutations that keep position 0 in place", 33),
        ("self-attention after adding learned positions",
         lambda x: attention(x + pos[: x.shape[1]]), False, "positions are added", 0),
        ("causal self-attention", lambda x: attention(x, causal=True), False,
         "each position sees only the ones before it", 0),
        ("a running sum over positions", lambda x: x.cumsum(dim=1), False,
         "position t sums positions 0..t", 0),
        ("x + x reversed (x + x.flip(1))", lambda x: x + x.flip(1), False,
         "it commutes with reversing the sequence, but not with other permutations", 0),
        ("x + its third position (x + x[:, 2:3])", lambda x: x + x[:, 2:3], False,
         "it commutes only with the permutations that keep position 2 in place", 0),
        ("x + x rolled by one (x + x.roll(1, 1))", lambda x: x + x.roll(1, 1), False,
         "it commutes with rolling the sequence, but not with other permutations", 0),
    ]


def _perm_of(inp: torch.Tensor, x: torch.Tensor, dim: int) -> list[int] | None:
    """The p with inp == x.index_select(dim, p), or None."""
    if inp.shape != x.shape:
        return None
    xs, ins = x.movedim(dim, 0), inp.movedim(dim, 0)
    p = []
    for row in ins:
        hits = [j for j in range(len(xs)) if torch.equal(row, xs[j])]
        if not hits:
            return None
        p.append(hits[0])
    return p


@checker
def check_permutation_test(fn) -> None:
    """Exercise 5: fn(layer, x) -> True iff layer(x[:, perm]) == layer(x)[:, perm] for random perms."""
    H = MISTAKES["permutation_test"]
    layers = _layers()
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(5))  # (B, T, C)
    T = x.shape[1]
    for name, layer, equivariant, why, seed in layers:
        seen: list[torch.Tensor] = []

        def recorded(x_, layer=layer, seen=seen):
            seen.append(x_.detach().clone())
            return layer(x_)

        torch.manual_seed(seed)  # the student's torch.randperm draws the same permutations
        got = _call(fn, recorded, x.clone(), name="is_permutation_equivariant",
                    shown=f"is_permutation_equivariant({name}, x of shape {shape_of(x)})")
        if isinstance(got, torch.Tensor) and got.numel() == 1 and got.dtype == torch.bool:
            got = bool(got)
        if not isinstance(got, bool):
            fail(f"is_permutation_equivariant returned {type(got).__name__}: {H['type'].hint}")
        if got == equivariant:
            continue
        perms = {tuple(p) for p in (_perm_of(s_, x, 1) for s_ in seen) if p is not None}
        perms.discard(tuple(range(T)))
        verdict = "NOT " if equivariant else ""
        head = f"your test says {name} is {verdict}permutation-equivariant, but it is"
        if not perms:
            fail(f"{head}{'' if equivariant else ' not'}: {H['dim'].hint}")
        if equivariant:
            key = "compare" if name.startswith("the identity") else "tolerance"
            fail(f"{head}: {H[key].hint}")
        if seed:
            fail(f"{head} not ({why}): {H['all_trials'].hint}")
        fixed = {tuple(range(T - 1, -1, -1))} | {tuple((i - r) % T for i in range(T))
                                                  for r in range(T)}  # the flip and the rolls
        if len(perms) <= 1 or perms <= fixed:
            fail(f"{head} not ({why}): {H['reversal'].hint}")
        fail(f"{head} not ({why}): are you permuting dim 1 (positions) of x, which is (B, T, C), "
             "and applying the same perm to the output?")
    passed("is_permutation_equivariant", len(layers))
