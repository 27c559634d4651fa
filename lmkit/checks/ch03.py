"""Checkers for the chapter 03 exercises (attention)."""

from __future__ import annotations

import math

import torch

from ..attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention
from .common import (
    INPLACE,
    NO_RETURN,
    OVERFLOW,
    Mistake,
    call,
    checker,
    close,
    fail,
    passed,
    shape_of,
)

__all__ = ["check_masked_softmax", "check_causal_mask", "check_attention", "check_split_merge",
           "check_multi_head_attention", "MISTAKES"]

M = Mistake
_TUPLE = M("returning (output, weights) instead of the output alone",
           "return only the output, not (output, weights)")
MISTAKES: dict[str, dict[str, Mistake]] = {
    "masked_softmax": {
        "after": M("zeroing the weights after the softmax (rows no longer sum to 1)",
                   "mask the scores before the softmax; zeroing weights after the softmax "
                   "leaves rows that no longer add up to 1"),
        "additive": M("an additive mask `(~mask) * float('-inf')` (0 * -inf is NaN)",
                      "if you built an additive mask like (~mask) * float('-inf'), note that "
                      "0 * -inf is NaN: use scores.masked_fill(~mask, float('-inf')) instead"),
        "overflow": OVERFLOW,
        "big_negative": M("filling with -1e9 instead of -inf",
                          "-1e9 is only a big number: when the real scores are lower still, "
                          "the 'masked' keys win. Fill with float('-inf')"),
        "fill": M("filling the masked scores with 0 (or not at all)",
                  "masked positions must get exactly 0: fill their scores with float('-inf') "
                  "before the softmax"),
        "inverted": M("filling where the mask is True (True means MAY attend)",
                      "True in the mask means 'may attend': fill the scores where the mask is "
                      "False, scores.masked_fill(~mask, float('-inf'))"),
        "dim": M("the softmax over the wrong dimension", "your columns sum to 1, not your rows: "
                                                         "take the softmax over the last "
                                                         "dimension (dim=-1), the keys"),
        "log": M("returning log-probabilities (`log_softmax`)",
                 "you returned log-probabilities: return the probabilities themselves "
                 "(torch.softmax, not log_softmax)"),
        "inplace": INPLACE,
        "none": NO_RETURN,
    },
    "causal_mask": {
        "future": M("a mask that lets a position see later ones (`triu`, `diagonal=1`)",
                    "your mask lets tokens see the future: query i may attend only to keys "
                    "j <= i (the lower triangle, torch.tril)"),
        "diagonal": M("leaving out the diagonal (`j < i`)",
                      "a position must be able to attend to itself (use j <= i, not j < i; "
                      "torch.tril keeps the diagonal). Without it position 0 sees nothing at "
                      "all and its softmax is NaN"),
        "inverted": M("True where attention is forbidden (the opposite convention)",
                      "True means 'may attend' here: you returned the opposite, True where "
                      "the key is in the future"),
        "dtype": M("a float or int mask instead of booleans",
                   "return a boolean tensor (True = may attend), e.g. compare positions with "
                   "<= or call .bool()"),
        "additive": M("an additive mask of 0 and -inf", "return booleans, True = may attend, "
                                                        "not an additive mask of 0 and -inf"),
        "shape": M("the wrong size (T + 1 or a 1-D mask)", "the mask is (T, T): one row per "
                                                           "query, one column per key"),
        "type": M("returning a list or a numpy array", "return a torch.Tensor"),
        "none": NO_RETURN,
    },
    "attention": {
        "no_scale": M("forgetting the 1/sqrt(D) scaling",
                      "you forgot the scaling: divide the scores q @ kᵀ by sqrt(D), with "
                      "D = q.shape[-1], before the softmax"),
        "scale_D": M("dividing by D instead of sqrt(D)", "divide the scores by sqrt(D), not D"),
        "scale_Tk": M("scaling by the number of keys instead of the vector size",
                      "you divided the scores by the square root of the number of keys; D is "
                      "the size of each query and key vector, q.shape[-1]"),
        "mask_after": M("masking after the softmax", "you zeroed the weights after the softmax, "
                                                     "so the rows no longer sum to 1: mask the "
                                                     "scores with -inf before the softmax"),
        "no_mask": M("ignoring the mask", "set the scores where the mask is False to -inf "
                                          "before the softmax"),
        "inverted": M("filling where the mask is True", "True in the mask means 'may attend', "
                                                        "so fill the scores where the mask is "
                                                        "False (scores.masked_fill(~mask, "
                                                        "float('-inf')))"),
        "dim": M("the softmax over the queries (`dim=-2`)",
                 "your softmax runs over the queries; take it over the keys, the last "
                 "dimension of the scores (dim=-1)"),
        "kT": M("`k.T` on batched tensors", "for batched tensors use k.transpose(-2, -1): k.T "
                                            "reverses every dimension"),
        "values": M("multiplying the weights by the keys instead of the values",
                    "multiply the weights by v, the values, not by k"),
        "overflow": OVERFLOW,
        "tuple": _TUPLE,
        "inplace": INPLACE,
    },
    "split_merge": {
        "split_reshape": M("splitting with a plain reshape to (B, H, T, D)",
                           "reshape without transpose mixes heads and positions. Head 0 must "
                           "hold channels 0..D-1 of every position: view as (B, T, H, D), then "
                           "transpose(1, 2)"),
        "split_order": M("viewing as (B, T, D, H) instead of (B, T, H, D)",
                         "head h must own the consecutive channels h*D .. (h+1)*D - 1: view as "
                         "(B, T, H, D), not (B, T, D, H)"),
        "split_no_transpose": M("forgetting the transpose (returning (B, T, H, D))",
                                "split_heads returns (B, H, T, D): view as (B, T, H, D), then "
                                "transpose(1, 2)"),
        "heads_dims": M("confusing the number of heads H with the head size D",
                        "n_heads is the number of heads H; each head has D = C // n_heads "
                        "channels, so the result is (B, H, T, D)"),
        "merge_reshape": M("merging with a plain reshape",
                           "reshape without transpose mixes heads and positions: transpose(1, "
                           "2) back to (B, T, H, D) first, then reshape to (B, T, C)"),
        "merge_shape": M("merging to (B, T, H, D) and stopping there",
                         "merge_heads returns (B, T, C): after transpose(1, 2), reshape to "
                         "(B, T, H * D)"),
        "view": M("`.view` after a transpose (not contiguous)",
                  "after a transpose the tensor is not contiguous, so .view fails: use "
                  ".reshape (or .contiguous().view)"),
        "inplace": INPLACE,
    },
    "multi_head_attention": {
        "scale_C": M("scaling by sqrt(C) (the model width) instead of sqrt(D)",
                     "you scaled the scores by sqrt(C) = sqrt(d_model); each head divides its "
                     "scores by sqrt(D), its own dimension D = C / n_heads"),
        "no_scale": M("no 1/sqrt(D) scaling", "your output equals multi-head attention WITHOUT "
                                              "the 1/sqrt(D) scaling: divide each head's scores "
                                              "by sqrt(D), D = C / n_heads"),
        "scale_D": M("dividing by D instead of sqrt(D)",
                     "you divided each head's scores by D; divide by sqrt(D), D = C / n_heads"),
        "no_wo": M("forgetting the output projection W_o",
                   "your output equals the merged heads before the output projection: "
                   "multiply by W_o at the end"),
        "split": M("splitting heads with a plain reshape",
                   "heads are mixed up: split with .view(B, T, H, D).transpose(1, 2), not a "
                   "plain reshape to (B, H, T, D)"),
        "merge": M("merging heads with a plain reshape",
                   "heads are mixed up when merging: transpose(1, 2) back to (B, T, H, D) "
                   "before reshaping to (B, T, C)"),
        "single_head": M("one head as wide as the model",
                         "your output equals ONE head as wide as the model: split the queries, "
                         "keys and values into n_heads heads of D = C / n_heads channels, and "
                         "scale each head's scores by sqrt(D)"),
        "transpose_w": M("multiplying by the transposed weights (`x @ W.T`)",
                         "you multiplied by the transposed matrices: the weights are given as "
                         "(C_in, C_out), so compute x @ W (it is nn.Linear that stores W.T)"),
        "dim": M("the softmax over the queries (`dim=-2`)",
                 "your softmax runs over the queries (dim=-2); take it over the keys, the last "
                 "dimension of the scores (dim=-1). The causal mask itself is fine"),
        "no_mask": M("no causal mask (tokens see the future)",
                     "your attention lets tokens see the future: apply the causal mask to "
                     "every head's scores before the softmax"),
        "mask_after": M("masking the weights after the softmax",
                        "you zeroed the weights after the softmax, so rows no longer sum to 1: "
                        "fill the masked scores with -inf before the softmax"),
        "inplace": INPLACE,
    },
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _call(fn, *args, name: str, case: str, note: str = ""):
    """`call`, but a crash is reported with the case's description rather than tensor reprs."""
    try:
        return call(fn, *args, name=name)
    except AssertionError as e:
        crash = e.__cause__
        if crash is None:
            raise
        raise AssertionError(f"{name}({case}) raised {type(crash).__name__}: {crash}{note}") from crash


def _tensor(got, name: str) -> torch.Tensor:
    if isinstance(got, tuple):
        fail(f"{name} should return one tensor, got a tuple of {len(got)}: {_TUPLE.hint}")
    if got is None:
        fail(f"{name}: {NO_RETURN.hint}")
    if not isinstance(got, torch.Tensor):
        fail(f"{name} should return a torch.Tensor, got {type(got).__name__}")
    return got


def _same_shape(got: torch.Tensor, want: torch.Tensor, name: str, case: str, expected: str) -> None:
    if shape_of(got) != shape_of(want):
        fail(f"{name}({case}) returned shape {shape_of(got)}, expected {expected} = {shape_of(want)}")


def _first_leak(outputs, T: int, C: int = 8) -> tuple[int, int] | None:
    """outputs(x (1, T, C)) -> (T, ...); the first (position i, token j > i) such that changing
    token j changes the output at position i, trying the last token first; None if causal."""
    x = torch.randn(1, T, C, generator=_gen(7))
    before = outputs(x)
    for j in range(T - 1, 0, -1):
        x2 = x.clone()
        x2[0, j] = torch.randn(C, generator=_gen(100 + j))
        after = outputs(x2)
        for i in range(j):
            if not torch.allclose(before[i], after[i], atol=1e-6, equal_nan=True):
                return i, j
    return None


# --------------------------------------------------------------------------- exercise 1


def _softmax_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = _gen(0)
    causal4, causal5 = causal_mask(4), causal_mask(5)
    rand_mask = torch.rand(4, 7, generator=g) > 0.5
    rand_mask[:, 0] = True  # every row keeps at least one key
    one_key = torch.zeros(3, 5, dtype=torch.bool)
    one_key[torch.arange(3), torch.tensor([0, 2, 4])] = True
    biggest_masked = torch.arange(12.0).view(2, 6)  # the masked keys have the largest scores
    half = torch.tensor([True, True, True, False, False, False])
    large = torch.tensor([[1000.0, 999.0, -1000.0, 1001.0], [-1000.0, -998.0, 5.0, 0.0]])
    very_low = torch.full((3, 4), -3e9)  # real scores far below -1e9
    return [
        ("4x4 scores, causal mask", torch.randn(4, 4, generator=g), causal4),
        ("scores [[1, 2, 3, 4]], nothing masked", torch.tensor([[1.0, 2, 3, 4]]),
         torch.ones(1, 4, dtype=torch.bool)),
        ("scores (2, 3, 5, 5), causal (5, 5) mask broadcast over them",
         torch.randn(2, 3, 5, 5, generator=g) * 3, causal5),
        ("masked keys holding the largest scores", biggest_masked, half),
        ("4x7 scores, random mask", torch.randn(4, 7, generator=g), rand_mask),
        ("one allowed key per row", torch.randn(3, 5, generator=g), one_key),
        ("scores around ±1000", large, torch.tensor([[True, True, True, False]] * 2)),
        ("scores of -3e9, below -1e9", very_low, causal4[:3]),
        ("a masked score far above the allowed one, [[-100, 100]] with mask [[True, False]]",
         torch.tensor([[-100.0, 100.0]]), torch.tensor([[True, False]])),
    ]


@checker
def check_masked_softmax(fn) -> None:
    """Exercise 1: fn(scores, mask) -> softmax over the last dim, masked keys getting exactly 0."""
    H = MISTAKES["masked_softmax"]
    cases = _softmax_cases()
    for case, scores, mask in cases:
        got = _tensor(_call(fn, scores.clone(), mask.clone(), name="masked_softmax", case=case),
                      "masked_softmax")
        want = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        _same_shape(got, want, "masked_softmax", case, "the scores' shape")
        head = f"masked_softmax({case})"
        if close(got, want):
            continue
        if torch.isnan(got).any():
            additive = torch.softmax(scores + (~mask) * float("-inf"), dim=-1)
            if scores.abs().max() < 80 and close(got, additive, equal_nan=True):
                fail(f"{head} contains NaN: {H['additive'].hint}")
            inverted = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
            if close(got, inverted, equal_nan=True):
                fail(f"{head}: {H['inverted'].hint}")
            if scores.abs().max() > 80:
                fail(f"{head} contains NaN: {H['overflow'].hint}")
            fail(f"{head} contains NaN: {H['additive'].hint}")
        if close(got, torch.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)):
            fail(f"{head}: {H['log'].hint}")
        full_mask = mask.expand_as(scores)
        leaked = got[~full_mask]
        if (leaked != 0).any():
            if scores.max() < -1e9:
                fail(f"{head}: a masked position got weight {leaked.abs().max():.4g}: "
                     f"{H['big_negative'].hint}")
            if close(got, torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1),
                     equal_nan=True):
                fail(f"{head}: {H['inverted'].hint}")
            fail(f"{head}: a masked position got weight {leaked.abs().max():.4g}: "
                 f"{H['fill'].hint}")
        rows = got.sum(dim=-1).flatten()
        bad = (rows - 1).abs() > 1e-5
        if bad.any():
            if torch.allclose(got.sum(dim=-2), torch.ones_like(got.sum(dim=-2)), atol=1e-5):
                fail(f"{head}: {H['dim'].hint}")
            fail(f"{head}: a row sums to {rows[bad][0]:.4f} instead of 1: {H['after'].hint}")
        fail(f"{head} should give {want.flatten()[:4].tolist()} ... "
             f"got {got.flatten()[:4].tolist()} ...: exp(score) / sum of exp over the "
             "allowed keys of the row")
    passed("masked_softmax", len(cases))


# --------------------------------------------------------------------------- exercise 2


@checker
def check_causal_mask(fn) -> None:
    """Exercise 2: fn(T) -> bool (T, T), True where query i may attend to key j (j <= i)."""
    H = MISTAKES["causal_mask"]
    sizes = [4, 1, 2, 7]
    for T in sizes:
        got = call(fn, T, name="causal_mask")
        if got is None:
            fail(f"causal_mask({T}): {H['none'].hint}")
        if not isinstance(got, torch.Tensor):
            fail(f"causal_mask({T}) returned a {type(got).__name__}: {H['type'].hint}")
        want = causal_mask(T)
        if shape_of(got) != (T, T):
            fail(f"causal_mask({T}) returned shape {shape_of(got)}, expected {(T, T)}: "
                 f"{H['shape'].hint}")
        if got.dtype != torch.bool:
            key = "additive" if bool(torch.isinf(got.float()).any()) else "dtype"
            fail(f"causal_mask({T}) has dtype {got.dtype}: {H[key].hint}")
        if T > 1 and torch.equal(got, ~want):
            fail(f"causal_mask({T}): {H['inverted'].hint}")

        def outputs(x, m=got):
            return scaled_dot_product_attention(x[:, None], x[:, None], x[:, None], m)[0, 0]

        leak = _first_leak(outputs, T) if T > 1 else None
        if leak is not None:
            i, j = leak
            fail(f"position {i} changed when token {j} changed in causal_mask({T}): "
                 f"{H['future'].hint}")
        diag = got.diagonal()
        if not diag.all():
            i = int((~diag).nonzero()[0])
            fail(f"causal_mask({T})[{i}, {i}] is False: {H['diagonal'].hint}")
        if not torch.equal(got, want):
            i, j = (got != want).nonzero()[0].tolist()
            fail(f"causal_mask({T})[{i}, {j}] should be {bool(want[i, j])}: position {i} must "
                 f"see every key j <= {i}, and no later one")
    passed("causal_mask", len(sizes))


# --------------------------------------------------------------------------- exercise 3


def _attention_variant(q, k, v, mask=None, scale="sqrt", dim=-1, mask_after=False,
                       invert=False, values=True):
    D, Tk = q.shape[-1], k.shape[-2]
    scores = q @ k.transpose(-2, -1)
    scores = scores / {"sqrt": math.sqrt(D), "none": 1.0, "D": D, "Tk": math.sqrt(Tk)}[scale]
    if mask is not None and not mask_after:
        scores = scores.masked_fill(mask if invert else ~mask, float("-inf"))
    weights = torch.softmax(scores, dim=dim)
    if mask is not None and mask_after:
        weights = weights * mask  # zeroed after normalising: rows no longer sum to 1
    return weights @ (v if values else k)


def _attention_cases():
    g = _gen(1)
    rand_mask = torch.rand(2, 1, 4, 6, generator=g) > 0.4
    rand_mask[..., 0] = True
    return [
        ("q, k, v of shape (4, 8), no mask", torch.randn(4, 8, generator=g),
         torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), None),
        ("q, k, v of shape (2, 3, 6, 16), causal mask", torch.randn(2, 3, 6, 16, generator=g),
         torch.randn(2, 3, 6, 16, generator=g), torch.randn(2, 3, 6, 16, generator=g),
         causal_mask(6)),
        ("3 queries, 5 keys, values of dim 4", torch.randn(3, 8, generator=g),
         torch.randn(5, 8, generator=g), torch.randn(5, 4, generator=g), None),
        ("D = 64, causal mask", torch.randn(1, 5, 64, generator=g),
         torch.randn(1, 5, 64, generator=g), torch.randn(1, 5, 64, generator=g), causal_mask(5)),
        ("q (2, 1, 4, 8), k and v (2, 1, 6, 8), random mask (2, 1, 4, 6)",
         torch.randn(2, 1, 4, 8, generator=g), torch.randn(2, 1, 6, 8, generator=g),
         torch.randn(2, 1, 6, 8, generator=g), rand_mask),
        ("D = 1, a single position", torch.randn(1, 1, generator=g),
         torch.randn(1, 1, generator=g), torch.randn(1, 1, generator=g), causal_mask(1)),
        ("large scores (q and k entries around ±30)", 30 * torch.randn(4, 8, generator=g),
         30 * torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), causal_mask(4)),
    ]


_ATTENTION_VARIANTS = [("no_scale", dict(scale="none")), ("scale_D", dict(scale="D")),
                       ("scale_Tk", dict(scale="Tk")), ("mask_after", dict(mask_after=True)),
                       ("inverted", dict(invert=True)), ("no_mask", dict(mask=None)),
                       ("dim", dict(dim=-2)), ("values", dict(values=False))]


@checker
def check_attention(fn) -> None:
    """Exercise 3: fn(q, k, v, mask=None) -> softmax(q kᵀ / sqrt(D), masked) v."""
    H = MISTAKES["attention"]
    cases = _attention_cases()
    for case, q, k, v, mask in cases:
        args = [t.clone() for t in (q, k, v)] + [None if mask is None else mask.clone()]
        note = f"\n({H['kT'].hint})" if q.dim() > 2 else ""
        got = _tensor(_call(fn, *args, name="attention", case=case, note=note), "attention")
        want = scaled_dot_product_attention(q, k, v, mask)
        _same_shape(got, want, "attention", case, "(..., Tq, Dv)")
        if close(got, want):
            continue
        for key, flags in _ATTENTION_VARIANTS:
            flags = {"mask": mask, **flags}
            if key in ("mask_after", "inverted", "no_mask") and mask is None:
                continue
            if key == "values" and k.shape[-1] != v.shape[-1]:
                continue
            if key == "scale_Tk" and k.shape[-2] == q.shape[-1]:
                continue
            if key == "dim" and q.shape[-2] != k.shape[-2]:
                continue
            if close(got, _attention_variant(q, k, v, **flags), equal_nan=True):
                fail(f"attention({case}): {H[key].hint}")
        if torch.isnan(got).any():
            if q.abs().max() > 10:
                fail(f"attention({case}) contains NaN: {H['overflow'].hint}")
            fail(f"attention({case}) contains NaN: some row has no allowed key. "
                 f"{H['inverted'].hint}")
        err = (got - want).abs().max().item()
        fail(f"attention({case}) is off by up to {err:.4g}: compute softmax(q @ kᵀ / sqrt(D)) "
             "@ v, with kᵀ = k.transpose(-2, -1), D = q.shape[-1], and the softmax over the "
             "keys (dim=-1)")
    passed("attention", len(cases))


# --------------------------------------------------------------------------- exercise 4


@checker
def check_split_merge(split_heads, merge_heads) -> None:
    """Exercise 4: split_heads (B, T, C) -> (B, H, T, D) and merge_heads back to (B, T, C)."""
    H_ = MISTAKES["split_merge"]
    shapes = [(1, 3, 4, 2), (2, 5, 12, 3), (1, 1, 8, 1), (2, 4, 6, 6), (3, 7, 16, 4)]
    g = _gen(2)

    def run(fn, arg, name, case):
        try:
            return _tensor(_call(fn, arg, *([] if name == "merge_heads" else [H]), name=name,
                                 case=case), name)
        except AssertionError as e:
            if "view size is not compatible" in str(e):
                fail(f"{e}\n{H_['view'].hint}")
            raise

    for B, T, C, H in shapes:
        D = C // H
        x = torch.randn(B, T, C, generator=g)
        case = f"x of shape (B, T, C) = {(B, T, C)}, n_heads={H}"
        got = run(split_heads, x.clone(), "split_heads", case)
        want = x.view(B, T, H, D).transpose(1, 2)
        if shape_of(got) != shape_of(want):
            key = ("split_no_transpose" if shape_of(got) == (B, T, H, D) else
                   "heads_dims" if shape_of(got) in ((B, D, T, H), (B, T, D, H)) else None)
            fail(f"split_heads({case}) returned shape {shape_of(got)}, expected (B, H, T, D) = "
                 f"{shape_of(want)}" + (f": {H_[key].hint}" if key else ""))
        if not torch.equal(got, want):
            if torch.equal(got, x.reshape(B, H, T, D)):
                fail(f"split_heads({case}): {H_['split_reshape'].hint}")
            if torch.equal(got, x.view(B, T, D, H).permute(0, 3, 1, 2)):
                fail(f"split_heads({case}): {H_['split_order'].hint}")
            fail(f"split_heads({case}): head h at position t should be x[b, t, h*D:(h+1)*D]")

        y = torch.randn(B, H, T, D, generator=g)
        case = f"y of shape (B, H, T, D) = {(B, H, T, D)}"
        got = run(merge_heads, y.clone(), "merge_heads", case)
        want = y.transpose(1, 2).reshape(B, T, C)
        if shape_of(got) != shape_of(want):
            key = "merge_shape" if shape_of(got) == (B, T, H, D) else None
            fail(f"merge_heads({case}) returned shape {shape_of(got)}, expected (B, T, C) = "
                 f"{shape_of(want)}" + (f": {H_[key].hint}" if key else ""))
        if not torch.equal(got, want):
            if torch.equal(got, y.reshape(B, T, C)):
                fail(f"merge_heads({case}): {H_['merge_reshape'].hint}")
            fail(f"merge_heads({case}): position t should hold head 0's D channels, then "
                 "head 1's, ...: y.transpose(1, 2) then reshape")
    passed("split_heads and merge_heads", len(shapes))


# --------------------------------------------------------------------------- exercise 5


def _mha_variant(x, Wq, Wk, Wv, Wo, H, scale="D", split_t=True, merge_t=True, use_wo=True,
                 transpose_w=False, single_head=False, dim=-1, causal=True, mask_after=False):
    B, T, C = x.shape
    if single_head:
        H = 1
    D = C // H
    if transpose_w:
        Wq, Wk, Wv, Wo = Wq.T, Wk.T, Wv.T, Wo.T

    def split(t):
        return t.view(B, T, H, D).transpose(1, 2) if split_t else t.reshape(B, H, T, D)

    q, k, v = split(x @ Wq), split(x @ Wk), split(x @ Wv)
    scores = q @ k.transpose(-2, -1) / math.sqrt({"D": D, "C": C, "none": 1, "D2": D * D}[scale])
    mask = causal_mask(T)
    if causal and not mask_after:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=dim)
    if mask_after:
        w = w * mask
    y = w @ v  # (B, H, T, D)
    y = y.transpose(1, 2).reshape(B, T, C) if merge_t else y.reshape(B, T, C)
    return y @ Wo if use_wo else y


def _lmkit_mha(Wq, Wk, Wv, Wo, H) -> MultiHeadAttention:
    mha = MultiHeadAttention(Wq.shape[0], H, bias=False)
    with torch.no_grad():
        for proj, W in [(mha.q_proj, Wq), (mha.k_proj, Wk), (mha.v_proj, Wv), (mha.o_proj, Wo)]:
            proj.weight.copy_(W.T)  # nn.Linear computes x @ weight.T
    return mha


# Tried in this order, on sizes where the candidates give different numbers (D != sqrt(C)).
_MHA_VARIANTS = [
    (dict(scale="C"), "scale_C"), (dict(scale="none"), "no_scale"), (dict(scale="D2"), "scale_D"),
    (dict(use_wo=False), "no_wo"), (dict(split_t=False), "split"), (dict(merge_t=False), "merge"),
    (dict(split_t=False, merge_t=False), "split"), (dict(single_head=True), "single_head"),
    (dict(transpose_w=True), "transpose_w"), (dict(dim=-2), "dim"), (dict(causal=False), "no_mask"),
    (dict(mask_after=True), "mask_after"),
]


@checker
def check_multi_head_attention(fn) -> None:
    """Exercise 5: fn(x, W_q, W_k, W_v, W_o, n_heads) -> causal multi-head attention (B, T, C)."""
    HM = MISTAKES["multi_head_attention"]
    # D = C / H is never sqrt(C) here, so "divided by D" and "scaled by sqrt(C)" differ
    shapes = [(2, 7, 18, 3), (1, 5, 8, 2), (1, 1, 8, 2), (2, 6, 12, 1), (1, 9, 24, 6)]
    g = _gen(3)
    for B, T, C, H in shapes:
        x = torch.randn(B, T, C, generator=g)
        Ws = [torch.randn(C, C, generator=g) / math.sqrt(C) for _ in range(4)]
        case = f"x of shape (B, T, C) = {(B, T, C)}, n_heads={H}"

        def student(x_, Ws=Ws, H=H, case=case):
            out = _call(fn, x_.clone(), *(W.clone() for W in Ws), H, name="multi_head_attention",
                        case=case)
            return _tensor(out, "multi_head_attention")

        got = student(x)
        with torch.no_grad():
            want = _lmkit_mha(*Ws, H)(x)
        _same_shape(got, want, "multi_head_attention", case, "(B, T, C)")
        if close(got, want):
            continue
        for flags, key in _MHA_VARIANTS:
            if close(got, _mha_variant(x, *Ws, H, **flags)):
                fail(f"multi_head_attention({case}): {HM[key].hint}")
        if T > 1:
            leak = _first_leak(lambda x_: student(x_)[0], T, C)
            if leak is not None:
                i, j = leak
                fail(f"multi_head_attention({case}): position {i} changed when token {j} "
                     f"changed: {HM['no_mask'].hint} (and split heads with view + transpose: "
                     "a plain reshape mixes positions too)")
        err = (got - want).abs().max().item()
        fail(f"multi_head_attention({case}) is off by up to {err:.4g}: project with x @ W_q "
             "(and W_k, W_v), split into heads, attend with the causal mask and sqrt(D) "
             "scaling, merge, then @ W_o")
    passed("multi_head_attention", len(shapes))
