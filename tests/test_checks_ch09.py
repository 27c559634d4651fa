"""The chapter 09 checkers accept right answers and reject typical mistakes with a useful hint."""

import math

import pytest
import torch

from lmkit.checks import ch09


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


@pytest.mark.parametrize("check", [ch09.check_rope_rotate, ch09.check_offset_scores,
                                   ch09.check_repeat_kv, ch09.check_rolling_update,
                                   ch09.check_merge_blocks, ch09.check_to_half_layout])
def test_stub_fails(check):
    with pytest.raises(NotImplementedError):
        check(stub)


def rejects(check, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        check(fn)


# ----------------------------------------------------------------------------- 1 RoPE


def rope(x, pos, theta, sign=1, exponent=2, layout="pairs", write_back="stack", swap=False):
    D = x.shape[-1]
    freqs = theta ** (-exponent * torch.arange(D // 2) / D)
    ang = sign * pos[:, None].float() * freqs
    c, s = (ang.sin(), ang.cos()) if swap else (ang.cos(), ang.sin())
    a, b = (x[:, 0::2], x[:, 1::2]) if layout == "pairs" else (x[:, : D // 2], x[:, D // 2 :])
    a2, b2 = a * c - b * s, a * s + b * c
    if write_back == "stack" and layout == "pairs":
        return torch.stack((a2, b2), -1).flatten(-2)
    return torch.cat((a2, b2), -1)


def test_rope_rotate(capsys):
    ch09.check_rope_rotate(rope)
    assert "✓ rope_rotate" in capsys.readouterr().out
    c = ch09.check_rope_rotate
    rejects(c, lambda x, p, t: rope(x, p, t, sign=-1), "rotate the wrong way")
    rejects(c, lambda x, p, t: rope(x, p, t, layout="half"), "half-split layout")
    rejects(c, lambda x, p, t: rope(x, p, t, exponent=1), r"not theta\^\(-i/D\)")
    rejects(c, lambda x, p, t: rope(x, p, t, exponent=-2), "grow instead of shrinking")
    rejects(c, lambda x, p, t: rope(x, torch.ones_like(p), t), "same angle")
    rejects(c, lambda x, p, t: rope(x, p + 1, t), "one position too far")
    rejects(c, lambda x, p, t: rope(x, p, 10000.0), "ignore `theta`")
    rejects(c, lambda x, p, t: rope(x, p, t, swap=True), "cos and sin are swapped")
    rejects(c, lambda x, p, t: rope(x, p, t, write_back="cat"), "put each pair back in place")
    rejects(c, lambda x, p, t: rope(x, p, t)[:, :-1], r"expected shape")

    def in_place(x, p, t):
        x.mul_(1.0).add_(1.0)
        return rope(x - 1, p, t)

    rejects(c, in_place, "changed one of its input tensors in place")


# ----------------------------------------------------------------------------- 2 offsets


def offset_scores(q, k, offset, n_max, theta, **kw):
    n = torch.arange(n_max)
    qs = rope(q.expand(n_max, -1), n + offset, theta, **kw)
    ks = rope(k.expand(n_max, -1), n, theta, **kw)
    return (qs * ks).sum(-1)


def test_offset_scores(capsys):
    ch09.check_offset_scores(offset_scores)
    assert "✓ offset_scores" in capsys.readouterr().out
    c = ch09.check_offset_scores
    rejects(c, lambda q, k, o, n, t: offset_scores(q, k, o, n, t) / math.sqrt(q.numel()),
            r"divided by sqrt\(D\)")
    rejects(c, lambda q, k, o, n, t: offset_scores(k, q, o, n, t).flip(0) * 0
            + offset_scores_swapped(q, k, o, n, t), "positions are swapped")
    rejects(c, lambda q, k, o, n, t: (q * k).sum().expand(n).clone(), "forgot to rotate")
    rejects(c, lambda q, k, o, n, t: (rope(q.expand(n, -1), torch.full((n,), o), t)
                                       * rope(k.expand(n, -1), torch.arange(n), t)).sum(-1),
            "always sits at position `offset`")
    rejects(c, lambda q, k, o, n, t: (rope(q.expand(n, -1), torch.arange(n) + o, t)
                                       * k).sum(-1), "only q was rotated")
    rejects(c, lambda q, k, o, n, t: offset_scores(q, k, o, n, t, layout="half"),
            "half-split layout")
    rejects(c, lambda q, k, o, n, t: offset_scores(q, k, o, n, 10000.0), "ignore `theta`")
    rejects(c, lambda q, k, o, n, t: (rope(q.expand(n, -1), torch.arange(n) + o, t)
                                       + rope(k.expand(n, -1), torch.arange(n), t)).sum(-1),
            "not a sum of the two vectors")
    rejects(c, lambda q, k, o, n, t: offset_scores(q, k, o, n, t).tolist(),
            "should return a torch.Tensor")


def offset_scores_swapped(q, k, offset, n_max, theta):
    n = torch.arange(n_max)
    return (rope(q.expand(n_max, -1), n, theta) * rope(k.expand(n_max, -1), n + offset, theta)
            ).sum(-1)


# ----------------------------------------------------------------------------- 3 repeat_kv


def test_repeat_kv(capsys):
    c = ch09.check_repeat_kv
    c(lambda x, n: x.repeat_interleave(n, dim=1))
    c(lambda x, n: x[:, :, None].expand(-1, -1, n, -1, -1).reshape(
        x.shape[0], -1, *x.shape[2:]))
    assert "✓ repeat_kv" in capsys.readouterr().out
    rejects(c, lambda x, n: x.repeat(1, n, 1, 1), r"tiled \(0, 1, 0, 1")
    rejects(c, lambda x, n: x[:, None].expand(-1, n, -1, -1, -1).reshape(
        x.shape[0], -1, *x.shape[2:]), r"tiled \(0, 1, 0, 1")
    rejects(c, lambda x, n: x.repeat_interleave(n, dim=0), "along dim 0")
    rejects(c, lambda x, n: x.repeat_interleave(n, dim=2), "along dim 2")
    rejects(c, lambda x, n: x.repeat_interleave(n, dim=3), "along dim 3")
    rejects(c, lambda x, n: x.repeat_interleave(n, dim=1).transpose(1, 2), r"\(B, T, H, D\)")
    rejects(c, lambda x, n: x.repeat_interleave(n * n, dim=1), r"n_rep\*\*2")
    rejects(c, lambda x, n: x.clone(), "not repeated at all")
    rejects(c, lambda x, n: x.flip(1).repeat_interleave(n, dim=1), "reverse order")
    rejects(c, lambda x, n: [x] * n, "should return a torch.Tensor")


# ----------------------------------------------------------------------------- 4 rolling cache


def rolling(cache, new, window):
    keys = torch.cat((cache, new), dim=2)
    keep = min(window - 1, keys.shape[2])
    return keys, keys[:, :, keys.shape[2] - keep :]


def test_rolling_update(capsys):
    c = ch09.check_rolling_update
    c(rolling)
    assert "✓ rolling_update" in capsys.readouterr().out
    rejects(c, lambda cache, new, w: (torch.cat((new, cache), 2), rolling(cache, new, w)[1]),
            "cached positions first")
    rejects(c, lambda cache, new, w: (rolling(cache, new, w)[1],) * 2, "were trimmed")
    rejects(c, lambda cache, new, w: (new, rolling(cache, new, w)[1]), "also attend")
    rejects(c, lambda cache, new, w: (torch.cat((cache, new), 2),
                                      torch.cat((cache, new), 2)[:, :, : w - 1]),
            "kept the oldest")
    rejects(c, lambda cache, new, w: (torch.cat((cache, new), 2),
                                      torch.cat((cache, new), 2)[:, :, -w:]), "kept window")
    rejects(c, lambda cache, new, w: (torch.cat((cache, new), 2),) * 2, "nothing was dropped")
    rejects(c, lambda cache, new, w: (torch.cat((cache, new), 2), new[:, :, -(w - 1):]
                                      if w > 1 else new[:, :, :0]), "only the new positions")
    rejects(c, lambda cache, new, w: (torch.cat((cache, new), 2),
                                      torch.cat((cache, new), 2)[:, :, -(w - 1):]),
            r"x\[:, :, -0:\]")
    rejects(c, lambda cache, new, w: torch.cat((cache, new), 2), "should return a pair")
    rejects(c, lambda cache, new, w: (torch.cat((cache, new), 1), new), "along dim 2")


# ----------------------------------------------------------------------------- 5 online softmax


def merge(m1, l1, o1, m2, l2, o2):
    m = torch.maximum(m1, m2)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, a1 * l1 + a2 * l2, a1 * o1 + a2 * o2


def test_merge_blocks(capsys):
    c = ch09.check_merge_blocks
    c(merge)
    assert "✓ merge_blocks" in capsys.readouterr().out

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

    rejects(c, no_rescale, "without rescaling")
    rejects(c, upside_down, "upside down")
    rejects(c, raw_exp, "NaN or inf")
    rejects(c, only_second, "only the second block was rescaled")
    rejects(c, only_first, "only the first block was rescaled")
    rejects(c, lambda m1, l1, o1, m2, l2, o2: (torch.minimum(m1, m2),) + merge(
        m1, l1, o1, m2, l2, o2)[1:], "not the minimum")
    rejects(c, lambda m1, l1, o1, m2, l2, o2: (m1 + m2,) + merge(m1, l1, o1, m2, l2, o2)[1:],
            "not their sum")
    rejects(c, lambda m1, l1, o1, m2, l2, o2: (m1,) + merge(m1, l1, o1, m2, l2, o2)[1:],
            "can hold larger scores")
    rejects(c, lambda *a: (merge(*a)[0], (a[1] + a[4]) / 2, merge(*a)[2]), "not averaged")
    rejects(c, normalised, "un-normalised")
    rejects(c, o_half_rescaled, "o2 needs")
    rejects(c, lambda *a: merge(*a)[:2], "should return a triple")


# ----------------------------------------------------------------------------- 6 layouts


def to_half(w, H):
    D = w.shape[0] // H
    heads = w.reshape(H, D, -1)
    return torch.cat((heads[:, 0::2], heads[:, 1::2]), dim=1).reshape(w.shape)


def test_to_half_layout(capsys):
    c = ch09.check_to_half_layout
    c(to_half)
    assert "✓ to_half_layout" in capsys.readouterr().out

    def to_interleaved(w, H):
        D = w.shape[0] // H
        return w.reshape(H, 2, D // 2, -1).transpose(1, 2).reshape(w.shape)

    def one_head(w, H):
        return torch.cat((w[0::2], w[1::2]), 0)

    def swapped(w, H):
        heads = w.reshape(H, w.shape[0] // H, -1)
        return torch.cat((heads[:, 1::2], heads[:, 0::2]), 1).reshape(w.shape)

    def d_outer(w, H):
        D = w.shape[0] // H
        inner = w.reshape(D, H, -1)
        return torch.cat((inner[0::2], inner[1::2]), 0).reshape(w.shape)

    def columns(w, H):
        return to_half(w.t(), H).t()

    rejects(c, to_interleaved, "the other direction")
    rejects(c, one_head, "as one head")
    rejects(c, swapped, "halves are swapped")
    rejects(c, lambda w, H: w.clone(), "came back unchanged")
    rejects(c, lambda w, H: w.reshape(H, w.shape[0] // H, -1).flip(1).reshape(w.shape),
            "reversing")
    rejects(c, d_outer, r"not \(D, H, C\)")
    rejects(c, columns, "reordered the columns")
    rejects(c, lambda w, H: to_half(w, H).reshape(H, w.shape[0] // H, -1),
            "reshape back")
    rejects(c, lambda w, H: to_half(w, H).tolist(), "should return a torch.Tensor")
