"""Checkers for the chapter 03 exercises (attention)."""

from __future__ import annotations

import math

import torch

from ..attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention
from .common import call, close, fail, passed, shape_of

__all__ = ["check_masked_softmax", "check_causal_mask", "check_attention", "check_split_merge",
           "check_multi_head_attention"]


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
        fail(f"{name} should return one tensor, got a tuple of {len(got)}: return only the "
             "output, not (output, weights)")
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
        ("scores [[1, 2, 3, 4]], nothing masked", torch.tensor([[1.0, 2, 3, 4]]),
         torch.ones(1, 4, dtype=torch.bool)),
        ("4x4 scores, causal mask", torch.randn(4, 4, generator=g), causal4),
        ("scores (2, 3, 5, 5), causal (5, 5) mask broadcast over them",
         torch.randn(2, 3, 5, 5, generator=g) * 3, causal5),
        ("masked keys holding the largest scores", biggest_masked, half),
        ("4x7 scores, random mask", torch.randn(4, 7, generator=g), rand_mask),
        ("one allowed key per row", torch.randn(3, 5, generator=g), one_key),
        ("scores around ±1000", large, torch.tensor([[True, True, True, False]] * 2)),
        ("scores of -3e9, below -1e9", very_low, causal4[:3]),
    ]


def check_masked_softmax(fn) -> None:
    """Exercise 1: fn(scores, mask) -> softmax over the last dim, masked keys getting exactly 0."""
    cases = _softmax_cases()
    for case, scores, mask in cases:
        got = _tensor(_call(fn, scores.clone(), mask.clone(), name="masked_softmax", case=case),
                      "masked_softmax")
        want = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        _same_shape(got, want, "masked_softmax", case, "the scores' shape")
        if torch.isnan(got).any():
            if scores.abs().max() > 80:
                fail(f"masked_softmax({case}) contains NaN: exp of scores this large (or this "
                     "low) overflows (or underflows to 0/0). Subtract each row's maximum "
                     "before exp, or use torch.softmax")
            fail(f"masked_softmax({case}) contains NaN. If you built an additive mask like "
                 "(~mask) * float('-inf'), note that 0 * -inf is NaN: use "
                 "scores.masked_fill(~mask, float('-inf')) instead")
        full_mask = mask.expand_as(scores)
        leaked = got[~full_mask]
        if (leaked != 0).any():
            hint = (" (-1e9 is only a big number: when the real scores are lower still, the "
                    "'masked' keys win)" if scores.max() < -1e9 else "")
            fail(f"masked_softmax({case}): a masked position got weight {leaked.abs().max():.4g}, "
                 "but masked positions must get exactly 0: fill their scores with "
                 f"float('-inf') before the softmax{hint}")
        rows = got.sum(dim=-1).flatten()
        bad = (rows - 1).abs() > 1e-5
        if bad.any():
            if torch.allclose(got.sum(dim=-2), torch.ones_like(got.sum(dim=-2)), atol=1e-5):
                fail(f"masked_softmax({case}): your columns sum to 1, not your rows: take the "
                     "softmax over the last dimension (dim=-1), the keys")
            fail(f"masked_softmax({case}): a row sums to {rows[bad][0]:.4f} instead of 1. "
                 "Mask the scores before the softmax; zeroing weights after the softmax leaves "
                 "rows that no longer add up to 1")
        if not close(got, want):
            fail(f"masked_softmax({case}) should give {want.flatten()[:4].tolist()} ... "
                 f"got {got.flatten()[:4].tolist()} ...: exp(score) / sum of exp over the "
                 "allowed keys of the row")
    passed("masked_softmax", len(cases))


# --------------------------------------------------------------------------- exercise 2


def check_causal_mask(fn) -> None:
    """Exercise 2: fn(T) -> bool (T, T), True where query i may attend to key j (j <= i)."""
    sizes = [4, 1, 2, 7]
    for T in sizes:
        got = _tensor(_call(fn, T, name="causal_mask", case=str(T)), "causal_mask")
        want = causal_mask(T)
        _same_shape(got, want, "causal_mask", str(T), "(T, T)")
        if got.dtype != torch.bool:
            fail(f"causal_mask({T}) has dtype {got.dtype}; return a boolean tensor (True = may "
                 "attend), e.g. compare positions with <= or call .bool()")

        def outputs(x, m=got):
            return scaled_dot_product_attention(x[:, None], x[:, None], x[:, None], m)[0, 0]

        leak = _first_leak(outputs, T) if T > 1 else None
        if leak is not None:
            i, j = leak
            fail(f"position {i} changed when token {j} changed: your mask lets tokens see the "
                 f"future. In causal_mask({T}), query i may attend only to keys j <= i (the "
                 "lower triangle, torch.tril)")
        diag = got.diagonal()
        if not diag.all():
            i = int((~diag).nonzero()[0])
            fail(f"causal_mask({T})[{i}, {i}] is False: a position must be able to attend to "
                 "itself (use j <= i, not j < i; torch.tril keeps the diagonal). Without it "
                 "position 0 sees nothing at all and its softmax is NaN")
        if not torch.equal(got, want):
            i, j = (got != want).nonzero()[0].tolist()
            fail(f"causal_mask({T})[{i}, {j}] should be {bool(want[i, j])}: position {i} must "
                 f"see every key j <= {i}, and no later one")
    passed("causal_mask", len(sizes))


# --------------------------------------------------------------------------- exercise 3


def _attention_variant(q, k, v, mask=None, scale="sqrt", dim=-1, mask_after=False):
    D, Tk = q.shape[-1], k.shape[-2]
    scores = q @ k.transpose(-2, -1)
    scores = scores / {"sqrt": math.sqrt(D), "none": 1.0, "D": D, "Tk": math.sqrt(Tk)}[scale]
    if mask is not None and not mask_after:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=dim)
    if mask is not None and mask_after:
        weights = weights * mask  # zeroed after normalising: rows no longer sum to 1
    return weights @ v


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
    ]


def check_attention(fn) -> None:
    """Exercise 3: fn(q, k, v, mask=None) -> softmax(q kᵀ / sqrt(D), masked) v."""
    cases = _attention_cases()
    for case, q, k, v, mask in cases:
        args = [t.clone() for t in (q, k, v)] + [None if mask is None else mask.clone()]
        note = ("\n(for batched tensors use k.transpose(-2, -1): k.T reverses every dimension)"
                if q.dim() > 2 else "")
        got = _tensor(_call(fn, *args, name="attention", case=case, note=note), "attention")
        want = scaled_dot_product_attention(q, k, v, mask)
        _same_shape(got, want, "attention", case, "(..., Tq, Dv)")
        if close(got, want):
            continue
        if torch.isnan(got).any():
            fail(f"attention({case}) contains NaN: some row has no allowed key. True in the mask "
                 "means 'may attend', so fill the scores where the mask is False "
                 "(scores.masked_fill(~mask, float('-inf')))")
        if close(got, _attention_variant(q, k, v, mask, scale="none")):
            fail(f"attention({case}) equals attention WITHOUT the scaling: divide the scores "
                 "q @ kᵀ by sqrt(D), with D = q.shape[-1], before the softmax")
        if close(got, _attention_variant(q, k, v, mask, scale="D")):
            fail(f"attention({case}): you divided the scores by D = {q.shape[-1]}; divide by "
                 f"sqrt(D) = {math.sqrt(q.shape[-1]):.3f}")
        if k.shape[-2] != q.shape[-1] and close(got, _attention_variant(q, k, v, mask,
                                                                         scale="Tk")):
            fail(f"attention({case}): you divided the scores by the square root of the number "
                 f"of keys, {k.shape[-2]}; D is the size of each query and key vector, "
                 f"q.shape[-1] = {q.shape[-1]}")
        if mask is not None and close(got, _attention_variant(q, k, v, mask, mask_after=True)):
            fail(f"attention({case}): you zeroed the weights after the softmax, so the rows no "
                 "longer sum to 1: mask the scores with -inf before the softmax (exercise 1)")
        if mask is not None and close(got, _attention_variant(q, k, v, None)):
            fail(f"attention({case}) equals attention without the mask: set the scores where "
                 "the mask is False to -inf before the softmax")
        if q.shape[-2] == k.shape[-2] and close(got, _attention_variant(q, k, v, mask, dim=-2)):
            fail(f"attention({case}): your softmax runs over the queries; take it over the "
                 "keys, the last dimension of the scores (dim=-1)")
        err = (got - want).abs().max().item()
        fail(f"attention({case}) is off by up to {err:.4g}: compute softmax(q @ kᵀ / sqrt(D)) "
             "@ v, with kᵀ = k.transpose(-2, -1), D = q.shape[-1], and the softmax over the "
             "keys (dim=-1)")
    passed("attention", len(cases))


# --------------------------------------------------------------------------- exercise 4


def check_split_merge(split_heads, merge_heads) -> None:
    """Exercise 4: split_heads (B, T, C) -> (B, H, T, D) and merge_heads back to (B, T, C)."""
    shapes = [(1, 3, 4, 2), (2, 5, 12, 3), (1, 1, 8, 1), (2, 4, 6, 6), (3, 7, 16, 4)]
    g = _gen(2)
    for B, T, C, H in shapes:
        D = C // H
        x = torch.randn(B, T, C, generator=g)
        case = f"x of shape (B, T, C) = {(B, T, C)}, n_heads={H}"
        got = _tensor(_call(split_heads, x.clone(), H, name="split_heads", case=case),
                      "split_heads")
        want = x.view(B, T, H, D).transpose(1, 2)
        _same_shape(got, want, "split_heads", case, "(B, H, T, D)")
        if not torch.equal(got, want):
            if torch.equal(got, x.reshape(B, H, T, D)):
                fail(f"split_heads({case}): reshape without transpose mixes heads and positions. "
                     "Head 0 must hold channels 0..D-1 of every position: view as "
                     "(B, T, H, D), then transpose(1, 2)")
            if torch.equal(got, x.view(B, T, D, H).permute(0, 3, 1, 2)):
                fail(f"split_heads({case}): head h must own the consecutive channels "
                     "h*D .. (h+1)*D - 1: view as (B, T, H, D), not (B, T, D, H)")
            fail(f"split_heads({case}): head h at position t should be x[b, t, h*D:(h+1)*D]")

        y = torch.randn(B, H, T, D, generator=g)
        case = f"y of shape (B, H, T, D) = {(B, H, T, D)}"
        got = _tensor(_call(merge_heads, y.clone(), name="merge_heads", case=case), "merge_heads")
        want = y.transpose(1, 2).reshape(B, T, C)
        _same_shape(got, want, "merge_heads", case, "(B, T, C)")
        if not torch.equal(got, want):
            if torch.equal(got, y.reshape(B, T, C)):
                fail(f"merge_heads({case}): reshape without transpose mixes heads and positions: "
                     "transpose(1, 2) back to (B, T, H, D) first, then reshape to (B, T, C)")
            fail(f"merge_heads({case}): position t should hold head 0's D channels, then "
                 "head 1's, ...: y.transpose(1, 2) then reshape")
    passed("split_heads and merge_heads", len(shapes))


# --------------------------------------------------------------------------- exercise 5


def _mha_variant(x, Wq, Wk, Wv, Wo, H, scale="D", split_t=True, merge_t=True, use_wo=True,
                 transpose_w=False, single_head=False):
    B, T, C = x.shape
    if single_head:
        H = 1
    D = C // H
    if transpose_w:
        Wq, Wk, Wv, Wo = Wq.T, Wk.T, Wv.T, Wo.T

    def split(t):
        return t.view(B, T, H, D).transpose(1, 2) if split_t else t.reshape(B, H, T, D)

    q, k, v = split(x @ Wq), split(x @ Wk), split(x @ Wv)
    scores = q @ k.transpose(-2, -1) / math.sqrt({"D": D, "C": C, "none": 1}[scale])
    scores = scores.masked_fill(~causal_mask(T), float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v  # (B, H, T, D)
    y = y.transpose(1, 2).reshape(B, T, C) if merge_t else y.reshape(B, T, C)
    return y @ Wo if use_wo else y


def _lmkit_mha(Wq, Wk, Wv, Wo, H) -> MultiHeadAttention:
    mha = MultiHeadAttention(Wq.shape[0], H, bias=False)
    with torch.no_grad():
        for proj, W in [(mha.q_proj, Wq), (mha.k_proj, Wk), (mha.v_proj, Wv), (mha.o_proj, Wo)]:
            proj.weight.copy_(W.T)  # nn.Linear computes x @ weight.T
    return mha


_MHA_HINTS = [
    (dict(scale="C"), "you scaled the scores by sqrt(C) = sqrt(d_model); each head divides its "
                      "scores by sqrt(D), its own dimension D = C / n_heads"),
    (dict(scale="none"), "your output equals multi-head attention WITHOUT the 1/sqrt(D) "
                         "scaling: divide each head's scores by sqrt(D), D = C / n_heads"),
    (dict(use_wo=False), "your output equals the merged heads before the output projection: "
                         "multiply by W_o at the end"),
    (dict(split_t=False), "heads are mixed up: split with .view(B, T, H, D).transpose(1, 2), "
                          "not a plain reshape to (B, H, T, D)"),
    (dict(merge_t=False), "heads are mixed up when merging: transpose(1, 2) back to "
                          "(B, T, H, D) before reshaping to (B, T, C)"),
    (dict(split_t=False, merge_t=False), "heads are mixed up: split with .view(B, T, H, "
                                         "D).transpose(1, 2) and merge with transpose(1, 2) "
                                         "then reshape, not plain reshapes"),
    (dict(single_head=True), "your output equals ONE head as wide as the model: split the "
                             "queries, keys and values into n_heads heads of D = C / n_heads "
                             "channels, and scale each head's scores by sqrt(D)"),
    (dict(transpose_w=True), "you multiplied by the transposed matrices: the weights are given "
                             "as (C_in, C_out), so compute x @ W (it is nn.Linear that stores "
                             "W.T)"),
]


def check_multi_head_attention(fn) -> None:
    """Exercise 5: fn(x, W_q, W_k, W_v, W_o, n_heads) -> causal multi-head attention (B, T, C)."""
    shapes = [(2, 7, 16, 4), (1, 5, 8, 2), (1, 1, 8, 2), (2, 6, 12, 1), (1, 9, 24, 6)]
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
        for flags, hint in _MHA_HINTS:
            if close(got, _mha_variant(x, *Ws, H, **flags)):
                fail(f"multi_head_attention({case}): {hint}")
        if T > 1:
            leak = _first_leak(lambda x_: student(x_)[0], T, C)
            if leak is not None:
                i, j = leak
                fail(f"multi_head_attention({case}): position {i} changed when token {j} "
                     "changed: your attention lets tokens see the future. Apply the causal "
                     "mask to every head's scores before the softmax (and split heads with "
                     "view + transpose: a plain reshape mixes positions too)")
        err = (got - want).abs().max().item()
        fail(f"multi_head_attention({case}) is off by up to {err:.4g}: project with x @ W_q "
             "(and W_k, W_v), split into heads, attend with the causal mask and sqrt(D) "
             "scaling, merge, then @ W_o")
    passed("multi_head_attention", len(shapes))
