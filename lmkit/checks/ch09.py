"""Checkers for the chapter 09 exercises (modern architecture).

Each check runs the student's function on several cases, compares it with lmkit's own code
or a computation done another way, and names the likely mistake when the answer matches one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..attention import scaled_dot_product_attention
from ..embeddings import (
    apply_rope,
    apply_rope_interleaved,
    convert_rope_layout,
    rope_frequencies,
    rope_permutation,
)
from .common import call_tensors, close, compare, fail, passed, shape_of, unchanged

__all__ = ["check_rope_rotate", "check_offset_scores", "check_repeat_kv",
           "check_rolling_update", "check_merge_blocks", "check_to_half_layout"]


def _known_mistake(name: str, case: str, got, want: Tensor,
                   mistakes: list[tuple[Tensor, str]]) -> None:
    """Name a catalogued mistake even when its shape differs from the right answer's."""
    if isinstance(got, Tensor) and got.shape == want.shape and close(got, want):
        return
    for wrong, hint in mistakes:
        if isinstance(got, Tensor) and got.shape == wrong.shape and close(got, wrong):
            fail(f"{name} on {case}: {hint}")


def _rand(*shape, seed=0, scale=1.0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _rotate(x: Tensor, pos: Tensor, theta: float, layout: str = "interleaved",
            sign: float = 1.0, exponent: float = 2.0) -> Tensor:
    """RoPE of rows x (T, D) at positions pos (T,), written out for the mistakes below."""
    D = x.shape[-1]
    inv_freq = theta ** (-exponent * torch.arange(D // 2, dtype=torch.float64) / D)  # (D/2,)
    ang = sign * pos.double()[:, None] * inv_freq  # (T, D/2)
    cos, sin = ang.cos(), ang.sin()
    x = x.double()
    if layout == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2).float()
    a, b = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat((a * cos - b * sin, a * sin + b * cos), -1).float()


# ----------------------------------------------------------------------------- 1 RoPE


def check_rope_rotate(fn) -> None:
    """Exercise 1: fn(x (T, D), pos (T,), theta) -> x rotated pairwise, interleaved layout."""
    cases = [
        ("one vector [1, 2, 3, 4] at position 1", torch.tensor([[1.0, 2.0, 3.0, 4.0]]),
         torch.tensor([1]), 10000.0),
        ("position 0 (no rotation)", _rand(1, 8, seed=1), torch.tensor([0]), 10000.0),
        ("6 positions 0..5, D=8", _rand(6, 8, seed=2), torch.arange(6), 10000.0),
        ("positions [7, 3, 100], D=16, theta=100", _rand(3, 16, seed=3), torch.tensor([7, 3, 100]),
         100.0),
        ("4 positions 10..13, D=64, theta=100000 (SmolLM2's)", _rand(4, 64, seed=4),
         torch.arange(10, 14), 100000.0),
    ]
    for case, x, pos, theta in cases:
        before = [x.clone(), pos.clone()]
        got = call_tensors(fn, x, pos, theta, name="rope_rotate")
        unchanged("rope_rotate", before, [x, pos], "x")
        cos, sin = rope_frequencies(x.shape[-1], int(pos.max()) + 1, theta)
        want = torch.stack([apply_rope_interleaved(x[i].view(1, 1, 1, -1), cos, sin, int(p))
                            .view(-1) for i, p in enumerate(pos)])
        mistakes = [
            (_rotate(x, pos, theta, sign=-1.0),
             "you rotate the wrong way: the first number of a pair becomes "
             "a cos - b sin, the second a sin + b cos"),
            (_rotate(x, pos, theta, layout="half"),
             "you paired dimension i with i + D/2 (the half-split layout of Hugging Face); this "
             "exercise uses interleaved pairs (x[2i], x[2i+1]): x[0::2] and x[1::2]"),
            (_rotate(x, pos, theta, exponent=1.0),
             "the frequencies are off: pair i turns by theta^(-2i/D) per position (i counts "
             "pairs, 0..D/2-1), not theta^(-i/D)"),
            (_rotate(x, pos, theta, exponent=-2.0),
             "the frequencies grow instead of shrinking: use theta ** (-2i/D), a minus sign"),
            (_rotate(x, torch.ones_like(pos), theta),
             "every row turned by the same angle: multiply the frequencies by each row's "
             "position pos[t]"),
            (_rotate(x, pos + 1, theta),
             "the angles are one position too far: position t turns by t * frequency, so "
             "position 0 does not turn at all"),
            (_rotate(x, pos, 10000.0),
             "the angles ignore `theta`: the frequencies are theta ** (-2i/D) with the theta "
             "passed in (10000 is only the usual default)"),
            (_swap_cos_sin(x, pos, theta),
             "cos and sin are swapped: at angle 0 the rotation must leave x unchanged "
             "(cos 0 = 1, sin 0 = 0)"),
            (_unstacked(_rotate(x, pos, theta)),
             "the right pairs turned, but the results went back as [all first numbers, all "
             "second numbers]: put each pair back in place, torch.stack((a2, b2), -1)"
             ".flatten(-2)"),
        ]
        compare("rope_rotate", case, got, want, mistakes,
                shape_hint="Return a tensor shaped like x, (T, D).")
    passed("rope_rotate", len(cases))


def _unstacked(y: Tensor) -> Tensor:
    return torch.cat((y[..., 0::2], y[..., 1::2]), -1)


def _swap_cos_sin(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    D = x.shape[-1]
    ang = pos.double()[:, None] * theta ** (-2 * torch.arange(D // 2, dtype=torch.float64) / D)
    a, b = x.double()[..., 0::2], x.double()[..., 1::2]
    cos, sin = ang.sin(), ang.cos()
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2).float()


# ----------------------------------------------------------------------------- 2 offsets


def check_offset_scores(fn, rotate=None) -> None:
    """Exercise 2: fn(q (D,), k (D,), offset, n_max, theta) -> scores (n_max,):
    rot(q, n + offset) . rot(k, n) for n = 0..n_max-1 (interleaved RoPE, no scaling)."""
    cases = [
        ("D=4, offset 1, 5 positions", torch.tensor([1.0, 0.0, 0.5, -1.0]),
         torch.tensor([0.0, 1.0, 1.0, 0.5]), 1, 5, 10000.0),
        ("D=8, offset 0", _rand(8, seed=5), _rand(8, seed=6), 0, 4, 10000.0),
        ("D=16, offset 3, theta=100", _rand(16, seed=7), _rand(16, seed=8), 3, 20, 100.0),
        ("D=64, offset 17, theta=100000", _rand(64, seed=9), _rand(64, seed=10), 17, 30, 1e5),
    ]
    for case, q, k, offset, n_max, theta in cases:
        before = [q.clone(), k.clone()]
        got = call_tensors(fn, q, k, offset, n_max, theta, name="offset_scores")
        unchanged("offset_scores", before, [q, k], "q")
        n = torch.arange(n_max)
        Q, K = q.expand(n_max, -1), k.expand(n_max, -1)

        def dots(qpos, kpos, layout="interleaved", th=theta, q_=Q, k_=K):
            return (_rotate(q_, qpos, th, layout) * _rotate(k_, kpos, th, layout)).sum(-1)

        want = dots(n + offset, n)
        plain = (Q * K).sum(-1)
        mistakes = [
            (dots(n + offset, n) / math.sqrt(q.numel()),
             "you divided by sqrt(D): return the plain dot products, the property holds either "
             "way and the check compares raw scores"),
            (dots(n, n + offset),
             "the query and key positions are swapped: the query sits at n + offset, the key at "
             "n (the score depends on query position minus key position)"),
            (plain, "you forgot to rotate (or rotated both by the same position, so the offset "
                    "is lost): rotate q to position n + offset and k to position n"),
            (dots(torch.full_like(n, offset), n),
             "the query always sits at position `offset`: put it at n + offset, moving with n"),
            ((_rotate(Q, n + offset, theta) * K).sum(-1),
             "only q was rotated: rotate k to position n as well"),
            (dots(n + offset, n, layout="half"),
             "you used the half-split layout; use the interleaved RoPE of exercise 1"),
            (dots(n + offset, n, th=10000.0),
             "the angles ignore `theta`: pass the theta given to the function"),
            ((_rotate(Q, n + offset, theta) + _rotate(K, n, theta)).sum(-1),
             "a score is a dot product, sum(q * k), not a sum of the two vectors"),
        ]
        compare("offset_scores", case, got, want, mistakes,
                shape_hint="Return one score per n: shape (n_max,).")
    passed("offset_scores", len(cases))


# ----------------------------------------------------------------------------- 3 repeat_kv


def check_repeat_kv(fn) -> None:
    """Exercise 3: fn(x (B, H_kv, T, D), n_rep) -> (B, H_kv * n_rep, T, D); query head h uses
    key/value head h // n_rep."""
    cases = [
        ("B=1, 2 kv heads, n_rep=3", _rand(1, 2, 4, 5, seed=11), 3),
        ("B=2, 3 kv heads, n_rep=3 (SmolLM2: 9 query heads)", _rand(2, 3, 6, 4, seed=12), 3),
        ("n_rep=1 (plain multi-head attention)", _rand(2, 4, 3, 2, seed=13), 1),
        ("one kv head, n_rep=4 (multi-query attention)", _rand(1, 1, 5, 3, seed=14), 4),
    ]
    for case, x, n_rep in cases:
        before = [x.clone()]
        got = call_tensors(fn, x, n_rep, name="repeat_kv")
        unchanged("repeat_kv", before, [x], "x")
        B, Hkv, T, D = x.shape
        want = x.repeat_interleave(n_rep, dim=1)
        if isinstance(got, Tensor) and got.shape != want.shape:
            shapes = {
                (B * n_rep, Hkv, T, D): "you repeated along dim 0 (the batch); repeat the heads, "
                                        "dim 1",
                (B, Hkv, T * n_rep, D): "you repeated along dim 2 (time); repeat the heads, dim 1",
                (B, Hkv, T, D * n_rep): "you repeated along dim 3 (head dim); repeat the heads, "
                                        "dim 1",
                (B, T, Hkv * n_rep, D): "the result is (B, T, H, D); keep the heads in dim 1: "
                                        "(B, H, T, D)",
                (B, Hkv * n_rep * n_rep, T, D): "each head was repeated n_rep**2 times; n_rep "
                                                "copies of each kv head make H = H_kv * n_rep",
                (B, Hkv, T, D): "the heads were not repeated at all",
            }
            hint = shapes.get(tuple(got.shape), "")
            fail(f"repeat_kv on {case}: expected shape {shape_of(want)}, got {shape_of(got)}. "
                 + (hint or "Each of the H_kv heads appears n_rep times: (B, H_kv * n_rep, T, D)"))
        mistakes = [
            (x.repeat(1, n_rep, 1, 1),
             "the heads are tiled (0, 1, 0, 1, ...) but query head h must use kv head "
             "h // n_rep, each one n_rep times in a row (0, 0, 1, 1, ...): repeat_interleave, "
             "or x[:, :, None].expand(...) before the reshape"),
            (x.flip(1).repeat_interleave(n_rep, dim=1),
             "the heads come out in reverse order: query head h uses kv head h // n_rep"),
        ]
        compare("repeat_kv", case, got, want, mistakes)
    passed("repeat_kv", len(cases))


# ----------------------------------------------------------------------------- 4 rolling cache


def check_rolling_update(fn) -> None:
    """Exercise 4: fn(cache (B, H, S, D), new (B, H, T, D), window) -> (keys, cache'):
    keys = cache then new, for this step's attention; cache' = the last window - 1 of them."""
    cases = [
        ("an empty cache, one new token, window 4", _rand(1, 2, 0, 3, seed=15),
         _rand(1, 2, 1, 3, seed=16), 4),
        ("a cache of 2, a chunk of 5 new tokens, window 4", _rand(2, 1, 2, 3, seed=19),
         _rand(2, 1, 5, 3, seed=20), 4),
        ("a full cache of 3, one new token, window 4", _rand(1, 2, 3, 3, seed=17),
         _rand(1, 2, 1, 3, seed=18), 4),
        ("window 1 (each token sees only itself)", _rand(1, 1, 0, 2, seed=21),
         _rand(1, 1, 1, 2, seed=22), 1),
        ("a cache of 6, one new token, window 7", _rand(1, 3, 6, 4, seed=23),
         _rand(1, 3, 1, 4, seed=24), 7),
    ]
    for case, cache, new, window in cases:
        before = [cache.clone(), new.clone()]
        try:
            out = call_tensors(fn, cache, new, window, name="rolling_update")
        except AssertionError as e:
            if "Sizes of tensors must match" in str(e):
                raise AssertionError(f"{e}\nConcatenate the cache and the new positions along "
                                     "dim 2, time: the other dimensions agree.") from e
            raise
        unchanged("rolling_update", before, [cache, new], "the cache")
        if not (isinstance(out, tuple) and len(out) == 2):
            fail(f"rolling_update on {case} should return a pair (keys, new_cache), got "
                 f"{type(out).__name__}")
        keys, kept = out
        want_keys = torch.cat((cache, new), dim=2)
        n = want_keys.shape[2]
        keep = min(window - 1, n)
        want_kept = want_keys[:, :, n - keep :]
        key_mistakes = [
            (torch.cat((new, cache), dim=2),
             "keys must be the cached positions first, then the new ones (time order)"),
            (want_kept, "the keys for this step's attention were trimmed to the window: a chunk "
                        "of new tokens needs all of them (the mask hides the old ones); trim "
                        "only what you keep for later"),
            (new, "this step's queries also attend to the cached keys: concatenate them"),
        ]
        _known_mistake("rolling_update (the keys)", case, keys, want_keys, key_mistakes)
        compare("rolling_update (the keys)", case, keys, want_keys, key_mistakes,
                shape_hint="Concatenate along dim 2, time: (B, H, S + T, D).")
        kept_mistakes = [
            (want_keys[:, :, : min(window - 1, n)],
             "you kept the oldest positions: keep the LAST window - 1 (the next query sees "
             "those and itself)"),
            (want_keys[:, :, max(0, n - window) :],
             "you kept window positions; window - 1 are enough (the next query adds itself), "
             "which is the bound the chapter measured"),
            (want_keys, "nothing was dropped: the cache must stay bounded by window - 1 "
                        "positions however long the text"),
            (new[:, :, -keep:] if keep else new[:, :, :0],
             "only the new positions were kept: keep the last window - 1 of cache + new"),
        ]
        if keep == 0:  # window 1: x[:, :, -0:] is the whole tensor, a classic slip
            kept_mistakes.insert(0, (want_keys, "with window 1 nothing is kept: careful, "
                                                "x[:, :, -0:] is all of x, not none of it"))
        _known_mistake("rolling_update (the new cache)", case, kept, want_kept, kept_mistakes)
        compare("rolling_update (the new cache)", case, kept, want_kept, kept_mistakes,
                shape_hint=f"Keep min(window - 1, S + T) = {keep} positions along dim 2.")
    passed("rolling_update", len(cases))


# ----------------------------------------------------------------------------- 5 online softmax


def _stats(s: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    m = s.amax(-1, keepdim=True)
    p = torch.exp(s - m)
    return m, p.sum(-1, keepdim=True), p @ v


def check_merge_blocks(fn) -> None:
    """Exercise 5: fn(m1, l1, o1, m2, l2, o2) -> (m, l, o) of the two blocks together."""
    cases = [
        ("2 queries, blocks of 3 and 4 keys (row 0's max in block 1, row 1's in block 2)",
         torch.tensor([[5.0, 1.0, 0.0, 0.0, 2.0, 1.0, 0.0], [0.0, 1.0, 0.0, 3.0, 5.0, 1.0, 2.0]]),
         _rand(7, 3, seed=26), 3),
        ("the second block has the larger scores", torch.tensor([[0.0, 1.0, 9.0, 10.0]]),
         _rand(4, 2, seed=27), 2),
        ("the first block has the larger scores", torch.tensor([[10.0, 9.0, 1.0, 0.0]]),
         _rand(4, 2, seed=28), 2),
        ("scores of 1000 (exp would overflow without the max)",
         torch.tensor([[1000.0, 999.0, 998.0, 1001.0]]), _rand(4, 3, seed=29), 1),
        ("(B, H, Tq) = (2, 3, 5) queries, 8 + 8 keys", _rand(2, 3, 5, 16, seed=30, scale=3),
         _rand(2, 3, 16, 4, seed=31), 8),
    ]
    for case, s, v, split in cases:
        a = _stats(s[..., :split], v[..., :split, :])
        b = _stats(s[..., split:], v[..., split:, :])
        out = call_tensors(fn, *a, *b, name="merge_blocks")
        if not (isinstance(out, tuple) and len(out) == 3):
            fail(f"merge_blocks on {case} should return a triple (m, l, o), got "
                 f"{type(out).__name__}")
        m, l, o = out  # noqa: E741
        want_m, want_l, want_o = _stats(s, v)
        (m1, l1, o1), (m2, l2, o2) = a, b
        if isinstance(m, Tensor) and isinstance(l, Tensor) and isinstance(o, Tensor):
            if m.isnan().any() or l.isnan().any() or o.isnan().any() or l.isinf().any():
                fail(f"merge_blocks on {case}: NaN or inf in the result. Rescale with "
                     "exp(m1 - m) and exp(m2 - m), where m = max(m1, m2): those are <= 1, "
                     "never exp(m1) or exp(m2) alone")
        compare("merge_blocks (m)", case, m, want_m, [
            (torch.minimum(m1, m2), "m is the running maximum: max(m1, m2), not the minimum"),
            (m1 + m2, "m is the larger of m1 and m2, not their sum"),
            (m1, "m must become max(m1, m2): the second block can hold larger scores"),
        ])
        sum_hint = ("you added the sums without rescaling: each was computed relative to its "
                    "own max, so multiply l1, o1 by exp(m1 - m) and l2, o2 by exp(m2 - m)")
        compare("merge_blocks (l)", case, l, want_l, [
            (l1 + l2, sum_hint),
            (torch.exp(m - m1) * l1 + torch.exp(m - m2) * l2 if isinstance(m, Tensor) else l1,
             "the rescaling factors are upside down: exp(m1 - m) (<= 1), not exp(m - m1)"),
            ((l1 + l2) / 2, "the sums add up; they are not averaged"),
            (l1 + torch.exp(m2 - want_m) * l2,
             "only the second block was rescaled: the first one's max can change too"),
            (torch.exp(m1 - want_m) * l1 + l2,
             "only the first block was rescaled: rescale both to the common max"),
        ])
        compare("merge_blocks (o)", case, o, want_o, [
            (o1 + o2, sum_hint),
            (want_o / want_l, "return o un-normalised (the weighted sum); dividing by l happens "
                              "once, after the last block"),
            (torch.exp(m1 - want_m) * o1 + o2,
             "only the first block's o was rescaled: o2 needs exp(m2 - m) too"),
        ])
    passed("merge_blocks", len(cases))


# ----------------------------------------------------------------------------- 6 layouts


def check_to_half_layout(fn) -> None:
    """Exercise 6: fn(w (H * D, C), n_heads) -> the rows reordered from the interleaved RoPE
    layout (GGUF, Meta) to the half-split layout (Hugging Face), head by head."""
    cases = [
        ("one head, D=4, C=4", torch.arange(16.0).view(4, 4), 1),
        ("2 heads, D=4, C=3", _rand(8, 3, seed=32), 2),
        ("3 heads, D=8, C=5", _rand(24, 5, seed=33), 3),
        ("9 heads, D=64, C=576 (SmolLM2's q_proj)", _rand(576, 576, seed=34), 9),
    ]
    for case, w, H in cases:
        before = [w.clone()]
        got = call_tensors(fn, w, H, name="to_half_layout")
        unchanged("to_half_layout", before, [w], "w")
        want = convert_rope_layout(w, H, to="half")
        D = w.shape[0] // H
        per_head = w.reshape(H, D, -1)
        mistakes = [
            (convert_rope_layout(w, H, to="interleaved"),
             "that is the other direction (half -> interleaved): in the half layout a head's "
             "first D/2 rows are the even rows 0, 2, 4, ... of the interleaved one"),
            (convert_rope_layout(w, 1, to="half"),
             "you reordered all H * D rows as one head: do it within each head, (H, D, C)"),
            (torch.cat((per_head[:, 1::2], per_head[:, 0::2]), 1).reshape(w.shape),
             "the halves are swapped: the even rows (the first number of each pair) come first"),
            (w, "w came back unchanged: the rows of each head must be reordered"),
            (per_head.flip(1).reshape(w.shape), "reversing a head's rows is not the pairing"),
        ]
        if H > 1:
            mistakes.append((w.reshape(D, H, -1)[rope_permutation(D, "half")].reshape(w.shape),
                             "the heads are the outer dimension: reshape to (H, D, C), not "
                             "(D, H, C)"))
        if w.shape[0] == w.shape[1]:
            mistakes.append((convert_rope_layout(w.t(), H, to="half").t(),
                             "you reordered the columns (inputs): RoPE acts on the outputs, "
                             "the rows of an nn.Linear weight (out, in)"))
        compare("to_half_layout", case, got, want, mistakes,
                shape_hint=f"Return the same shape as w, {tuple(w.shape)}: reshape to "
                           "(H, D, C), reorder dim 1, reshape back.")
        if H == 2 and D == 4:  # the converted weights must give the same attention scores
            x = _rand(6, w.shape[1], seed=35)
            cos, sin = rope_frequencies(D, 6, 10000.0)
            k_int = apply_rope_interleaved((x @ w.t()).view(6, H, D).transpose(0, 1)[None], cos,
                                           sin)
            k_half = apply_rope((x @ got.t()).view(6, H, D).transpose(0, 1)[None], cos, sin)
            s1 = scaled_dot_product_attention(k_int, k_int, k_int, return_weights=True)[1]
            s2 = scaled_dot_product_attention(k_half, k_half, k_half, return_weights=True)[1]
            if not close(s1, s2):
                fail(f"to_half_layout on {case}: the attention weights differ after conversion")
    passed("to_half_layout", len(cases))
