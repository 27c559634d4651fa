import pytest
import torch
import torch.nn.functional as F

from lmkit.ffn import ACTIVATIONS, FeedForward, gelu, gelu_tanh, get_activation, relu, silu

X = torch.linspace(-8, 8, 1001)


def test_gelu_exact_matches_torch():
    torch.testing.assert_close(gelu(X), F.gelu(X))


def test_gelu_tanh_matches_torch_tanh_approximation():
    torch.testing.assert_close(gelu_tanh(X), F.gelu(X, approximate="tanh"))


def test_relu_and_silu_match_torch():
    torch.testing.assert_close(relu(X), F.relu(X))
    torch.testing.assert_close(silu(X), F.silu(X))


def test_get_activation_lists_the_choices():
    assert get_activation("gelu", fast=False) is gelu and set(ACTIVATIONS) >= {"gelu", "relu", "swiglu"}
    with pytest.raises(ValueError, match=r"unknown activation 'tanh'; choose one of \[.*'gelu'"):
        get_activation("tanh")
    with pytest.raises(ValueError, match="unknown activation"):
        FeedForward(8, 32, activation="Gelu")


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu"])
def test_feed_forward_is_down_act_up(activation):
    ffn = FeedForward(8, 32, activation=activation)
    x = torch.randn(2, 3, 8)
    expected = ffn.down_proj(ACTIVATIONS[activation](x @ ffn.up_proj.weight.T + ffn.up_proj.bias))
    torch.testing.assert_close(ffn(x), expected)
    assert {n for n, _ in ffn.named_parameters()} == {
        "up_proj.weight", "up_proj.bias", "down_proj.weight", "down_proj.bias"
    }


def test_swiglu_shape_and_formula():
    ffn = FeedForward(8, 20, activation="swiglu", bias=False)
    x = torch.randn(2, 5, 8)
    gate, up = x @ ffn.gate_proj.weight.T, x @ ffn.up_proj.weight.T  # (B, T, d_ff)
    expected = (F.silu(gate) * up) @ ffn.down_proj.weight.T
    out = ffn(x)
    assert out.shape == (2, 5, 8)
    torch.testing.assert_close(out, expected)
    assert {n for n, _ in ffn.named_parameters()} == {
        "gate_proj.weight", "up_proj.weight", "down_proj.weight"
    }


@pytest.mark.parametrize("name", ["relu", "gelu", "gelu_tanh", "silu", "swiglu"])
def test_fused_activations_equal_the_written_out_ones(name):
    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(get_activation(name)(x), get_activation(name, fast=False)(x))
