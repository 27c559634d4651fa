"""The chapter 04 checkers pass correct answers and reject a catalogue of wrong ones, each with
the hint meant for it (tests/catalogue.py explains the pattern)."""

import math

import pytest
import torch
import torch.nn.functional as F
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected, assert_stub_raises

from lmkit.checks import ch04
from lmkit.ffn import FeedForward, gelu_tanh
from lmkit.model import ModelConfig

# ----------------------------------------------------------------- exercise 1: gelu_tanh

S = math.sqrt(2 / math.pi)


def g(c=S, cubic=0.044715, half=0.5, power=3):
    return lambda x: half * x * (1 + torch.tanh(c * (x + cubic * x**power)))


def scaled_in_place(x):
    x *= 0.5
    return x * (1 + torch.tanh(S * (2 * x + 0.044715 * 8 * x**3)))


W1 = [
    Wrong("gelu_tanh", "forbidden", lambda x: F.gelu(x, approximate="tanh")),
    Wrong("gelu_tanh", "forbidden", lambda x: torch.nn.GELU("tanh")(x)),
    Wrong("gelu_tanh", "exact", lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))),
    Wrong("gelu_tanh", "no_cubic", g(cubic=0.0)),
    Wrong("gelu_tanh", "no_sqrt", g(c=1.0)),
    Wrong("gelu_tanh", "constant", g(c=2 / math.pi)),
    Wrong("gelu_tanh", "constant", g(c=math.sqrt(2 * math.pi))),
    Wrong("gelu_tanh", "no_half", g(half=1.0)),
    Wrong("gelu_tanh", "silu", lambda x: x * torch.sigmoid(x)),
    Wrong("gelu_tanh", "brackets", lambda x: 0.5 * x * (1 + torch.tanh(S * x + 0.044715 * x**3))),
    Wrong("gelu_tanh", "square", g(power=2)),
    Wrong("gelu_tanh", "inplace", scaled_in_place),
    Wrong("gelu_tanh", "shape", lambda x: gelu_tanh(x).flatten()),
]

# ----------------------------------------------------------------- exercise 2: ffn_param_count


def count(biases=True, down_bias=None, gate=True, gate_bias=True, bias_anyway=False):
    def f(d, h, bias, gated):
        bias = bias or bias_anyway
        n = d * h + h * d + (d * h if gated and gate else 0)
        if bias and biases:
            n += h + (down_bias if down_bias is not None else d)
            if gated and gate and gate_bias:
                n += h
        return n
    return f


W2 = [
    Wrong("ffn_param_count", "no_bias", count(biases=False)),
    Wrong("ffn_param_count", "bias_anyway", count(bias_anyway=True)),
    Wrong("ffn_param_count", "down_bias", lambda d, h, bias, gated: count(down_bias=h)(d, h, bias,
                                                                                       gated)),
    Wrong("ffn_param_count", "no_gate", count(gate=False)),
    Wrong("ffn_param_count", "gate_bias", count(gate_bias=False)),
    Wrong("ffn_param_count", "one_matrix", lambda d, h, bias, gated: d * h + (h if bias else 0)),
    Wrong("ffn_param_count", "one_matrix", lambda d, h, bias, gated: d * h),
    Wrong("ffn_param_count", "type", lambda d, h, bias, gated: float(count()(d, h, bias, gated))),
    Wrong("ffn_param_count", "type", lambda d, h, bias, gated: count()(d, h, bias, gated) / 1),
]

# ----------------------------------------------------------------- exercise 3: ffn_forward


def ffn_forward(x, W_up, b_up, W_down, b_down):
    return F.gelu(x @ W_up.T + b_up) @ W_down.T + b_down


def bias_in_place(x, W_up, b_up, W_down, b_down):
    h = x @ W_up.T
    h += b_up
    out = F.gelu(h) @ W_down.T
    b_down += out.mean() * 0  # "adds" to the caller's bias
    b_down.add_(1.0)
    return out + b_down - 1.0


W3 = [
    Wrong("ffn_forward", "act_after", lambda x, Wu, bu, Wd, bd: F.gelu((x @ Wu.T + bu) @ Wd.T + bd)),
    Wrong("ffn_forward", "no_act", lambda x, Wu, bu, Wd, bd: (x @ Wu.T + bu) @ Wd.T + bd),
    Wrong("ffn_forward", "tanh", lambda x, Wu, bu, Wd, bd: F.gelu(x @ Wu.T + bu, approximate="tanh")
          @ Wd.T + bd),
    Wrong("ffn_forward", "relu", lambda x, Wu, bu, Wd, bd: F.relu(x @ Wu.T + bu) @ Wd.T + bd),
    Wrong("ffn_forward", "no_b_up", lambda x, Wu, bu, Wd, bd: F.gelu(x @ Wu.T) @ Wd.T + bd),
    Wrong("ffn_forward", "no_b_down", lambda x, Wu, bu, Wd, bd: F.gelu(x @ Wu.T + bu) @ Wd.T),
    Wrong("ffn_forward", "b_up_after", lambda x, Wu, bu, Wd, bd: (F.gelu(x @ Wu.T) + bu) @ Wd.T + bd),
    Wrong("ffn_forward", "transpose", lambda x, Wu, bu, Wd, bd: F.gelu(x @ Wu + bu) @ Wd + bd),
    Wrong("ffn_forward", "transpose", lambda x, Wu, bu, Wd, bd: F.gelu(x @ Wu.T + bu) @ Wd + bd),
    Wrong("ffn_forward", "inplace", bias_in_place),
    Wrong("ffn_forward", "shape", lambda x, Wu, bu, Wd, bd: ffn_forward(x, Wu, bu, Wd, bd).sum(-1)),
]

# ----------------------------------------------------------------- exercise 4: swiglu


def swiglu(x, Wg, Wu, Wd):
    return (F.silu(x @ Wg.T) * (x @ Wu.T)) @ Wd.T


def gate_in_place(x, Wg, Wu, Wd):
    Wg.mul_(1.0).sigmoid_()  # the student meant a local variable
    return swiglu(x, Wg, Wu, Wd)


W4 = [
    Wrong("swiglu", "silu_up", lambda x, Wg, Wu, Wd: (F.silu(x @ Wu.T) * (x @ Wg.T)) @ Wd.T),
    Wrong("swiglu", "sigmoid", lambda x, Wg, Wu, Wd: (torch.sigmoid(x @ Wg.T) * (x @ Wu.T)) @ Wd.T),
    Wrong("swiglu", "gelu", lambda x, Wg, Wu, Wd: (F.gelu(x @ Wg.T) * (x @ Wu.T)) @ Wd.T),
    Wrong("swiglu", "no_up", lambda x, Wg, Wu, Wd: F.silu(x @ Wg.T) @ Wd.T),
    Wrong("swiglu", "silu_product", lambda x, Wg, Wu, Wd: F.silu((x @ Wg.T) * (x @ Wu.T)) @ Wd.T),
    Wrong("swiglu", "added", lambda x, Wg, Wu, Wd: (F.silu(x @ Wg.T) + (x @ Wu.T)) @ Wd.T),
    Wrong("swiglu", "no_down", lambda x, Wg, Wu, Wd: F.silu(x @ Wg.T) * (x @ Wu.T)),
    Wrong("swiglu", "transpose", lambda x, Wg, Wu, Wd: (F.silu(x @ Wg) * (x @ Wu)) @ Wd),
    Wrong("swiglu", "transpose", lambda x, Wg, Wu, Wd: (F.silu(x @ Wg.T) * (x @ Wu.T)) @ Wd),
    Wrong("swiglu", "inplace", gate_in_place),
]

# ----------------------------------------------------------------- exercise 5: swiglu_hidden_size


def hidden(d, m):
    return m * math.ceil(int(8 * d / 3) / m)


W5 = [
    Wrong("swiglu_hidden_size", "round_down", lambda d, m: m * math.floor(int(8 * d / 3) / m)),
    Wrong("swiglu_hidden_size", "round_down", lambda d, m: m * round(int(8 * d / 3) / m)),
    Wrong("swiglu_hidden_size", "not_rounded", lambda d, m: int(8 * d / 3)),
    Wrong("swiglu_hidden_size", "no_floor", lambda d, m: m * math.ceil(8 * d / 3 / m)),
    Wrong("swiglu_hidden_size", "always_up", lambda d, m: m * (int(8 * d / 3) // m + 1)),
    Wrong("swiglu_hidden_size", "of_d_model", lambda d, m: m * math.ceil(int(2 * d / 3) / m)),
    Wrong("swiglu_hidden_size", "too_big", lambda d, m: m * math.ceil(int(3 * 4 * d / 2) / m)),
    Wrong("swiglu_hidden_size", "too_big", lambda d, m: 4 * d),
    Wrong("swiglu_hidden_size", "type", lambda d, m: m * math.ceil(8 * d / 3 / m) * 1.0),
    Wrong("swiglu_hidden_size", "type", lambda d, m: hidden(d, m) / 1),
]

# ----------------------------------------------------------------- exercise 6: ffn_backward


def backward(mask=True, pre=False, average=False, t_down=False, t_up=False, x_t=False):
    def f(x, W_up, W_down, grad_out):
        h = x @ W_up.T
        a = torch.relu(h)
        gWd = (a.T @ grad_out) if t_down else grad_out.T @ (h if pre else a)
        grad_h = (grad_out @ W_down) * ((h > 0) if mask else 1)
        gWu = (x.T @ grad_h) if t_up else grad_h.T @ x
        gx = grad_h @ (W_up.T if x_t else W_up)
        n = x.shape[0] if average else 1
        return gx, gWu / n, gWd / n
    return f


def with_autograd(x, W_up, W_down, grad_out):
    x, W_up, W_down = (t.clone().requires_grad_() for t in (x, W_up, W_down))
    (torch.relu(x @ W_up.T) @ W_down.T).backward(grad_out)
    return x.grad, W_up.grad, W_down.grad


def with_autograd_grad(x, W_up, W_down, grad_out):
    x, W_up, W_down = (t.clone().requires_grad_() for t in (x, W_up, W_down))
    y = torch.relu(x @ W_up.T) @ W_down.T
    return torch.autograd.grad(y, (x, W_up, W_down), grad_out)


def relu_in_place(x, W_up, W_down, grad_out):
    h = x @ W_up.T
    gWd = grad_out.T @ torch.relu(h)
    grad_out.mul_(1.0)
    W_down.relu_()  # meant to apply ReLU to h
    grad_h = (grad_out @ W_down) * (h > 0)
    return grad_h @ W_up, grad_h.T @ x, gWd


W6 = [
    Wrong("ffn_backward", "autograd", with_autograd),
    Wrong("ffn_backward", "autograd", with_autograd_grad),
    Wrong("ffn_backward", "pre_act", backward(pre=True)),
    Wrong("ffn_backward", "no_mask", backward(mask=False)),
    Wrong("ffn_backward", "transposed", backward(t_down=True)),
    Wrong("ffn_backward", "transposed", backward(t_up=True)),
    Wrong("ffn_backward", "grad_x", backward(x_t=True)),
    Wrong("ffn_backward", "average", backward(average=True)),
    Wrong("ffn_backward", "shape", lambda x, Wu, Wd, go: (Wu.T @ (go @ Wd).T, *backward()(
        x, Wu, Wd, go)[1:])),
    Wrong("ffn_backward", "type", lambda x, Wu, Wd, go: list(backward()(x, Wu, Wd, go))[1:]),
    Wrong("ffn_backward", "inplace", relu_in_place),
]

CATALOGUE = W1 + W2 + W3 + W4 + W5 + W6
SOLUTIONS = {"gelu_tanh": gelu_tanh, "ffn_param_count": count(), "ffn_forward": ffn_forward,
             "swiglu": swiglu, "swiglu_hidden_size": hidden, "ffn_backward": backward()}


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_solution_passes_and_stub_raises(exercise, capsys):
    assert_passes(ch04, exercise, SOLUTIONS[exercise], capsys)
    assert_stub_raises(ch04, exercise)


@pytest.mark.parametrize("wrong", CATALOGUE, ids=lambda w: w.id)
def test_wrong_answer_gets_its_hint(wrong):
    assert_rejected(ch04, wrong)


def test_catalogue_complete():
    assert_complete(ch04, CATALOGUE, SOLUTIONS)


def test_references_are_independent():
    assert ch04._count(768, 3072, True, False) == sum(
        p.numel() for p in FeedForward(768, 3072).parameters()) == 4_722_432
    assert ch04._hidden(4096, 256) == 11008  # Llama (1 and 2) 7B's intermediate_size
    for d in (768, 1024, 2048):
        assert ch04._hidden(d, 256) == ModelConfig.llama(d_model=d, n_heads=8).d_ff


def test_alternative_answers_pass(capsys):
    ch04.check_swiglu_hidden_size(lambda d, m: m * ((8 * d // 3 + m - 1) // m))
    ch04.check_gelu_tanh(lambda x: x * torch.sigmoid(2 * S * (x + 0.044715 * x**3)))
    assert capsys.readouterr().out.count("✓") == 2


def test_ffn_backward_cases_include_a_dead_unit():
    x, W_up, _, _ = ch04._backward_case(9, 4, 12, 3, dead=True)
    assert ((x @ W_up.T)[:, 0] <= 0).all()
