"""The chapter 03 checkers accept correct attention code and reject typical mistakes with a useful hint."""

import math

import pytest
import torch

from lmkit.attention import MultiHeadAttention, scaled_dot_product_attention
from lmkit.checks import ch03


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


@pytest.mark.parametrize(
    "check",
    [ch03.check_masked_softmax, ch03.check_causal_mask, ch03.check_attention,
     ch03.check_multi_head_attention],
)
def test_stub_fails(check):
    with pytest.raises(NotImplementedError):
        check(stub)


def test_split_merge_stubs_fail():
    with pytest.raises(NotImplementedError):
        ch03.check_split_merge(stub, stub)
    with pytest.raises(NotImplementedError):  # split solved, merge not yet
        ch03.check_split_merge(split_heads, stub)


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


def multi_head_attention(x, W_q, W_k, W_v, W_o, n_heads, scale_by=None, split=split_heads,
                         merge=merge_heads, causal=True):
    T = x.shape[1]
    q, k, v = (split(x @ W, n_heads) for W in (W_q, W_k, W_v))
    D = q.shape[-1] if scale_by is None else scale_by
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    if causal:
        scores = scores.masked_fill(~causal_mask(T), float("-inf"))
    return merge(torch.softmax(scores, dim=-1) @ v) @ W_o


# ----------------------------------------------------------------- exercise 1


def test_masked_softmax(capsys):
    ch03.check_masked_softmax(masked_softmax)
    assert "✓ masked_softmax" in capsys.readouterr().out

    def after_softmax(scores, mask):  # zeroes weights after normalising
        return torch.softmax(scores, dim=-1) * mask

    with pytest.raises(AssertionError, match="zeroing weights after the softmax"):
        ch03.check_masked_softmax(after_softmax)

    def finite_fill(scores, mask):
        return torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1)

    with pytest.raises(AssertionError, match="-1e9 is only a big number"):
        ch03.check_masked_softmax(finite_fill)

    def additive_inf(scores, mask):  # (~mask) * -inf is NaN where mask is True
        return torch.softmax(scores + (~mask).float() * float("-inf"), dim=-1)

    with pytest.raises(AssertionError, match="0 \\* -inf is NaN"):
        ch03.check_masked_softmax(additive_inf)

    def unstable(scores, mask):
        e = torch.exp(scores.masked_fill(~mask, float("-inf")))
        return e / e.sum(dim=-1, keepdim=True)

    with pytest.raises(AssertionError, match="Subtract each row's maximum"):
        ch03.check_masked_softmax(unstable)

    def over_queries(scores, mask):
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-2)

    with pytest.raises(AssertionError, match="columns sum to 1"):
        ch03.check_masked_softmax(over_queries)


# ----------------------------------------------------------------- exercise 2


def test_causal_mask(capsys):
    ch03.check_causal_mask(causal_mask)
    assert "✓ causal_mask" in capsys.readouterr().out

    def upper(T):  # the transpose: each position sees itself and the future
        return torch.triu(torch.ones(T, T, dtype=torch.bool))

    with pytest.raises(AssertionError, match="position 0 changed when token 3 changed: your "
                                             "mask lets tokens see the future"):
        ch03.check_causal_mask(upper)

    with pytest.raises(AssertionError, match="must be able to attend to itself"):
        ch03.check_causal_mask(lambda T: torch.tril(torch.ones(T, T, dtype=torch.bool), -1))

    with pytest.raises(AssertionError, match="position 2 changed when token 3 changed"):
        ch03.check_causal_mask(lambda T: torch.tril(torch.ones(T, T, dtype=torch.bool), 1))

    with pytest.raises(AssertionError, match="return a boolean tensor"):
        ch03.check_causal_mask(lambda T: torch.tril(torch.ones(T, T)))

    with pytest.raises(AssertionError, match="must see every key"):
        ch03.check_causal_mask(lambda T: torch.eye(T, dtype=torch.bool))


# ----------------------------------------------------------------- exercise 3


def test_attention(capsys):
    ch03.check_attention(attention)
    assert "✓ attention" in capsys.readouterr().out

    def unscaled(q, k, v, mask=None):
        return scaled_dot_product_attention(q * math.sqrt(q.shape[-1]), k, v, mask)

    with pytest.raises(AssertionError, match="WITHOUT the scaling"):
        ch03.check_attention(unscaled)

    def by_d(q, k, v, mask=None):
        return scaled_dot_product_attention(q / math.sqrt(q.shape[-1]), k, v, mask)

    with pytest.raises(AssertionError, match="divide by sqrt"):
        ch03.check_attention(by_d)

    with pytest.raises(AssertionError, match="equals attention without the mask"):
        ch03.check_attention(lambda q, k, v, mask=None: scaled_dot_product_attention(q, k, v))

    def inverted(q, k, v, mask=None):  # a student's own softmax: a row with no key is NaN
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    with pytest.raises(AssertionError, match="contains NaN"):
        ch03.check_attention(inverted)

    def dot_t(q, k, v, mask=None):  # k.T reverses all dimensions of a batched tensor
        scores = (q @ k.permute(*range(k.dim() - 1, -1, -1))) / math.sqrt(q.shape[-1])
        return torch.softmax(scores, dim=-1) @ v

    with pytest.raises(AssertionError, match="use k.transpose\\(-2, -1\\)"):
        ch03.check_attention(dot_t)

    def by_n_keys(q, k, v, mask=None):  # sqrt of the number of keys, not of D
        return scaled_dot_product_attention(q * math.sqrt(q.shape[-1] / k.shape[-2]), k, v, mask)

    with pytest.raises(AssertionError, match="square root of the number of keys, 4"):
        ch03.check_attention(by_n_keys)

    def masked_after(q, k, v, mask=None):  # zeroes weights after the softmax
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        return (weights if mask is None else weights * mask) @ v

    with pytest.raises(AssertionError, match="zeroed the weights after the softmax"):
        ch03.check_attention(masked_after)

    def both(q, k, v, mask=None):
        return scaled_dot_product_attention(q, k, v, mask, return_weights=True)

    with pytest.raises(AssertionError, match="return only the output"):
        ch03.check_attention(both)


# ----------------------------------------------------------------- exercise 4


def test_split_merge(capsys):
    ch03.check_split_merge(split_heads, merge_heads)
    assert "✓ split_heads and merge_heads" in capsys.readouterr().out

    def reshape_split(x, n_heads):
        B, T, C = x.shape
        return x.reshape(B, n_heads, T, C // n_heads)

    with pytest.raises(AssertionError, match="reshape without transpose mixes heads"):
        ch03.check_split_merge(reshape_split, merge_heads)

    def reshape_merge(x):
        B, H, T, D = x.shape
        return x.reshape(B, T, H * D)

    with pytest.raises(AssertionError, match="merge_heads.*reshape without transpose"):
        ch03.check_split_merge(split_heads, reshape_merge)

    def interleaved(x, n_heads):
        B, T, C = x.shape
        return x.view(B, T, C // n_heads, n_heads).permute(0, 3, 1, 2)

    with pytest.raises(AssertionError, match="consecutive channels"):
        ch03.check_split_merge(interleaved, merge_heads)

    with pytest.raises(AssertionError, match="expected \\(B, H, T, D\\)"):
        ch03.check_split_merge(lambda x, n_heads: x.view(*x.shape[:2], n_heads, -1), merge_heads)


# ----------------------------------------------------------------- exercise 5


def test_multi_head_attention(capsys):
    ch03.check_multi_head_attention(multi_head_attention)
    assert "✓ multi_head_attention" in capsys.readouterr().out

    def no_mask(x, *Ws):
        return multi_head_attention(x, *Ws, causal=False)

    with pytest.raises(AssertionError, match="position 0 changed when token 6 changed: your "
                                             "attention lets tokens see the future"):
        ch03.check_multi_head_attention(no_mask)

    def scaled_by_c(x, *Ws):
        return multi_head_attention(x, *Ws, scale_by=x.shape[-1])

    with pytest.raises(AssertionError, match="sqrt\\(C\\) = sqrt\\(d_model\\)"):
        ch03.check_multi_head_attention(scaled_by_c)

    def no_w_o(x, W_q, W_k, W_v, W_o, n_heads):
        return multi_head_attention(x, W_q, W_k, W_v, torch.eye(x.shape[-1]), n_heads)

    with pytest.raises(AssertionError, match="multiply by W_o"):
        ch03.check_multi_head_attention(no_w_o)

    def reshape_split(x, n_heads):
        B, T, C = x.shape
        return x.reshape(B, n_heads, T, C // n_heads)

    with pytest.raises(AssertionError, match="heads are mixed up"):
        ch03.check_multi_head_attention(
            lambda x, *Ws: multi_head_attention(x, *Ws, split=reshape_split))

    def one_head(x, W_q, W_k, W_v, W_o, n_heads):  # forgot to split into heads
        return multi_head_attention(x, W_q, W_k, W_v, W_o, 1)

    with pytest.raises(AssertionError, match="ONE head as wide as the model"):
        ch03.check_multi_head_attention(one_head)

    def transposed(x, W_q, W_k, W_v, W_o, n_heads):
        return multi_head_attention(x, W_q.T, W_k.T, W_v.T, W_o.T, n_heads)

    with pytest.raises(AssertionError, match="transposed matrices"):
        ch03.check_multi_head_attention(transposed)


def test_multi_head_attention_checker_agrees_with_lmkit_module():
    """The checker's own reference is lmkit's module with copied weights; so is the notebook's."""
    torch.manual_seed(0)
    x, Ws = torch.randn(2, 5, 16), [torch.randn(16, 16) / 4 for _ in range(4)]
    mha = MultiHeadAttention(16, 4, bias=False)
    with torch.no_grad():
        for proj, W in zip([mha.q_proj, mha.k_proj, mha.v_proj, mha.o_proj], Ws, strict=True):
            proj.weight.copy_(W.T)
    torch.testing.assert_close(mha(x), multi_head_attention(x, *Ws, 4))
