"""The chapter 09 checkers pass correct answers and reject a catalogue of wrong ones, each with
the hint meant for it (tests/catalogue.py explains the pattern)."""

import math

import pytest
import torch
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected, assert_stub_raises

from lmkit.checks import ch09

# ----------------------------------------------------------------- exercise 1: rope_rotate


def rope(x, pos, theta, sign=1, exponent=2, layout="pairs", write_back="stack", swap=False,
         freqs=None):
    D = x.shape[-1]
    if freqs is None:
        freqs = theta ** (-exponent * torch.arange(D // 2) / D)
    ang = sign * pos[:, None].float() * freqs
    c, s = (ang.sin(), ang.cos()) if swap else (ang.cos(), ang.sin())
    a, b = (x[:, 0::2], x[:, 1::2]) if layout == "pairs" else (x[:, : D // 2], x[:, D // 2 :])
    a2, b2 = a * c - b * s, a * s + b * c
    if write_back == "stack" and layout == "pairs":
        return torch.stack((a2, b2), -1).flatten(-2)
    return torch.cat((a2, b2), -1)


def rope_in_place(x, pos, theta):
    x.mul_(1.0).add_(1.0)
    return rope(x - 1, pos, theta)


def arange_step_two(x, pos, theta):  # torch.arange(0, D, 2) is 2i already; times 2 again
    D = x.shape[-1]
    return rope(x, pos, theta, freqs=theta ** (-2 * torch.arange(0, D, 2) / D))


W1 = [
    Wrong("rope_rotate", "direction", lambda x, p, t: rope(x, p, t, sign=-1)),
    Wrong("rope_rotate", "half", lambda x, p, t: rope(x, p, t, layout="half")),
    Wrong("rope_rotate", "freq_i", lambda x, p, t: rope(x, p, t, exponent=1)),
    Wrong("rope_rotate", "freq_4i", arange_step_two),
    Wrong("rope_rotate", "freq_sign", lambda x, p, t: rope(x, p, t, exponent=-2)),
    Wrong("rope_rotate", "same_angle", lambda x, p, t: rope(x, torch.ones_like(p), t)),
    Wrong("rope_rotate", "row_index", lambda x, p, t: rope(x, torch.arange(x.shape[0]), t)),
    Wrong("rope_rotate", "plus_one", lambda x, p, t: rope(x, p + 1, t)),
    Wrong("rope_rotate", "theta", lambda x, p, t: rope(x, p, 10000.0)),
    Wrong("rope_rotate", "cos_sin", lambda x, p, t: rope(x, p, t, swap=True)),
    Wrong("rope_rotate", "write_back", lambda x, p, t: rope(x, p, t, write_back="cat")),
    Wrong("rope_rotate", "shape", lambda x, p, t: rope(x, p, t)[:, :-1]),
    Wrong("rope_rotate", "inplace", rope_in_place),
]

# ----------------------------------------------------------------- exercise 2: rope_scores


def rope_scores(q, k, n_max, theta, q_start=0, rotate_q=True, rotate_k=True, **kw):
    n = torch.arange(n_max)
    Q, K = q.expand(n_max, -1), k.expand(n_max, -1)
    if rotate_q:
        Q = rope(Q, n + q_start, theta, **kw)
    if rotate_k:
        K = rope(K, n, theta, **kw)
    return Q @ K.T


def one_score_repeated(q, k, n_max, theta):  # leans on the property it should show
    s = rope(q[None], torch.tensor([0]), theta) @ rope(k[None], torch.tensor([0]), theta).T
    return s.expand(n_max, n_max)


def scores_in_place(q, k, n_max, theta):
    q /= 1.0 + q.norm()
    return rope_scores(q * (1.0 + 0.0), k, n_max, theta)


def same_position(q, k, n_max, theta):  # rot(q, m) . rot(k, m) for every column
    n = torch.arange(n_max)
    d = (rope(q.expand(n_max, -1), n, theta) * rope(k.expand(n_max, -1), n, theta)).sum(-1)
    return d[:, None].expand(n_max, n_max)


def vector_sum(q, k, n_max, theta):
    n = torch.arange(n_max)
    Q, K = rope(q.expand(n_max, -1), n, theta), rope(k.expand(n_max, -1), n, theta)
    return (Q[:, None] + K[None]).sum(-1)


W2 = [
    Wrong("rope_scores", "scaled", lambda q, k, n, t: rope_scores(q, k, n, t) / math.sqrt(
        q.numel())),
    Wrong("rope_scores", "swapped", lambda q, k, n, t: rope_scores(q, k, n, t).T),
    Wrong("rope_scores", "no_rotation", lambda q, k, n, t: rope_scores(
        q, k, n, t, rotate_q=False, rotate_k=False)),
    Wrong("rope_scores", "no_rotation", one_score_repeated),
    Wrong("rope_scores", "no_rotation", same_position),
    Wrong("rope_scores", "q_only", lambda q, k, n, t: rope_scores(q, k, n, t, rotate_k=False)),
    Wrong("rope_scores", "k_only", lambda q, k, n, t: rope_scores(q, k, n, t, rotate_q=False)),
    Wrong("rope_scores", "half", lambda q, k, n, t: rope_scores(q, k, n, t, layout="half")),
    Wrong("rope_scores", "theta", lambda q, k, n, t: rope_scores(q, k, n, 10000.0)),
    Wrong("rope_scores", "sum", vector_sum),
    Wrong("rope_scores", "shift", lambda q, k, n, t: rope_scores(q, k, n, t, q_start=1)),
    Wrong("rope_scores", "diagonal", lambda q, k, n, t: rope_scores(q, k, n, t).diagonal()),
    Wrong("rope_scores", "no_return", lambda q, k, n, t: None),
    Wrong("rope_scores", "inplace", scores_in_place),
]

# ----------------------------------------------------------------- exercise 3: repeat_kv


def repeat_in_place(x, n):
    x.mul_(2.0)
    return (x / 2).repeat_interleave(n, dim=1)


W3 = [
    Wrong("repeat_kv", "tiled", lambda x, n: x.repeat(1, n, 1, 1)),
    Wrong("repeat_kv", "tiled", lambda x, n: x[:, None].expand(-1, n, -1, -1, -1).reshape(
        x.shape[0], -1, *x.shape[2:])),
    Wrong("repeat_kv", "tiled", lambda x, n: torch.cat([x] * n, dim=1)),
    Wrong("repeat_kv", "reversed", lambda x, n: x.flip(1).repeat_interleave(n, dim=1)),
    Wrong("repeat_kv", "dim0", lambda x, n: x.repeat_interleave(n, dim=0)),
    Wrong("repeat_kv", "dim2", lambda x, n: x.repeat_interleave(n, dim=2)),
    Wrong("repeat_kv", "dim3", lambda x, n: x.repeat_interleave(n, dim=3)),
    Wrong("repeat_kv", "bthd", lambda x, n: x.repeat_interleave(n, dim=1).transpose(1, 2)),
    Wrong("repeat_kv", "squared", lambda x, n: x.repeat_interleave(n * n, dim=1)),
    Wrong("repeat_kv", "not_repeated", lambda x, n: x.clone()),
    Wrong("repeat_kv", "inplace", repeat_in_place),
]

# ----------------------------------------------------------------- exercise 4: rolling_update


def rolling(cache, new, window, keep_of=lambda S, T, w: min(w - 1, S + T)):
    keys = torch.cat((cache, new), dim=2)
    keep = keep_of(cache.shape[2], new.shape[2], window)
    return keys, keys[:, :, keys.shape[2] - keep :]


def both(cache, new):
    return torch.cat((cache, new), 2)


def rolling_in_place(cache, new, window):
    new.mul_(1.0).add_(0.5)
    return rolling(cache, new - 0.5, window)


W4 = [
    Wrong("rolling_update", "keys_order", lambda c, n, w: (torch.cat((n, c), 2),
                                                          rolling(c, n, w)[1])),
    Wrong("rolling_update", "keys_trimmed", lambda c, n, w: (rolling(c, n, w)[1],) * 2),
    Wrong("rolling_update", "keys_new_only", lambda c, n, w: (n, rolling(c, n, w)[1])),
    Wrong("rolling_update", "oldest", lambda c, n, w: (both(c, n), both(c, n)[:, :, : w - 1])),
    Wrong("rolling_update", "window", lambda c, n, w: (both(c, n), both(c, n)[:, :, -w:])),
    Wrong("rolling_update", "unbounded", lambda c, n, w: (both(c, n),) * 2),
    Wrong("rolling_update", "new_only", lambda c, n, w: (both(c, n), n[:, :, -(w - 1):]
                                                         if w > 1 else n[:, :, :0])),
    Wrong("rolling_update", "one_step", lambda c, n, w: rolling(
        c, n, w, keep_of=lambda S, T, w: min(w - 1, S + 1))),
    Wrong("rolling_update", "minus_zero", lambda c, n, w: (both(c, n),
                                                          both(c, n)[:, :, -(w - 1):])),
    Wrong("rolling_update", "not_pair", lambda c, n, w: both(c, n)),
    Wrong("rolling_update", "cat_dim", lambda c, n, w: (torch.cat((c, n), 1), n)),
    Wrong("rolling_update", "inplace", rolling_in_place),
]

# ----------------------------------------------------------------- exercise 5: merge_blocks


def merge(m1, l1, o1, m2, l2, o2):
    m = torch.maximum(m1, m2)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, a1 * l1 + a2 * l2, a1 * o1 + a2 * o2


def no_rescale(m1, l1, o1, m2, l2, o2):
    return torch.maximum(m1, m2), l1 + l2, o1 + o2


def upside_down(m1, l1, o1, m2, l2, o2):
    m = torch.maximum(m1, m2)
    return m, torch.exp(m - m1) * l1 + torch.exp(m - m2) * l2, o1 + o2


def raw_exp(m1, l1, o1, m2, l2, o2):  # exp(m) alone overflows at scores of 1000
    e1, e2 = torch.exp(m1), torch.exp(m2)
    m = torch.maximum(m1, m2)
    return m, (e1 * l1 + e2 * l2) / torch.exp(m), (e1 * o1 + e2 * o2) / torch.exp(m)


def only_second(m1, l1, o1, m2, l2, o2):
    m = torch.maximum(m1, m2)
    return m, l1 + torch.exp(m2 - m) * l2, o1 + torch.exp(m2 - m) * o2


def only_first(m1, l1, o1, m2, l2, o2):
    m = torch.maximum(m1, m2)
    return m, torch.exp(m1 - m) * l1 + l2, torch.exp(m1 - m) * o1 + o2


def normalised(*args):
    m, l, o = merge(*args)  # noqa: E741
    return m, l, o / l


def o_half_rescaled(*args):
    m, l, _ = merge(*args)  # noqa: E741
    m1, _, o1, _, _, o2 = args
    return m, l, torch.exp(m1 - m) * o1 + o2


def global_max(m1, l1, o1, m2, l2, o2):  # one maximum for every query of the batch
    m = torch.maximum(m1, m2).amax().expand_as(m1)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, a1 * l1 + a2 * l2, a1 * o1 + a2 * o2


def merge_in_place(m1, l1, o1, m2, l2, o2):
    m = torch.maximum(m1, m2)
    l1 *= torch.exp(m1 - m)
    o1 *= torch.exp(m1 - m)
    return m, l1 + torch.exp(m2 - m) * l2, o1 + torch.exp(m2 - m) * o2


W5 = [
    Wrong("merge_blocks", "no_rescale", no_rescale),
    Wrong("merge_blocks", "upside_down", upside_down),
    Wrong("merge_blocks", "overflow", raw_exp),
    Wrong("merge_blocks", "only_second", only_second),
    Wrong("merge_blocks", "only_first", only_first),
    Wrong("merge_blocks", "m_min", lambda *a: (torch.minimum(a[0], a[3]),) + merge(*a)[1:]),
    Wrong("merge_blocks", "m_sum", lambda *a: (a[0] + a[3],) + merge(*a)[1:]),
    Wrong("merge_blocks", "m_first", lambda *a: (a[0],) + merge(*a)[1:]),
    Wrong("merge_blocks", "m_global", global_max),
    Wrong("merge_blocks", "average", lambda *a: (merge(*a)[0], (a[1] + a[4]) / 2,
                                                 merge(*a)[2])),
    Wrong("merge_blocks", "normalised", normalised),
    Wrong("merge_blocks", "o_only_first", o_half_rescaled),
    Wrong("merge_blocks", "not_triple", lambda *a: merge(*a)[:2]),
    Wrong("merge_blocks", "inplace", merge_in_place),
]

# ----------------------------------------------------------------- exercise 6: to_half_layout


def to_half(w, H):
    D = w.shape[0] // H
    heads = w.reshape(H, D, -1)
    return torch.cat((heads[:, 0::2], heads[:, 1::2]), dim=1).reshape(w.shape)


def to_interleaved(w, H):
    D = w.shape[0] // H
    return w.reshape(H, 2, D // 2, -1).transpose(1, 2).reshape(w.shape)


def swapped_halves(w, H):
    heads = w.reshape(H, w.shape[0] // H, -1)
    return torch.cat((heads[:, 1::2], heads[:, 0::2]), 1).reshape(w.shape)


def d_outer(w, H):
    D = w.shape[0] // H
    inner = w.reshape(D, H, -1)
    return torch.cat((inner[0::2], inner[1::2]), 0).reshape(w.shape)


def d_from_columns(w, H):  # D = C // H: for a (H * D, C) weight with C != H * D, wrong
    D = w.shape[1] // H
    heads = w.reshape(H, D, -1)
    return torch.cat((heads[:, 0::2], heads[:, 1::2]), dim=1).reshape(w.shape)


def layout_in_place(w, H):
    w.copy_(to_half(w, H))
    return w.clone()


W6 = [
    Wrong("to_half_layout", "other_direction", to_interleaved),
    Wrong("to_half_layout", "one_head", lambda w, H: torch.cat((w[0::2], w[1::2]), 0)),
    Wrong("to_half_layout", "halves_swapped", swapped_halves),
    Wrong("to_half_layout", "unchanged", lambda w, H: w.clone()),
    Wrong("to_half_layout", "d_from_columns", d_from_columns),
    Wrong("to_half_layout", "reversed", lambda w, H: w.reshape(H, w.shape[0] // H, -1).flip(1)
          .reshape(w.shape)),
    Wrong("to_half_layout", "heads_inner", d_outer),
    Wrong("to_half_layout", "columns", lambda w, H: to_half(w.t(), H).t()),
    Wrong("to_half_layout", "shape", lambda w, H: to_half(w, H).reshape(H, w.shape[0] // H, -1)),
    Wrong("to_half_layout", "inplace", layout_in_place),
]

CATALOGUE = W1 + W2 + W3 + W4 + W5 + W6
SOLUTIONS = {"rope_rotate": rope, "rope_scores": rope_scores,
             "repeat_kv": lambda x, n: x.repeat_interleave(n, dim=1),
             "rolling_update": rolling, "merge_blocks": merge, "to_half_layout": to_half}


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_solution_passes_and_stub_raises(exercise, capsys):
    assert_passes(ch09, exercise, SOLUTIONS[exercise], capsys)
    assert_stub_raises(ch09, exercise)


@pytest.mark.parametrize("wrong", CATALOGUE, ids=lambda w: w.id)
def test_wrong_answer_gets_its_hint(wrong):
    assert_rejected(ch09, wrong)


def test_catalogue_complete():
    assert_complete(ch09, CATALOGUE, SOLUTIONS)


def test_alternatives_pass(capsys):
    ch09.check_repeat_kv(lambda x, n: x[:, :, None].expand(-1, -1, n, -1, -1).reshape(
        x.shape[0], -1, *x.shape[2:]))
    ch09.check_to_half_layout(lambda w, H: w.reshape(H, w.shape[0] // H // 2, 2, -1)
                              .transpose(1, 2).reshape(w.shape))

    def scores_loop(q, k, n_max, theta):
        rows = [rope(q[None], torch.tensor([m]), theta) for m in range(n_max)]
        cols = [rope(k[None], torch.tensor([n]), theta) for n in range(n_max)]
        return torch.stack([torch.cat([(r * c).sum(-1) for c in cols]) for r in rows])

    ch09.check_rope_scores(scores_loop)
    assert capsys.readouterr().out.count("✓") == 3


@pytest.mark.parametrize("check, wrong, message", [
    (ch09.check_rope_rotate, lambda x, p, t: rope(x, p, t).tolist(), "should return a torch"),
    (ch09.check_rope_scores, lambda q, k, n, t: rope_scores(q, k, n, t).tolist(),
     "should return a torch"),
    (ch09.check_repeat_kv, lambda x, n: [x] * n, "should return a torch.Tensor"),
    (ch09.check_to_half_layout, lambda w, H: to_half(w, H).tolist(), "should return a torch"),
])
def test_other_wrong_answers_are_rejected(check, wrong, message):
    with pytest.raises(AssertionError, match=message):
        check(wrong)
