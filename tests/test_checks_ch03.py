"""The chapter 03 checkers pass correct answers and reject a catalogue of wrong ones, each with
the hint meant for it (tests/catalogue.py explains the pattern)."""

import math

import pytest
import torch
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected, assert_stub_raises

from lmkit.attention import scaled_dot_product_attention
from lmkit.checks import ch03
from lmkit.checks.common import OVERFLOW

# ----------------------------------------------------------------- reference solutions


def masked_softmax(scores, mask):
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def causal_mask(T):
    return torch.tril(torch.ones(T, T, dtype=torch.bool))


def attention(q, k, v, mask=None):
    return scaled_dot_product_attention(q, k, v, mask)


def split_heads(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)


def merge_heads(x):
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


def mha(x, W_q, W_k, W_v, W_o, n_heads, scale=lambda D, C: math.sqrt(D), split=split_heads,
        merge=merge_heads, causal=True, dim=-1, after=False, wo=True, heads=None, wT=False):
    B, T, C = x.shape
    H = heads or n_heads
    if wT:
        W_q, W_k, W_v, W_o = W_q.T, W_k.T, W_v.T, W_o.T
    q, k, v = (split(x @ W, H) for W in (W_q, W_k, W_v))
    scores = q @ k.transpose(-2, -1) / scale(q.shape[-1], C)
    m = causal_mask(T)
    if causal and not after:
        scores = scores.masked_fill(~m, float("-inf"))
    w = torch.softmax(scores, dim=dim)
    if after:
        w = w * m
    y = merge(w @ v)
    return y @ W_o if wo else y


def manual_softmax(s, dim=-1):  # exp / sum without subtracting the maximum
    e = s.exp()
    return e / e.sum(dim=dim, keepdim=True)


# ----------------------------------------------------------------- exercise 1: masked_softmax


def fill_in_place(scores, mask):
    scores.masked_fill_(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


W1 = [
    Wrong("masked_softmax", "after", lambda s, m: torch.softmax(s, dim=-1) * m),
    Wrong("masked_softmax", "additive", lambda s, m: torch.softmax(s + (~m) * float("-inf"), -1)),
    Wrong("masked_softmax", "overflow", lambda s, m: manual_softmax(
        s.masked_fill(~m, float("-inf")))),
    Wrong("masked_softmax", "big_negative", lambda s, m: torch.softmax(s.masked_fill(~m, -1e9), -1)),
    Wrong("masked_softmax", "fill", lambda s, m: torch.softmax(s.masked_fill(~m, 0.0), -1)),
    Wrong("masked_softmax", "fill", lambda s, m: torch.softmax(s * m, -1)),
    Wrong("masked_softmax", "inverted", lambda s, m: torch.softmax(s.masked_fill(m, float("-inf")),
                                                                   -1)),
    Wrong("masked_softmax", "dim", lambda s, m: torch.softmax(s.masked_fill(~m, float("-inf")), -2)),
    Wrong("masked_softmax", "log", lambda s, m: torch.log_softmax(s.masked_fill(~m, float("-inf")),
                                                                  -1)),
    Wrong("masked_softmax", "inplace", fill_in_place),
    Wrong("masked_softmax", "none", lambda s, m: None),
]

# ----------------------------------------------------------------- exercise 2: causal_mask

W2 = [
    Wrong("causal_mask", "future", lambda T: torch.ones(T, T, dtype=torch.bool)),
    Wrong("causal_mask", "future", lambda T: torch.tril(torch.ones(T, T, dtype=torch.bool), 1)),
    Wrong("causal_mask", "future", lambda T: torch.triu(torch.ones(T, T, dtype=torch.bool))),
    Wrong("causal_mask", "diagonal", lambda T: torch.tril(torch.ones(T, T, dtype=torch.bool), -1)),
    Wrong("causal_mask", "inverted", lambda T: torch.triu(torch.ones(T, T, dtype=torch.bool), 1)),
    Wrong("causal_mask", "dtype", lambda T: torch.tril(torch.ones(T, T))),
    Wrong("causal_mask", "additive", lambda T: torch.zeros(T, T).masked_fill(
        ~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf"))),
    Wrong("causal_mask", "shape", lambda T: torch.tril(torch.ones(T + 1, T + 1, dtype=torch.bool))),
    Wrong("causal_mask", "type", lambda T: [[j <= i for j in range(T)] for i in range(T)]),
    Wrong("causal_mask", "none", lambda T: None),
]

# ----------------------------------------------------------------- exercise 3: attention


def attn(scale=lambda D, Tk: math.sqrt(D), dim=-1, after=False, use_mask=True, invert=False,
         values=True, kT=False, softmax=torch.softmax):
    def f(q, k, v, mask=None):
        kt = k.T if kT else k.transpose(-2, -1)
        scores = q @ kt / scale(q.shape[-1], k.shape[-2])
        if mask is not None and use_mask and not after:
            scores = scores.masked_fill(mask if invert else ~mask, float("-inf"))
        w = softmax(scores, dim=dim)
        if mask is not None and after:
            w = w * mask
        return w @ (v if values else k)
    return f


def scale_q_in_place(q, k, v, mask=None):
    q /= math.sqrt(q.shape[-1])
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def with_weights(q, k, v, mask=None):
    w = torch.softmax(ch03._attention_variant(q, k, torch.eye(k.shape[-2]), mask)
                      .clamp_min(1e-30).log(), dim=-1)
    return w @ v, w


W3 = [
    Wrong("attention", "no_scale", attn(scale=lambda D, Tk: 1.0)),
    Wrong("attention", "scale_D", attn(scale=lambda D, Tk: D)),
    Wrong("attention", "scale_Tk", attn(scale=lambda D, Tk: math.sqrt(Tk))),
    Wrong("attention", "mask_after", attn(after=True)),
    Wrong("attention", "no_mask", attn(use_mask=False)),
    Wrong("attention", "inverted", attn(invert=True)),
    Wrong("attention", "dim", attn(dim=-2)),
    Wrong("attention", "kT", attn(kT=True)),
    Wrong("attention", "values", attn(values=False)),
    Wrong("attention", "overflow", attn(softmax=manual_softmax)),
    Wrong("attention", "tuple", with_weights),
    Wrong("attention", "inplace", scale_q_in_place),
]

# ----------------------------------------------------------------- exercise 4: split and merge


def split_reshape(x, n_heads):
    B, T, C = x.shape
    return x.reshape(B, n_heads, T, C // n_heads)


def split_dh(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, C // n_heads, n_heads).permute(0, 3, 1, 2)


def split_no_transpose(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads)


def split_heads_is_d(x, n_heads):  # n_heads taken as the head size
    B, T, C = x.shape
    return x.view(B, T, C // n_heads, n_heads).transpose(1, 2)


def merge_reshape(y):
    B, H, T, D = y.shape
    return y.reshape(B, T, H * D)


def merge_no_reshape(y):
    return y.transpose(1, 2)


def merge_view(y):
    B, H, T, D = y.shape
    return y.transpose(1, 2).view(B, T, H * D)


def split_in_place(x, n_heads):
    B, T, C = x.shape
    return x.resize_(B, T, n_heads, C // n_heads).transpose(1, 2)


W4 = [
    Wrong("split_merge", "split_reshape", (split_reshape, merge_heads)),
    Wrong("split_merge", "split_order", (split_dh, merge_heads)),
    Wrong("split_merge", "split_no_transpose", (split_no_transpose, merge_heads)),
    Wrong("split_merge", "heads_dims", (split_heads_is_d, merge_heads)),
    Wrong("split_merge", "merge_reshape", (split_heads, merge_reshape)),
    Wrong("split_merge", "merge_shape", (split_heads, merge_no_reshape)),
    Wrong("split_merge", "view", (split_heads, merge_view)),
    Wrong("split_merge", "inplace", (split_in_place, merge_heads)),
]

# ----------------------------------------------------------------- exercise 5: multi-head attention


def wq_in_place(x, W_q, W_k, W_v, W_o, n_heads):
    W_q /= math.sqrt(x.shape[-1] // n_heads)  # folds the scale into W_q, changing the caller's
    return mha(x, W_q, W_k, W_v, W_o, n_heads, scale=lambda D, C: 1.0)


def variant(**kw):
    return lambda x, W_q, W_k, W_v, W_o, n_heads: mha(x, W_q, W_k, W_v, W_o, n_heads, **kw)


W5 = [
    Wrong("multi_head_attention", "scale_C", variant(scale=lambda D, C: math.sqrt(C))),
    Wrong("multi_head_attention", "no_scale", variant(scale=lambda D, C: 1.0)),
    Wrong("multi_head_attention", "scale_D", variant(scale=lambda D, C: D)),
    Wrong("multi_head_attention", "no_wo", variant(wo=False)),
    Wrong("multi_head_attention", "split", variant(split=split_reshape)),
    Wrong("multi_head_attention", "merge", variant(merge=merge_reshape)),
    Wrong("multi_head_attention", "split", variant(split=split_reshape, merge=merge_reshape)),
    Wrong("multi_head_attention", "single_head", variant(heads=1)),
    Wrong("multi_head_attention", "transpose_w", variant(wT=True)),
    Wrong("multi_head_attention", "dim", variant(dim=-2)),
    Wrong("multi_head_attention", "no_mask", variant(causal=False)),
    Wrong("multi_head_attention", "mask_after", variant(after=True)),
    Wrong("multi_head_attention", "inplace", wq_in_place),
]

CATALOGUE = W1 + W2 + W3 + W4 + W5
SOLUTIONS = {"masked_softmax": masked_softmax, "causal_mask": causal_mask, "attention": attention,
             "split_merge": (split_heads, merge_heads), "multi_head_attention": variant()}


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_solution_passes_and_stub_raises(exercise, capsys):
    assert_passes(ch03, exercise, SOLUTIONS[exercise], capsys)
    assert_stub_raises(ch03, exercise, n_fns=2 if exercise == "split_merge" else 1)


def test_split_solved_merge_stub_raises():
    with pytest.raises(NotImplementedError):
        ch03.check_split_merge(split_heads, lambda y: (_ for _ in ()).throw(NotImplementedError))


@pytest.mark.parametrize("wrong", CATALOGUE, ids=lambda w: w.id)
def test_wrong_answer_gets_its_hint(wrong):
    assert_rejected(ch03, wrong)


def test_catalogue_complete():
    assert_complete(ch03, CATALOGUE, SOLUTIONS)


def test_issue10_hints():
    """Softmax over dim -2 is not called a leaking mask; dividing by D is not called sqrt(C)."""
    with pytest.raises(AssertionError) as e:
        ch03.check_multi_head_attention(variant(dim=-2))
    assert "see the future" not in str(e.value) and "dim=-2" in str(e.value)
    with pytest.raises(AssertionError) as e:
        ch03.check_multi_head_attention(variant(scale=lambda D, C: D))
    assert "sqrt(C)" not in str(e.value)
    assert OVERFLOW.hint in ch03.MISTAKES["attention"]["overflow"].hint


def max_over_all_then_mask(scores, mask):  # the max includes masked scores
    e = (scores - scores.max(-1, keepdim=True).values).exp() * mask
    return e / e.sum(-1, keepdim=True)


def test_max_over_masked_scores_is_caught():
    with pytest.raises(AssertionError, match="contains NaN"):
        ch03.check_masked_softmax(max_over_all_then_mask)
