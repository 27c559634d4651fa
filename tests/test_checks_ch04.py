"""The chapter 04 checkers accept correct answers and reject typical mistakes with a useful hint."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmkit.checks import ch04
from lmkit.ffn import FeedForward, gelu_tanh


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


@pytest.mark.parametrize(
    "check",
    [ch04.check_gelu_tanh, ch04.check_ffn_param_count, ch04.check_ffn_forward,
     ch04.check_swiglu, ch04.check_swiglu_hidden_size, ch04.check_ffn_backward],
)
def test_stub_fails(check):
    with pytest.raises(NotImplementedError):
        check(stub)


# ----------------------------------------------------------------------------- exercise 1


SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _gelu_tanh(x, c=SQRT_2_OVER_PI, cubic=0.044715):
    return 0.5 * x * (1 + torch.tanh(c * (x + cubic * x**3)))


def test_gelu_tanh_accepts_lmkit_and_torch(capsys):
    ch04.check_gelu_tanh(gelu_tanh)
    ch04.check_gelu_tanh(lambda x: F.gelu(x, approximate="tanh"))
    assert capsys.readouterr().out.count("✓ gelu_tanh: all 5 cases passed") == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x: _gelu_tanh(x, cubic=0.0), r"0\.044715 \* x\*\*3 term .* is missing"),
        (lambda x: _gelu_tanh(x, c=1.0), r"factor sqrt\(2 / math\.pi\) .* is missing"),
        (lambda x: _gelu_tanh(x, c=2 / math.pi), r"use sqrt\(2 / pi\), not 2 / pi"),
        (F.gelu, "this is the exact GELU"),
        (lambda x: 2 * _gelu_tanh(x), "leading factor 0.5 is missing"),
        (lambda x: 0.5 * x * (1 + torch.tanh(SQRT_2_OVER_PI * x + 0.044715 * x**3)),
         r"check the brackets: sqrt\(2 / pi\) multiplies the whole sum"),
        (lambda x: 0.5 * x * (1 + torch.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**2))),
         r"0\.044715 \* x\*\*3 \(x cubed\), not x\*\*2"),
        (lambda x: _gelu_tanh(x, cubic=0.04), r"wrong values, largest error .* at x = -1\.9000"),
        (lambda x: _gelu_tanh(x).flatten(), "expected shape"),
        (lambda x: None, "did you forget `return`"),
    ],
)
def test_gelu_tanh_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        ch04.check_gelu_tanh(wrong)


def test_gelu_tanh_rejects_in_place_changes():
    def in_place(x):
        return x.copy_(_gelu_tanh(x))

    with pytest.raises(AssertionError, match="changed one of its input tensors in place"):
        ch04.check_gelu_tanh(in_place)


# ----------------------------------------------------------------------------- exercise 2


def _param_count(d, h, bias, gated, *, biases=True, down_bias=None, gate=True, gate_bias=True):
    n = 2 * d * h
    if bias and biases:
        n += h + (d if down_bias is None else down_bias)
    if gated and gate:
        n += d * h + (h if bias and biases and gate_bias else 0)
    return n


def test_ffn_param_count_accepts_the_formula(capsys):
    ch04.check_ffn_param_count(lambda d, h, bias, gated: _param_count(d, h, bias, gated))
    assert "✓ ffn_param_count: all 8 cases passed" in capsys.readouterr().out


def test_ffn_param_count_agrees_with_feedforward():
    assert ch04._count(768, 3072, True, False) == sum(
        p.numel() for p in FeedForward(768, 3072).parameters()) == 4_722_432


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda d, h, bias, gated: _param_count(d, h, bias, gated, biases=False),
         "you forgot the biases"),
        (lambda d, h, bias, gated: _param_count(d, h, True, gated),
         "with bias=False the layers have no bias vectors"),
        (lambda d, h, bias, gated: _param_count(d, h, bias, gated, down_bias=h),
         "down_proj's bias has d_model entries"),
        (lambda d, h, bias, gated: _param_count(d, h, bias, gated, gate=False),
         "a gated FFN .* has a third matrix, gate_proj"),
        (lambda d, h, bias, gated: _param_count(d, h, bias, gated, gate_bias=False),
         "gate_proj has a bias too"),
        (lambda d, h, bias, gated: float(_param_count(d, h, bias, gated)), "should return an int"),
        (lambda d, h, bias, gated: d * h, "Count each nn.Linear"),
    ],
)
def test_ffn_param_count_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        ch04.check_ffn_param_count(wrong)


# ----------------------------------------------------------------------------- exercise 3


def _ffn(x, W_up, b_up, W_down, b_down):
    return F.gelu(x @ W_up.T + b_up) @ W_down.T + b_down


def test_ffn_forward_accepts_the_reference(capsys):
    ch04.check_ffn_forward(_ffn)

    def with_linear(x, W_up, b_up, W_down, b_down):
        return F.linear(F.gelu(F.linear(x, W_up, b_up)), W_down, b_down)

    ch04.check_ffn_forward(with_linear)
    assert capsys.readouterr().out.count("✓ ffn_forward: all 5 cases passed") == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x, Wu, bu, Wd, bd: F.gelu((x @ Wu.T + bu) @ Wd.T + bd),
         "activation goes between the two layers"),
        (lambda x, Wu, bu, Wd, bd: F.gelu(x @ Wu + bu) @ Wd + bd,
         r"you multiplied by W, not W\.T"),
        (lambda x, Wu, bu, Wd, bd: (x @ Wu.T + bu) @ Wd.T + bd, "no activation"),
        (lambda x, Wu, bu, Wd, bd: F.gelu(x @ Wu.T + bu, approximate="tanh") @ Wd.T + bd,
         "tanh approximation; use the exact GELU"),
        (lambda x, Wu, bu, Wd, bd: F.relu(x @ Wu.T + bu) @ Wd.T + bd, "this uses ReLU"),
        (lambda x, Wu, bu, Wd, bd: F.gelu(x @ Wu.T) @ Wd.T + bd, "b_up is missing"),
        (lambda x, Wu, bu, Wd, bd: F.gelu(x @ Wu.T + bu) @ Wd.T, "b_down is missing"),
        (lambda x, Wu, bu, Wd, bd: _ffn(x, Wu, bu, Wd, bd).reshape(-1, x.shape[-1]),
         r"expected shape \(2, 3, 4\), got \(6, 4\)"),
    ],
)
def test_ffn_forward_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        ch04.check_ffn_forward(wrong)


def test_ffn_forward_explains_a_shape_error_from_a_missing_transpose():
    # a transpose that is right only for square weights: passes case 1, crashes on case 2
    def half_transposed(x, Wu, bu, Wd, bd):
        if Wu.shape[0] == Wu.shape[1]:
            return _ffn(x, Wu, bu, Wd, bd)
        return F.gelu(x @ Wu + bu) @ Wd + bd

    with pytest.raises(AssertionError, match=r"cannot be multiplied.*\nThe inputs had shapes "
                       r"\(2, 5, 6\), \(24, 6\).*computes x @ W\.T, not x @ W"):
        ch04.check_ffn_forward(half_transposed)


# ----------------------------------------------------------------------------- exercise 4


def _swiglu(x, Wg, Wu, Wd):
    return (F.silu(x @ Wg.T) * (x @ Wu.T)) @ Wd.T


def test_swiglu_accepts_the_reference(capsys):
    ch04.check_swiglu(_swiglu)
    assert "✓ swiglu: all 5 cases passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x, Wg, Wu, Wd: (F.silu(x @ Wu.T) * (x @ Wg.T)) @ Wd.T,
         "SiLU is applied to the wrong branch"),
        (lambda x, Wg, Wu, Wd: (torch.sigmoid(x @ Wg.T) * (x @ Wu.T)) @ Wd.T,
         r"this uses sigmoid\(gate\)"),
        (lambda x, Wg, Wu, Wd: (F.gelu(x @ Wg.T) * (x @ Wu.T)) @ Wd.T, "GEGLU"),
        (lambda x, Wg, Wu, Wd: F.silu(x @ Wg.T) @ Wd.T, "the up branch is missing"),
        (lambda x, Wg, Wu, Wd: F.silu((x @ Wg.T) * (x @ Wu.T)) @ Wd.T,
         r"not silu\(gate \* up\)"),
        (lambda x, Wg, Wu, Wd: (F.silu(x @ Wg.T) + x @ Wu.T) @ Wd.T, "it is not added"),
        (lambda x, Wg, Wu, Wd: (F.silu(x @ Wg) * (x @ Wu)) @ Wd,
         r"nn\.Linear's layout.*missing it in x @ W_gate\.T and x @ W_up\.T and h @ W_down\.T"),
        (lambda x, Wg, Wu, Wd: (F.silu(x @ Wg.T) * (x @ Wu.T)) @ Wd,
         r"you are missing it in h @ W_down\.T$"),
        (lambda x, Wg, Wu, Wd: (F.silu(x @ Wg.T) * (x @ Wu)) @ Wd.T,
         r"you are missing it in x @ W_up\.T$"),
        (lambda x, Wg, Wu, Wd: F.silu(x @ Wg.T) * (x @ Wu.T), "down-projection is missing"),
        (lambda x, Wg, Wu, Wd: _swiglu(x, Wg, Wu, Wd).sum(-1), "expected shape"),
    ],
)
def test_swiglu_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        ch04.check_swiglu(wrong)


# ----------------------------------------------------------------------------- exercise 5


def test_swiglu_hidden_size_accepts_llama_rule(capsys):
    ch04.check_swiglu_hidden_size(lambda d, m: m * math.ceil(int(8 * d / 3) / m))
    # Llama's reference code writes the round-up with integer division
    ch04.check_swiglu_hidden_size(lambda d, m: m * ((8 * d // 3 + m - 1) // m))
    assert capsys.readouterr().out.count("✓ swiglu_hidden_size: all 9 cases passed") == 2


def test_swiglu_hidden_size_matches_lmkit_llama_config_and_llama_7b():
    from lmkit.model import ModelConfig

    assert ch04._hidden(4096, 256) == 11008  # Llama (1 and 2) 7B's intermediate_size
    for d in (768, 1024, 2048):
        assert ch04._hidden(d, 256) == ModelConfig.llama(d_model=d, n_heads=8).d_ff


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda d, m: m * math.floor(int(8 * d / 3) / m), r"round \*up\*"),
        (lambda d, m: int(8 * d / 3), "right before rounding"),
        (lambda d, m: m * (int(8 * d / 3) // m + 1), "already is a multiple"),
        (lambda d, m: m * math.ceil(int(2 * d / 3) / m), "not of d_model"),
        (lambda d, m: m * math.ceil(int(3 * 4 * d / 2) / m), r"must be \*smaller\*"),
        (lambda d, m: m * math.ceil(8 * d / 3 / m), "drop the fraction first"),
        (lambda d, m: m * math.ceil(8 * d / 3 / m) * 1.0, "should return an int"),
        (lambda d, m: 4 * d, r"must be \*smaller\*"),
    ],
)
def test_swiglu_hidden_size_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        ch04.check_swiglu_hidden_size(wrong)


# ----------------------------------------------------------------------------- exercise 6


def _backward(x, W_up, W_down, grad_out, *, mask=True, pre=False):
    h = x @ W_up.T
    a = torch.relu(h)
    grad_W_down = grad_out.T @ (h if pre else a)
    grad_h = (grad_out @ W_down) * ((h > 0) if mask else 1)
    return grad_h @ W_up, grad_h.T @ x, grad_W_down


def test_ffn_backward_accepts_the_reference_and_autograd(capsys):
    ch04.check_ffn_backward(_backward)
    ch04.check_ffn_backward(ch04._reference_backward)
    assert capsys.readouterr().out.count("✓ ffn_backward: all 4 cases passed") == 2


def test_ffn_backward_cases_include_a_dead_unit():
    x, W_up, W_down, grad_out = ch04._backward_case(9, 4, 12, 3, dead=True)
    _, grad_W_up, _ = _backward(x, W_up, W_down, grad_out)
    assert (x @ W_up.T)[:, 0].max() < 0 and grad_W_up[0].abs().max() == 0


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda *a: _backward(*a, mask=False), "must pass through ReLU's derivative"),
        (lambda *a: _backward(*a, pre=True), "not the pre-activations h"),
        (lambda *a: tuple(g.T if g.dim() == 2 and i > 0 else g
                          for i, g in enumerate(_backward(*a))),
         r"grad_W_down should have the shape of W_down, \(4, 8\), got \(8, 4\)"),
        (lambda *a: _backward(*a)[1:], r"should return a tuple \(grad_x, grad_W_up"),
        (lambda x, Wu, Wd, go: (_backward(x, Wu, Wd, go)[0] * 2, *_backward(x, Wu, Wd, go)[1:]),
         "grad_x on .* wrong values"),
    ],
)
def test_ffn_backward_rejects_typical_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        ch04.check_ffn_backward(wrong)


def test_ffn_backward_explains_a_shape_error():
    def forgot_relu_path(x, W_up, W_down, grad_out):
        grad_x, grad_W_up, grad_W_down = _backward(x, W_up, W_down, grad_out)
        return grad_out @ W_up, grad_W_up, grad_W_down  # skips W_down: (N, C) @ (d_ff, C)

    with pytest.raises(AssertionError, match=r"(?s)raised RuntimeError.*shapes \(5, 4\), "
                                             r"\(8, 4\).*inner sizes to match"):
        ch04.check_ffn_backward(forgot_relu_path)


def test_ffn_backward_transposed_weight_gradient_on_square_case():
    def transposed_down(x, W_up, W_down, grad_out):
        grad_x, grad_W_up, grad_W_down = _backward(x, W_up, W_down, grad_out)
        return grad_x, grad_W_up, grad_W_down.T if W_down.shape[0] == W_down.shape[1] else \
            grad_W_down

    with pytest.raises(AssertionError, match="you have its transpose"):
        ch04.check_ffn_backward(transposed_down)
