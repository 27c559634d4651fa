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


# Independent references: PyTorch's functions and the textbook formulas, not lmkit's table.
TORCH_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}
FORMULAS = {
    "gelu": lambda x: x * torch.distributions.Normal(0.0, 1.0).cdf(x),
    "gelu_tanh": lambda x: 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5
                                                     * (x + 0.044715 * x**3))),
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "silu": lambda x: x / (1 + torch.exp(-x)),
}


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu"])
def test_feed_forward_is_down_act_up(activation, fast):
    ffn = FeedForward(8, 32, activation=activation, fast=fast)
    x = torch.randn(2, 3, 8)
    hidden = x @ ffn.up_proj.weight.T + ffn.up_proj.bias  # (B, T, d_ff)
    expected = TORCH_ACTIVATIONS[activation](hidden) @ ffn.down_proj.weight.T + ffn.down_proj.bias
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


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("name", ["relu", "gelu", "gelu_tanh", "silu"])
def test_both_kernel_paths_match_torch_and_the_formula(name, fast):
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    got = get_activation(name, fast=fast)(x)
    torch.testing.assert_close(got, TORCH_ACTIVATIONS[name](x))
    torch.testing.assert_close(got, FORMULAS[name](x))


@pytest.mark.parametrize("fast", [True, False])
def test_swiglu_gate_is_silu_on_both_paths(fast):
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    torch.testing.assert_close(get_activation("swiglu", fast=fast)(x), FORMULAS["silu"](x))


@pytest.mark.parametrize("fast", ["no", 0, None])
def test_fast_must_be_a_bool(fast):
    """fast="no" is truthy: it would silently pick PyTorch's kernel."""
    with pytest.raises(TypeError, match=rf"fast must be True or False.*got {fast!r}"):
        FeedForward(8, 32, fast=fast)
    with pytest.raises(TypeError, match=rf"fast must be True or False.*got {fast!r}"):
        get_activation("gelu", fast=fast)
