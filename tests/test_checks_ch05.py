"""The chapter 05 checkers accept correct answers and reject typical mistakes with a useful hint."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lmkit.checks import ch05
from lmkit.model import ModelConfig, TransformerLM
from lmkit.norm import LayerNorm, RMSNorm


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


@pytest.mark.parametrize(
    "check",
    [ch05.check_layer_norm, ch05.check_rms_norm, ch05.check_pre_norm_block,
     ch05.check_post_norm_block, ch05.check_count_norm_params, ch05.check_layer_norm_backward],
)
def test_stub_fails(check):
    with pytest.raises(NotImplementedError):
        check(stub)


# ----------------------------------------------------------------------------- LayerNorm


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def test_layer_norm_accepts_a_correct_answer(capsys):
    ch05.check_layer_norm(layer_norm)
    ch05.check_layer_norm(lambda x, w, b, eps: F.layer_norm(x, x.shape[-1:], w, b, eps))
    assert capsys.readouterr().out.count("✓ layer_norm: all 6 cases passed") == 2


def test_layer_norm_rejects_the_unbiased_variance():
    def unbiased(x, w, b, eps):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b

    with pytest.raises(AssertionError, match=r"unbiased variance \(dividing by C - 1"):
        ch05.check_layer_norm(unbiased)


def test_layer_norm_rejects_eps_outside_the_sqrt():
    def eps_outside(x, w, b, eps):
        mean = x.mean(-1, keepdim=True)
        std = x.var(-1, keepdim=True, unbiased=False).sqrt()
        return (x - mean) / (std + eps) * w + b

    with pytest.raises(AssertionError, match="eps is outside the square root"):
        ch05.check_layer_norm(eps_outside)


def test_layer_norm_rejects_no_eps_with_the_nan_hint():
    def no_eps(x, w, b, eps):
        mean = x.mean(-1, keepdim=True)
        return (x - mean) / x.var(-1, keepdim=True, unbiased=False).sqrt() * w + b

    with pytest.raises(AssertionError, match="(eps is missing|contains NaN)"):
        ch05.check_layer_norm(no_eps)


def test_layer_norm_rejects_normalizing_the_whole_tensor_and_in_place_edits():
    def whole(x, w, b, eps):
        return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps) * w + b

    with pytest.raises(AssertionError, match="normalized over the whole tensor"):
        ch05.check_layer_norm(whole)

    def in_place(x, w, b, eps):
        x -= x.mean(-1, keepdim=True)
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w + b

    with pytest.raises(AssertionError, match="in place"):
        ch05.check_layer_norm(in_place)

    with pytest.raises(AssertionError, match="expected shape"):
        ch05.check_layer_norm(lambda x, w, b, eps: layer_norm(x, w, b, eps).mean(-1))

    def no_keepdim(x, w, b, eps):
        return (x - x.mean(-1)) / torch.sqrt(x.var(-1, unbiased=False) + eps) * w + b

    with pytest.raises(AssertionError, match="keepdim=True so"):
        ch05.check_layer_norm(no_keepdim)


# ----------------------------------------------------------------------------- RMSNorm


def rms_norm(x, weight, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def test_rms_norm_accepts_a_correct_answer_and_lmkit(capsys):
    ch05.check_rms_norm(rms_norm)

    def with_lmkit(x, w, eps):
        norm = RMSNorm(x.shape[-1], eps=eps)
        with torch.no_grad():
            norm.weight.copy_(w)
            return norm(x)

    ch05.check_rms_norm(with_lmkit)
    assert capsys.readouterr().out.count("✓ rms_norm: all 6 cases passed") == 2


def test_rms_norm_rejects_subtracting_the_mean():
    def centred(x, w, eps):
        x = x - x.mean(-1, keepdim=True)
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    with pytest.raises(AssertionError, match="you subtracted the mean. RMSNorm does not centre"):
        ch05.check_rms_norm(centred)


def test_rms_norm_rejects_the_sum_of_squares():
    with pytest.raises(AssertionError, match=r"sum of squares; RMSNorm uses the \*mean\*"):
        ch05.check_rms_norm(lambda x, w, eps: x / torch.sqrt(x.pow(2).sum(-1, keepdim=True)
                                                              + eps) * w)


# ----------------------------------------------------------------------------- blocks


def pre_norm_block(x, attn, mlp, norm1, norm2):
    x = x + attn(norm1(x))
    return x + mlp(norm2(x))


def post_norm_block(x, attn, mlp, norm1, norm2):
    x = norm1(x + attn(x))
    return norm2(x + mlp(x))


def test_pre_norm_block_accepts_a_correct_answer(capsys):
    ch05.check_pre_norm_block(pre_norm_block)
    assert "✓ pre_norm_block: all 4 cases passed" in capsys.readouterr().out


def test_pre_norm_block_rejects_normalizing_the_stream():
    def normed_stream(x, attn, mlp, norm1, norm2):
        x = norm1(x)
        x = x + attn(x)
        x = norm2(x)
        return x + mlp(x)

    with pytest.raises(AssertionError, match=r"to the \*normalized\* x"):
        ch05.check_pre_norm_block(normed_stream)


def test_pre_norm_block_rejects_post_norm_parallel_and_in_place():
    with pytest.raises(AssertionError, match="this is post-norm"):
        ch05.check_pre_norm_block(post_norm_block)

    def parallel(x, attn, mlp, norm1, norm2):
        return x + attn(norm1(x)) + mlp(norm2(x))

    with pytest.raises(AssertionError, match="the MLP read x from"):
        ch05.check_pre_norm_block(parallel)

    def in_place(x, attn, mlp, norm1, norm2):
        x += attn(norm1(x))
        x += mlp(norm2(x))
        return x

    with pytest.raises(AssertionError, match="in place"):
        ch05.check_pre_norm_block(in_place)


def test_post_norm_block_accepts_a_correct_answer(capsys):
    ch05.check_post_norm_block(post_norm_block)
    assert "✓ post_norm_block: all 4 cases passed" in capsys.readouterr().out


def test_post_norm_block_rejects_pre_norm_and_normalizing_only_the_sublayer():
    with pytest.raises(AssertionError, match="this is pre-norm"):
        ch05.check_post_norm_block(pre_norm_block)

    def norm_sublayer(x, attn, mlp, norm1, norm2):
        x = x + norm1(attn(x))
        return x + norm2(mlp(x))

    with pytest.raises(AssertionError, match="normalize the sum x"):
        ch05.check_post_norm_block(norm_sublayer)


# ----------------------------------------------------------------------------- counting


def count_norm_params(config):
    per_norm = config.d_model * (2 if config.norm == "layernorm" and config.bias else 1)
    n_norms = 2 * config.n_layers + (1 if config.norm_position == "pre" else 0)
    return n_norms * per_norm


def test_count_norm_params_accepts_a_correct_answer(capsys):
    ch05.check_count_norm_params(count_norm_params)
    assert "✓ count_norm_params: all 7 cases passed" in capsys.readouterr().out


def test_count_norm_params_reference_is_a_real_model():
    config = ModelConfig(vocab_size=11, context_length=4, d_model=6, n_layers=3, n_heads=2)
    model = TransformerLM(config)
    norms = [m for m in model.modules() if isinstance(m, (LayerNorm, RMSNorm))]
    assert ch05._norm_params(config)[0] == sum(p.numel() for m in norms for p in m.parameters())
    assert ch05._norm_params(ModelConfig.gpt2())[0] == (2 * 12 + 1) * 2 * 768


def test_count_norm_params_rejects_typical_mistakes():
    def no_final(config):
        return 2 * config.n_layers * config.d_model * (2 if config.norm == "layernorm" and
                                                       config.bias else 1)

    with pytest.raises(AssertionError, match="the final norm is missing"):
        ch05.check_count_norm_params(no_final)

    def always_final(config):
        return count_norm_params(dataclasses.replace(config, norm_position="pre"))

    with pytest.raises(AssertionError, match="post-norm model has no final norm"):
        ch05.check_count_norm_params(always_final)

    def every_norm_has_a_bias(config):
        return (2 * config.n_layers + (config.norm_position == "pre")) * 2 * config.d_model

    with pytest.raises(AssertionError, match="RMSNorm has a weight .* but no bias"):
        ch05.check_count_norm_params(every_norm_has_a_bias)

    with pytest.raises(AssertionError, match="should return an int"):
        ch05.check_count_norm_params(lambda config: float(count_norm_params(config)))


# ----------------------------------------------------------------------------- backward


def layer_norm_backward(x, weight, grad_out, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    sigma = torch.sqrt(((x - mean) ** 2).mean(dim=-1, keepdim=True) + eps)
    x_hat = (x - mean) / sigma
    g = grad_out * weight
    return (g - g.mean(-1, keepdim=True) - x_hat * (g * x_hat).mean(-1, keepdim=True)) / sigma


def test_layer_norm_backward_accepts_a_correct_answer(capsys):
    ch05.check_layer_norm_backward(layer_norm_backward)
    assert "✓ layer_norm_backward: all 5 cases passed" in capsys.readouterr().out


def test_layer_norm_backward_rejects_constant_statistics():
    def constant_stats(x, w, go, eps):
        sigma = torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps)
        return go * w / sigma

    with pytest.raises(AssertionError, match="treated the mean and the variance as constants"):
        ch05.check_layer_norm_backward(constant_stats)

    with pytest.raises(AssertionError, match="the weight is missing"):
        ch05.check_layer_norm_backward(lambda x, w, go, eps: layer_norm_backward(
            x, torch.ones_like(w), go, eps))
