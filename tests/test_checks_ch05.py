"""The chapter 05 checkers pass correct answers and reject a catalogue of wrong ones, each with
the hint meant for it (tests/catalogue.py explains the pattern)."""

import pytest
import torch
import torch.nn.functional as F
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected, assert_stub_raises

from lmkit.checks import ch05
from lmkit.model import ModelConfig, TransformerLM
from lmkit.norm import LayerNorm, RMSNorm

# ----------------------------------------------------------------- exercise 1: layer_norm


def ln(unbiased=False, eps_where="in", dims=(-1,), weight=True, bias=True, keepdim=True):
    def f(x, w, b, eps):
        mean = x.mean(dim=dims, keepdim=keepdim)
        var = x.var(dim=dims, keepdim=keepdim, unbiased=unbiased)
        std = {"in": (var + eps).sqrt(), "out": var.sqrt() + eps, "none": var.sqrt()}[eps_where]
        y = (x - mean) / std
        return y * (w if weight else 1) + (b if bias else 0)
    return f


def under_no_grad(x, w, b, eps):
    with torch.no_grad():
        return ln()(x, w, b, eps)


def centre_in_place(x, w, b, eps):
    x -= x.mean(dim=-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w + b


def detached(x, w, b, eps):
    mean = x.mean(dim=-1, keepdim=True).detach()
    var = x.var(dim=-1, keepdim=True, unbiased=False).detach()
    return ((x - mean) / (var + eps).sqrt()).detach() * w + b


W1 = [
    Wrong("layer_norm", "forbidden", lambda x, w, b, eps: F.layer_norm(x, x.shape[-1:], w, b, eps)),
    Wrong("layer_norm", "forbidden", lambda x, w, b, eps: torch.layer_norm(x, x.shape[-1:], w, b,
                                                                           eps)),
    Wrong("layer_norm", "no_grad", under_no_grad),
    Wrong("layer_norm", "no_grad", detached),
    Wrong("layer_norm", "unbiased", ln(unbiased=True)),
    Wrong("layer_norm", "eps_out", ln(eps_where="out")),
    Wrong("layer_norm", "no_eps", ln(eps_where="none")),
    Wrong("layer_norm", "whole", lambda x, w, b, eps: ln(dims=tuple(range(x.dim())))(x, w, b, eps)),
    Wrong("layer_norm", "batch", ln(dims=(0,))),
    Wrong("layer_norm", "affine", ln(bias=False)),
    Wrong("layer_norm", "affine", ln(weight=False, bias=False)),
    Wrong("layer_norm", "keepdim", ln(keepdim=False)),
    Wrong("layer_norm", "inplace", centre_in_place),
]

# ----------------------------------------------------------------- exercise 2: rms_norm


def rms(centre=False, sum_sq=False, sqrt=True, eps_where="in", weight=True, dims=-1,
        keepdim=True, std=False):
    def f(x, w, eps):
        if centre:
            x = x - x.mean(-1, keepdim=True)
        if std:
            ms = x.var(dim=-1, keepdim=True)
        else:
            ms = x.pow(2).sum(dims, keepdim=keepdim) if sum_sq else x.pow(2).mean(dims,
                                                                                  keepdim=keepdim)
        d = {"in": (ms + eps).sqrt(), "out": ms.sqrt() + eps, "none": ms.sqrt()}[eps_where]
        if not sqrt:
            d = ms + eps
        return x / d * (w if weight else 1)
    return f


def scale_in_place(x, w, eps):
    x /= (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x * w


W2 = [
    Wrong("rms_norm", "centre", rms(centre=True)),
    Wrong("rms_norm", "spread", rms(std=True)),
    Wrong("rms_norm", "spread", lambda x, w, eps: x / (x.std(-1, keepdim=True) + eps) * w),
    Wrong("rms_norm", "sum", rms(sum_sq=True)),
    Wrong("rms_norm", "no_sqrt", rms(sqrt=False)),
    Wrong("rms_norm", "eps_out", rms(eps_where="out")),
    Wrong("rms_norm", "no_eps", rms(eps_where="none")),
    Wrong("rms_norm", "no_weight", rms(weight=False)),
    Wrong("rms_norm", "whole", lambda x, w, eps: x / (x.pow(2).mean() + eps).sqrt() * w),
    Wrong("rms_norm", "keepdim", rms(keepdim=False)),
    Wrong("rms_norm", "inplace", scale_in_place),
]

# ----------------------------------------------------------------- exercises 3, 4: blocks


def pre_norm_block(x, attn, mlp, norm1, norm2):
    x = x + attn(norm1(x))
    return x + mlp(norm2(x))


def post_norm_block(x, attn, mlp, norm1, norm2):
    x = norm1(x + attn(x))
    return norm2(x + mlp(x))


def pre_in_place(x, attn, mlp, norm1, norm2):
    x += attn(norm1(x))
    x += mlp(norm2(x))
    return x


def post_in_place(x, attn, mlp, norm1, norm2):
    x += attn(x)
    x = norm1(x)
    return norm2(x + mlp(x))


def normed_stream(x, attn, mlp, norm1, norm2):
    x = norm1(x)
    x = x + attn(x)
    x = norm2(x)
    return x + mlp(x)


W3 = [
    Wrong("pre_norm_block", "normed_stream", normed_stream),
    Wrong("pre_norm_block", "post", lambda x, a, m, n1, n2: post_norm_block(x, a, m, n1, n2)),
    Wrong("pre_norm_block", "stale_x", lambda x, a, m, n1, n2: x + a(n1(x)) + m(n2(x))),
    Wrong("pre_norm_block", "swapped", lambda x, a, m, n1, n2: pre_norm_block(x, a, m, n2, n1)),
    Wrong("pre_norm_block", "norm_output", lambda x, a, m, n1, n2: (lambda y: y + n2(m(y)))(
        x + n1(a(x)))),
    Wrong("pre_norm_block", "no_residual", lambda x, a, m, n1, n2: m(n2(a(n1(x))))),
    Wrong("pre_norm_block", "no_residual", lambda x, a, m, n1, n2: m(n2(x + a(n1(x))))),
    Wrong("pre_norm_block", "chained", lambda x, a, m, n1, n2: x + m(n2(a(n1(x))))),
    Wrong("pre_norm_block", "inplace", pre_in_place),
]

W4 = [
    Wrong("post_norm_block", "pre", lambda x, a, m, n1, n2: pre_norm_block(x, a, m, n1, n2)),
    Wrong("post_norm_block", "norm_output", lambda x, a, m, n1, n2: (lambda y: y + n2(m(y)))(
        x + n1(a(x)))),
    Wrong("post_norm_block", "no_residual", lambda x, a, m, n1, n2: n2(m(n1(a(x))))),
    Wrong("post_norm_block", "no_residual", lambda x, a, m, n1, n2: n2(m(n1(x + a(x))))),
    Wrong("post_norm_block", "swapped", lambda x, a, m, n1, n2: post_norm_block(x, a, m, n2, n1)),
    Wrong("post_norm_block", "stale_x", lambda x, a, m, n1, n2: n2(n1(x + a(x)) + m(x))),
    Wrong("post_norm_block", "missing_norm", lambda x, a, m, n1, n2: (lambda y: n2(y + m(y)))(
        x + a(x))),
    Wrong("post_norm_block", "missing_norm", lambda x, a, m, n1, n2: (lambda y: y + m(y))(
        n1(x + a(x)))),
    Wrong("post_norm_block", "inplace", post_in_place),
    Wrong("post_norm_block", "shape", lambda x, a, m, n1, n2: (post_norm_block(x, a, m, n1, n2),
                                                               a(x))),
]

# ----------------------------------------------------------------- exercise 5: count_norm_params


def count_norm_params(config, final=None, per_block=2, rms_bias=False, bias_anyway=False,
                      ln_bias=True):
    layer = config.norm == "layernorm"
    two = (layer and (config.bias or bias_anyway) and ln_bias) or (not layer and rms_bias)
    per_norm = config.d_model * (2 if two else 1)
    has_final = (config.norm_position == "pre") if final is None else final
    return (per_block * config.n_layers + (1 if has_final else 0)) * per_norm


def builds(config):
    model = TransformerLM(config)
    return sum(p.numel() for m in model.modules() if isinstance(m, (LayerNorm, RMSNorm))
               for p in m.parameters())


W5 = [
    Wrong("count_norm_params", "no_final", lambda c: count_norm_params(c, final=False)),
    Wrong("count_norm_params", "post_final", lambda c: count_norm_params(c, final=True)),
    Wrong("count_norm_params", "one_per_block", lambda c: count_norm_params(c, per_block=1)),
    Wrong("count_norm_params", "rms_bias", lambda c: count_norm_params(c, rms_bias=True)),
    Wrong("count_norm_params", "bias_false", lambda c: count_norm_params(c, bias_anyway=True)),
    Wrong("count_norm_params", "no_bias", lambda c: count_norm_params(c, ln_bias=False)),
    Wrong("count_norm_params", "type", lambda c: float(count_norm_params(c))),
    Wrong("count_norm_params", "type", lambda c: torch.tensor(count_norm_params(c))),
    Wrong("count_norm_params", "build", builds),
]

# ----------------------------------------------------------------- exercise 6: layer_norm_backward


def lnb(mean_term=True, var_term=True, weight=True, unbiased=False, eps_in=True, keepdim=True):
    def f(x, w, go, eps):
        mean = x.mean(-1, keepdim=keepdim)
        var = x.var(-1, keepdim=keepdim, unbiased=unbiased)
        sigma = (var + eps).sqrt() if eps_in else var.sqrt()
        xh = (x - mean) / sigma
        g = go * w if weight else go
        out = g
        if mean_term:
            out = out - g.mean(-1, keepdim=True)
        if var_term:
            out = out - xh * (g * xh).mean(-1, keepdim=True)
        return out / sigma
    return f


def with_autograd(x, w, go, eps):
    x = x.clone().requires_grad_()
    F.layer_norm(x, x.shape[-1:], w, None, eps).backward(go)
    return x.grad


def grad_in_place(x, w, go, eps):
    go *= w  # g = grad_out * weight, written into the caller's tensor
    return lnb(weight=False)(x, w, go, eps)


W6 = [
    Wrong("layer_norm_backward", "autograd", with_autograd),
    Wrong("layer_norm_backward", "constants", lnb(mean_term=False, var_term=False)),
    Wrong("layer_norm_backward", "no_var_term", lnb(var_term=False)),
    Wrong("layer_norm_backward", "no_mean_term", lnb(mean_term=False)),
    Wrong("layer_norm_backward", "no_weight", lnb(weight=False)),
    Wrong("layer_norm_backward", "unbiased", lnb(unbiased=True)),
    Wrong("layer_norm_backward", "no_eps", lnb(eps_in=False)),
    Wrong("layer_norm_backward", "keepdim", lnb(keepdim=False)),
    Wrong("layer_norm_backward", "inplace", grad_in_place),
]

CATALOGUE = W1 + W2 + W3 + W4 + W5 + W6
SOLUTIONS = {"layer_norm": ln(), "rms_norm": rms(), "pre_norm_block": pre_norm_block,
             "post_norm_block": post_norm_block, "count_norm_params": count_norm_params,
             "layer_norm_backward": lnb()}


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_solution_passes_and_stub_raises(exercise, capsys):
    assert_passes(ch05, exercise, SOLUTIONS[exercise], capsys)
    assert_stub_raises(ch05, exercise)


@pytest.mark.parametrize("wrong", CATALOGUE, ids=lambda w: w.id)
def test_wrong_answer_gets_its_hint(wrong):
    assert_rejected(ch05, wrong)


def test_catalogue_complete():
    assert_complete(ch05, CATALOGUE, SOLUTIONS)


def test_count_norm_params_reference_is_a_real_model():
    config = ModelConfig(vocab_size=11, context_length=4, d_model=6, n_layers=3, n_heads=2)
    model = TransformerLM(config)
    norms = [m for m in model.modules() if isinstance(m, (LayerNorm, RMSNorm))]
    assert ch05._norm_params(config)[0] == sum(p.numel() for m in norms for p in m.parameters())
    assert ch05._norm_params(ModelConfig.gpt2())[0] == (2 * 12 + 1) * 2 * 768


def test_lmkit_norms_pass(capsys):
    ch05.check_rms_norm(lambda x, w, eps: F.rms_norm(x, x.shape[-1:], w, eps))
    assert "✓" in capsys.readouterr().out


def rms_no_grad(x, w, eps):
    with torch.no_grad():
        return rms()(x, w, eps)


def builds_blocks(c):
    from lmkit.model import Block
    with torch.device("meta"):
        blocks = [Block(c) for _ in range(c.n_layers)]
    return sum(p.numel() for b in blocks for n in (b.norm1, b.norm2) for p in n.parameters())


REVIEW = [
    Wrong("layer_norm", "forbidden", lambda x, w, b, eps: F.group_norm(
        x.reshape(-1, x.shape[-1], 1), 1, None, None, eps).reshape(x.shape) * w + b),
    Wrong("rms_norm", "no_grad", rms_no_grad),
    Wrong("count_norm_params", "build", builds_blocks),
]
CATALOGUE += REVIEW


@pytest.mark.parametrize("wrong", REVIEW, ids=lambda w: w.id)
def test_review_wrong_answers(wrong):
    assert_rejected(ch05, wrong)
