"""Checkers for the chapter 09 exercises (modern architecture).

Each check runs the student's function on several cases, compares it with lmkit's own code
or a computation done another way, and names the likely mistake when the answer matches one.
The hints live in one table, ``MISTAKES`` (see ``lmkit.checks.common``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..embeddings import (
    apply_rope_interleaved,
    convert_rope_layout,
    rope_frequencies,
    rope_permutation,
)
from .common import (
    INPLACE,
    NO_RETURN,
    Mistake,
    call_tensors,
    checker,
    compare,
    fail,
    passed,
    sentence,
)

__all__ = ["check_rope_rotate", "check_rope_scores", "check_repeat_kv", "check_rolling_update",
           "check_merge_blocks", "check_to_half_layout", "MISTAKES"]

M = Mistake
MISTAKES: dict[str, dict[str, Mistake]] = {
    "rope_rotate": {
        "direction": M("rotating the wrong way (a sin + b cos and a cos - b sin swapped in sign)",
                       "you rotate the wrong way: the first number of a pair becomes "
                       "a cos - b sin, the second a sin + b cos"),
        "half": M("pairing dimension i with i + D/2 (the half-split layout)",
                  "you paired dimension i with i + D/2 (the half-split layout of Hugging Face); "
                  "this exercise uses interleaved pairs (x[2i], x[2i+1]): x[0::2] and x[1::2]"),
        "freq_i": M("frequencies theta^(-i/D) instead of theta^(-2i/D)",
                    "the frequencies are off: pair i turns by theta^(-2i/D) per position (i "
                    "counts pairs, 0..D/2-1), not theta^(-i/D)"),
        "freq_4i": M("counting 2i twice (`torch.arange(0, D, 2)` times 2)",
                     "the frequencies are off: theta^(-4i/D) instead of theta^(-2i/D). "
                     "torch.arange(0, D, 2) already counts 2i; multiply torch.arange(D // 2) by "
                     "2, not both"),
        "freq_sign": M("frequencies that grow (a missing minus sign)",
                       "the frequencies grow instead of shrinking: use theta ** (-2i/D), a "
                       "minus sign"),
        "same_angle": M("the same angle for every row", "every row turned by the same angle: "
                        "multiply the frequencies by each row's position pos[t]"),
        "row_index": M("using the row numbers 0..T-1 instead of `pos`",
                       "the angles use the row numbers 0, 1, ..., T-1: use the positions given "
                       "in pos (row t sits at position pos[t], not t)"),
        "plus_one": M("angles one position too far (position 0 turns)",
                      "the angles are one position too far: position t turns by t * frequency, "
                      "so position 0 does not turn at all"),
        "theta": M("ignoring `theta` (always 10000)",
                   "the angles ignore `theta`: the frequencies are theta ** (-2i/D) with the "
                   "theta passed in (10000 is only the usual default)"),
        "cos_sin": M("swapping cos and sin", "cos and sin are swapped: at angle 0 the rotation "
                     "must leave x unchanged (cos 0 = 1, sin 0 = 0)"),
        "write_back": M("writing the pairs back as [all first numbers, all second numbers]",
                        "the right pairs turned, but the results went back as [all first "
                        "numbers, all second numbers]: put each pair back in place, "
                        "torch.stack((a2, b2), -1).flatten(-2)"),
        "shape": M("returning another shape", "return a tensor shaped like x, (T, D)"),
        "inplace": INPLACE,
    },
    "rope_scores": {
        "scaled": M("dividing by sqrt(D)", "you divided by sqrt(D): return the plain dot "
                    "products, the property holds either way and the check compares raw scores"),
        "swapped": M("the query on the columns and the key on the rows (S transposed)",
                     "S is transposed: row m is the query's position, column n the key's, "
                     "S[m, n] = rot(q, m) . rot(k, n), that is Q @ K.T"),
        "no_rotation": M("forgetting to rotate (or rotating q and k by the same position)",
                         "every score is the plain q . k: rotate q to position m and k to "
                         "position n before the dot product"),
        "q_only": M("rotating only q", "only q was rotated: rotate k to position n as well"),
        "k_only": M("rotating only k", "only k was rotated: rotate q to position m as well"),
        "half": M("the half-split layout", "you used the half-split layout; use the "
                  "interleaved RoPE of exercise 1"),
        "theta": M("ignoring `theta`", "the angles ignore `theta`: pass the theta given to the "
                   "function"),
        "sum": M("adding the two vectors instead of a dot product",
                 "a score is a dot product, sum(q * k), not a sum of the two vectors"),
        "shift": M("the query positions off by one (1..n_max)",
                   "the query positions are off by one: rows are positions m = 0..n_max-1, "
                   "like the columns"),
        "diagonal": M("returning one score per position (the diagonal) instead of the table",
                      "return the whole table, one score for every pair (m, n): shape "
                      "(n_max, n_max), Q @ K.T"),
        "no_return": NO_RETURN,
        "inplace": INPLACE,
    },
    "repeat_kv": {
        "tiled": M("tiling the heads (0, 1, 0, 1, ...) instead of repeating each one",
                   "the heads are tiled (0, 1, 0, 1, ...) but query head h must use kv head "
                   "h // n_rep, each one n_rep times in a row (0, 0, 1, 1, ...): "
                   "repeat_interleave, or x[:, :, None].expand(...) before the reshape"),
        "reversed": M("the heads in reverse order", "the heads come out in reverse order: "
                      "query head h uses kv head h // n_rep"),
        "dim0": M("repeating the batch (dim 0)", "you repeated along dim 0 (the batch); repeat "
                  "the heads, dim 1"),
        "dim2": M("repeating time (dim 2)", "you repeated along dim 2 (time); repeat the heads, "
                  "dim 1"),
        "dim3": M("repeating the head dimension (dim 3)", "you repeated along dim 3 (head dim); "
                  "repeat the heads, dim 1"),
        "bthd": M("returning (B, T, H, D)", "the result is (B, T, H, D); keep the heads in dim "
                  "1: (B, H, T, D)"),
        "squared": M("repeating each head n_rep**2 times", "each head was repeated n_rep**2 "
                     "times; n_rep copies of each kv head make H = H_kv * n_rep"),
        "not_repeated": M("not repeating at all", "the heads were not repeated at all: each of "
                          "the H_kv heads appears n_rep times, (B, H_kv * n_rep, T, D)"),
        "inplace": INPLACE,
    },
    "rolling_update": {
        "cat_dim": M("concatenating along another dimension than time",
                     "concatenate the cache and the new positions along dim 2, time: the other "
                     "dimensions agree"),
        "not_pair": M("returning one tensor instead of the pair (keys, new_cache)",
                      "return a pair (keys, new_cache)"),
        "keys_order": M("the new keys before the cached ones", "keys must be the cached "
                        "positions first, then the new ones (time order)"),
        "keys_trimmed": M("trimming this step's keys to the window",
                          "the keys for this step's attention were trimmed to the window: a "
                          "chunk of new tokens needs all of them (the mask hides the old ones); "
                          "trim only what you keep for later"),
        "keys_new_only": M("attending to the new keys only", "this step's queries also attend "
                           "to the cached keys: concatenate them"),
        "oldest": M("keeping the oldest positions", "you kept the oldest positions: keep the "
                    "LAST window - 1 (the next query sees those and itself)"),
        "window": M("keeping window positions instead of window - 1",
                    "you kept window positions; window - 1 are enough (the next query adds "
                    "itself), which is the bound the chapter measured"),
        "unbounded": M("keeping everything", "nothing was dropped: the cache must stay bounded "
                       "by window - 1 positions however long the text"),
        "new_only": M("keeping only the new positions", "only the new positions were kept: "
                      "keep the last window - 1 of cache + new"),
        "one_step": M("assuming one new token per step (min(window - 1, S + 1))",
                      "a step can bring several new tokens (a prompt): keep min(window - 1, "
                      "S + T) positions, counting all T new ones, not S + 1"),
        "minus_zero": M("`x[:, :, -(window - 1):]` with window 1 (`-0:` keeps everything)",
                        "with window 1 nothing is kept: careful, x[:, :, -0:] is all of x, not "
                        "none of it"),
        "inplace": INPLACE,
    },
    "merge_blocks": {
        "overflow": M("exp(m1) or exp(m2) alone (overflow to inf/NaN)",
                      "NaN or inf in the result. Rescale with exp(m1 - m) and exp(m2 - m), "
                      "where m = max(m1, m2): those are <= 1, never exp(m1) or exp(m2) alone"),
        "not_triple": M("returning something other than the triple (m, l, o)",
                        "return a triple (m, l, o)"),
        "m_min": M("the minimum instead of the maximum", "m is the running maximum: "
                   "max(m1, m2), not the minimum"),
        "m_sum": M("m1 + m2 as the new maximum", "m is the larger of m1 and m2, not their sum"),
        "m_first": M("keeping m1", "m must become max(m1, m2): the second block can hold larger "
                     "scores"),
        "m_global": M("one maximum for all queries", "m is per query: torch.maximum(m1, m2) "
                      "element by element, not the largest score of the whole batch"),
        "no_rescale": M("adding the sums without rescaling",
                        "you added the sums without rescaling: each was computed relative to "
                        "its own max, so multiply l1, o1 by exp(m1 - m) and l2, o2 by "
                        "exp(m2 - m)"),
        "upside_down": M("the rescaling factors upside down (exp(m - m1))",
                         "the rescaling factors are upside down: exp(m1 - m) (<= 1), not "
                         "exp(m - m1)"),
        "average": M("averaging the sums", "the sums add up; they are not averaged"),
        "only_second": M("rescaling only the second block", "only the second block was "
                         "rescaled: the first one's max can change too"),
        "only_first": M("rescaling only the first block", "only the first block was rescaled: "
                        "rescale both to the common max"),
        "o_only_first": M("rescaling o1 but not o2", "only the first block's o was rescaled: "
                          "o2 needs exp(m2 - m) too"),
        "normalised": M("dividing o by l in the merge", "return o un-normalised (the weighted "
                        "sum); dividing by l happens once, after the last block"),
        "inplace": INPLACE,
    },
    "to_half_layout": {
        "other_direction": M("converting the other way (half -> interleaved)",
                             "that is the other direction (half -> interleaved): in the half "
                             "layout a head's first D/2 rows are the even rows 0, 2, 4, ... of "
                             "the interleaved one"),
        "one_head": M("reordering all H * D rows as one head", "you reordered all H * D rows as "
                      "one head: do it within each head, (H, D, C)"),
        "halves_swapped": M("the odd rows first", "the halves are swapped: the even rows (the "
                            "first number of each pair) come first"),
        "unchanged": M("returning w unchanged", "w came back unchanged: the rows of each head "
                       "must be reordered"),
        "reversed": M("reversing each head's rows", "reversing a head's rows is not the "
                      "pairing"),
        "d_from_columns": M("taking D from the columns (C // n_heads)",
                            "a head's D rows are the rows of w: D = w.shape[0] // n_heads, not "
                            "w.shape[1] // n_heads (the columns are the C inputs)"),
        "heads_inner": M("reshaping to (D, H, C) instead of (H, D, C)",
                         "the heads are the outer dimension: reshape to (H, D, C), not (D, H, C)"),
        "columns": M("reordering the columns instead of the rows",
                     "you reordered the columns (inputs): RoPE acts on the outputs, the rows of "
                     "an nn.Linear weight (out, in)"),
        "shape": M("returning (H, D, C) or another shape",
                   "return the same shape as w: reshape to (H, D, C), reorder dim 1, reshape "
                   "back"),
        "inplace": INPLACE,
    },
}


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


def _unstacked(y: Tensor) -> Tensor:
    return torch.cat((y[..., 0::2], y[..., 1::2]), -1)


def _swap_cos_sin(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    D = x.shape[-1]
    ang = pos.double()[:, None] * theta ** (-2 * torch.arange(D // 2, dtype=torch.float64) / D)
    a, b = x.double()[..., 0::2], x.double()[..., 1::2]
    cos, sin = ang.sin(), ang.cos()
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2).float()


# ----------------------------------------------------------------------------- 1 RoPE


@checker
def check_rope_rotate(fn) -> None:
    """Exercise 1: fn(x (T, D), pos (T,), theta) -> x rotated pairwise, interleaved layout."""
    H = MISTAKES["rope_rotate"]
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
        got = call_tensors(fn, x, pos, theta, name="rope_rotate")
        cos, sin = rope_frequencies(x.shape[-1], int(pos.max()) + 1, theta)
        want = torch.stack([apply_rope_interleaved(x[i].view(1, 1, 1, -1), cos, sin, int(p))
                            .view(-1) for i, p in enumerate(pos)])
        mistakes = [
            (_rotate(x, pos, theta, sign=-1.0), H["direction"].hint),
            (_rotate(x, pos, theta, layout="half"), H["half"].hint),
            (_rotate(x, pos, 10000.0), H["theta"].hint),  # before freq_4i: 100^2 = 10000
            (_rotate(x, pos, theta, exponent=1.0), H["freq_i"].hint),
            (_rotate(x, pos, theta, exponent=4.0), H["freq_4i"].hint),
            (_rotate(x, pos, theta, exponent=-2.0), H["freq_sign"].hint),
            (_rotate(x, torch.ones_like(pos), theta), H["same_angle"].hint),
            (_rotate(x, torch.arange(len(pos)), theta), H["row_index"].hint),
            (_rotate(x, pos + 1, theta), H["plus_one"].hint),
            (_swap_cos_sin(x, pos, theta), H["cos_sin"].hint),
            (_unstacked(_rotate(x, pos, theta)), H["write_back"].hint),
        ]
        compare("rope_rotate", case, got, want, mistakes, shape_hint=sentence(H["shape"].hint))
    passed("rope_rotate", len(cases))


# ----------------------------------------------------------------------------- 2 scores


@checker
def check_rope_scores(fn) -> None:
    """Exercise 2: fn(q (D,), k (D,), n_max, theta) -> S (n_max, n_max) with
    S[m, n] = rot(q, m) . rot(k, n) (interleaved RoPE, no scaling)."""
    H = MISTAKES["rope_scores"]
    cases = [
        ("D=4, 5 positions", torch.tensor([1.0, 0.0, 0.5, -1.0]),
         torch.tensor([0.0, 1.0, 1.0, 0.5]), 5, 10000.0),
        ("D=8, 4 positions", _rand(8, seed=5), _rand(8, seed=6), 4, 10000.0),
        ("D=16, 20 positions, theta=100", _rand(16, seed=7), _rand(16, seed=8), 20, 100.0),
        ("D=64, 30 positions, theta=100000", _rand(64, seed=9), _rand(64, seed=10), 30, 1e5),
    ]
    for case, q, k, n_max, theta in cases:
        got = call_tensors(fn, q, k, n_max, theta, name="rope_scores")
        n = torch.arange(n_max)
        Q, K = q.expand(n_max, -1), k.expand(n_max, -1)  # (n_max, D) each

        def table(qpos=n, kpos=n, layout="interleaved", th=theta, q_=Q, k_=K):
            return _rotate(q_, qpos, th, layout) @ _rotate(k_, kpos, th, layout).T  # (m, n)

        want = table()
        mistakes = [
            (want / math.sqrt(q.numel()), H["scaled"].hint),
            (want.T, H["swapped"].hint),
            (torch.full_like(want, float(q @ k)), H["no_rotation"].hint),
            (_rotate(Q, n, theta) @ K.T, H["q_only"].hint),
            (Q @ _rotate(K, n, theta).T, H["k_only"].hint),
            (table(layout="half"), H["half"].hint),
            (table(th=10000.0), H["theta"].hint),
            ((_rotate(Q, n, theta)[:, None] + _rotate(K, n, theta)[None]).sum(-1),
             H["sum"].hint),
            (table(qpos=n + 1), H["shift"].hint),
        ]
        compare("rope_scores", case, got, want, mistakes,
                shape_hint=sentence(H["diagonal"].hint))
    passed("rope_scores", len(cases))


# ----------------------------------------------------------------------------- 3 repeat_kv


@checker
def check_repeat_kv(fn) -> None:
    """Exercise 3: fn(x (B, H_kv, T, D), n_rep) -> (B, H_kv * n_rep, T, D); query head h uses
    key/value head h // n_rep."""
    H = MISTAKES["repeat_kv"]
    cases = [
        ("B=1, 2 kv heads, n_rep=3", _rand(1, 2, 4, 5, seed=11), 3),
        ("B=2, 3 kv heads, n_rep=3 (SmolLM2: 9 query heads)", _rand(2, 3, 6, 4, seed=12), 3),
        ("n_rep=1 (plain multi-head attention)", _rand(2, 4, 3, 2, seed=13), 1),
        ("one kv head, n_rep=4 (multi-query attention)", _rand(1, 1, 5, 3, seed=14), 4),
    ]
    for case, x, n_rep in cases:
        got = call_tensors(fn, x, n_rep, name="repeat_kv")
        B, Hkv, T, D = x.shape
        want = x.repeat_interleave(n_rep, dim=1)
        if isinstance(got, Tensor) and got.shape != want.shape:
            shapes = {
                (B * n_rep, Hkv, T, D): H["dim0"].hint,
                (B, Hkv, T * n_rep, D): H["dim2"].hint,
                (B, Hkv, T, D * n_rep): H["dim3"].hint,
                (B, T, Hkv * n_rep, D): H["bthd"].hint,
                (B, Hkv * n_rep * n_rep, T, D): H["squared"].hint,
                (B, Hkv, T, D): H["not_repeated"].hint,
            }
            fail(f"repeat_kv on {case}: expected shape {tuple(want.shape)}, got "
                 f"{tuple(got.shape)}. "
                 + shapes.get(tuple(got.shape), "Each of the H_kv heads appears n_rep times: "
                                                "(B, H_kv * n_rep, T, D)"))
        mistakes = [
            (x.repeat(1, n_rep, 1, 1), H["tiled"].hint),
            (x.flip(1).repeat_interleave(n_rep, dim=1), H["reversed"].hint),
        ]
        compare("repeat_kv", case, got, want, mistakes)
    passed("repeat_kv", len(cases))


# ----------------------------------------------------------------------------- 4 rolling cache


@checker
def check_rolling_update(fn) -> None:
    """Exercise 4: fn(cache (B, H, S, D), new (B, H, T, D), window) -> (keys, cache'):
    keys = cache then new, for this step's attention; cache' = the last window - 1 of them."""
    H = MISTAKES["rolling_update"]
    cases = [
        ("an empty cache, one new token, window 4", _rand(1, 2, 0, 3, seed=15),
         _rand(1, 2, 1, 3, seed=16), 4),
        ("an empty cache, a prompt of 5 tokens, window 4", _rand(1, 2, 0, 3, seed=25),
         _rand(1, 2, 5, 3, seed=26), 4),
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
        try:
            out = call_tensors(fn, cache, new, window, name="rolling_update")
        except AssertionError as e:
            if "Sizes of tensors must match" in str(e):
                raise AssertionError(f"{e}\n{H['cat_dim'].hint}") from e
            raise
        if not (isinstance(out, tuple) and len(out) == 2):
            fail(f"rolling_update on {case} returned {type(out).__name__}: "
                 f"{H['not_pair'].hint}")
        keys, kept = out
        want_keys = torch.cat((cache, new), dim=2)
        S, n = cache.shape[2], want_keys.shape[2]
        keep = min(window - 1, n)
        want_kept = want_keys[:, :, n - keep :]
        key_mistakes = [
            (torch.cat((new, cache), dim=2), H["keys_order"].hint),
            (want_kept, H["keys_trimmed"].hint),
            (new, H["keys_new_only"].hint),
        ]
        compare("rolling_update (the keys)", case, keys, want_keys, key_mistakes,
                shape_hint="Concatenate along dim 2, time: (B, H, S + T, D).")
        one_step = min(window - 1, S + 1)
        kept_mistakes = [
            (want_keys[:, :, :keep], H["oldest"].hint),
            (want_keys[:, :, max(0, n - window) :], H["window"].hint),
            (want_keys, H["unbounded"].hint),
            (new[:, :, -keep:] if keep else new[:, :, :0], H["new_only"].hint),
            (want_keys[:, :, n - one_step :], H["one_step"].hint),
        ]
        if keep == 0:  # window 1: x[:, :, -0:] is the whole tensor, a classic slip
            kept_mistakes.insert(0, (want_keys, H["minus_zero"].hint))
        compare("rolling_update (the new cache)", case, kept, want_kept, kept_mistakes,
                shape_hint=f"Keep min(window - 1, S + T) = {keep} positions along dim 2.")
    passed("rolling_update", len(cases))


# ----------------------------------------------------------------------------- 5 online softmax


def _stats(s: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    m = s.amax(-1, keepdim=True)
    p = torch.exp(s - m)
    return m, p.sum(-1, keepdim=True), p @ v


@checker
def check_merge_blocks(fn) -> None:
    """Exercise 5: fn(m1, l1, o1, m2, l2, o2) -> (m, l, o) of the two blocks together."""
    H = MISTAKES["merge_blocks"]
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
            fail(f"merge_blocks on {case} returned {type(out).__name__}: "
                 f"{H['not_triple'].hint}")
        m, l, o = out  # noqa: E741
        want_m, want_l, want_o = _stats(s, v)
        (m1, l1, o1), (m2, l2, o2) = a, b
        if isinstance(m, Tensor) and isinstance(l, Tensor) and isinstance(o, Tensor):
            if m.isnan().any() or l.isnan().any() or o.isnan().any() or l.isinf().any():
                fail(f"merge_blocks on {case}: {H['overflow'].hint}")
        compare("merge_blocks (m)", case, m, want_m, [
            (torch.minimum(m1, m2), H["m_min"].hint),
            (m1 + m2, H["m_sum"].hint),
            (m1, H["m_first"].hint),
            (torch.maximum(m1, m2).amax().expand_as(m1), H["m_global"].hint),
        ])
        compare("merge_blocks (l)", case, l, want_l, [
            (l1 + l2, H["no_rescale"].hint),
            (torch.exp(m - m1) * l1 + torch.exp(m - m2) * l2, H["upside_down"].hint),
            ((l1 + l2) / 2, H["average"].hint),
            (l1 + torch.exp(m2 - want_m) * l2, H["only_second"].hint),
            (torch.exp(m1 - want_m) * l1 + l2, H["only_first"].hint),
        ])
        compare("merge_blocks (o)", case, o, want_o, [
            (o1 + o2, H["no_rescale"].hint),
            (want_o / want_l, H["normalised"].hint),
            (torch.exp(m1 - want_m) * o1 + o2, H["o_only_first"].hint),
        ])
    passed("merge_blocks", len(cases))


# ----------------------------------------------------------------------------- 6 layouts


@checker
def check_to_half_layout(fn) -> None:
    """Exercise 6: fn(w (H * D, C), n_heads) -> the rows reordered from the interleaved RoPE
    layout (GGUF, Meta) to the half-split layout (Hugging Face), head by head."""
    H = MISTAKES["to_half_layout"]
    cases = [
        ("one head, D=4, C=4", torch.arange(16.0).view(4, 4), 1),
        ("2 heads, D=4, C=6", _rand(8, 6, seed=35), 2),
        ("2 heads, D=4, C=3", _rand(8, 3, seed=32), 2),
        ("3 heads, D=8, C=5", _rand(24, 5, seed=33), 3),
        ("9 heads, D=64, C=576 (SmolLM2's q_proj)", _rand(576, 576, seed=34), 9),
    ]
    for case, w, n_heads in cases:
        got = call_tensors(fn, w, n_heads, name="to_half_layout")
        want = convert_rope_layout(w, n_heads, to="half")
        D = w.shape[0] // n_heads
        per_head = w.reshape(n_heads, D, -1)
        mistakes = [
            (convert_rope_layout(w, n_heads, to="interleaved"), H["other_direction"].hint),
            (convert_rope_layout(w, 1, to="half"), H["one_head"].hint),
            (torch.cat((per_head[:, 1::2], per_head[:, 0::2]), 1).reshape(w.shape),
             H["halves_swapped"].hint),
            (w, H["unchanged"].hint),
            (per_head.flip(1).reshape(w.shape), H["reversed"].hint),
        ]
        if n_heads > 1:
            mistakes.append((w.reshape(D, n_heads, -1)[rope_permutation(D, "half")]
                             .reshape(w.shape), H["heads_inner"].hint))
        if w.shape[0] == w.shape[1]:
            mistakes.append((convert_rope_layout(w.t(), n_heads, to="half").t(),
                             H["columns"].hint))
        D_cols = w.shape[1] // n_heads  # D taken from the columns: 3 on "2 heads, D=4, C=6"
        if 3 <= D_cols != D and w.numel() % (n_heads * D_cols) == 0:  # (fewer: nothing moves)
            by_cols = w.reshape(n_heads, D_cols, -1)
            mistakes.append((torch.cat((by_cols[:, 0::2], by_cols[:, 1::2]), 1).reshape(w.shape),
                             H["d_from_columns"].hint))
        compare("to_half_layout", case, got, want, mistakes,
                shape_hint=sentence(H["shape"].hint))
    passed("to_half_layout", len(cases))
