import pytest
import torch

from lmkit.norm import LayerNorm, RMSNorm, make_norm


def _randomise(*modules):
    torch.manual_seed(0)
    w, b = torch.randn(16), torch.randn(16)
    for m in modules:
        with torch.no_grad():
            m.weight.copy_(w)
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(b)


def _check_same_with_gradients(ours, ref, x):
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    torch.testing.assert_close(y1, y2)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    return ours, ref


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_torch_with_gradients(bias, fast):
    ours = LayerNorm(16, eps=1e-5, bias=bias, fast=fast)
    ref = torch.nn.LayerNorm(16, eps=1e-5, bias=bias)
    _randomise(ours, ref)
    _check_same_with_gradients(ours, ref, torch.randn(3, 7, 16) * 4 + 2)
    if bias:
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad)


@pytest.mark.parametrize("fast", [False, True])
def test_rmsnorm_matches_torch_with_gradients(fast):
    ours, ref = RMSNorm(16, eps=1e-6, fast=fast), torch.nn.RMSNorm(16, eps=1e-6)
    _randomise(ours, ref)
    _check_same_with_gradients(ours, ref, torch.randn(3, 7, 16) * 4 + 2)


def test_layernorm_output_has_zero_mean_unit_variance():
    y = LayerNorm(64)(torch.randn(5, 64) * 10 + 3)
    torch.testing.assert_close(y.mean(-1), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(5), atol=1e-3, rtol=0)


def test_make_norm():
    assert isinstance(make_norm("layernorm", 8), LayerNorm)
    rms = make_norm("rmsnorm", 8, eps=1e-6)
    assert isinstance(rms, RMSNorm) and rms.eps == 1e-6
    assert make_norm("layernorm", 8, bias=False).bias is None
    with pytest.raises(ValueError, match=r"unknown norm 'batchnorm'; choose one of"):
        make_norm("batchnorm", 8)


@pytest.mark.parametrize("make", [lambda f: LayerNorm(8, fast=f), lambda f: RMSNorm(8, fast=f),
                                  lambda f: make_norm("rmsnorm", 8, fast=f)])
@pytest.mark.parametrize("fast", ["no", 0, None])
def test_fast_must_be_a_bool(make, fast):
    """fast="no" is truthy: it would silently pick PyTorch's kernel."""
    with pytest.raises(TypeError, match=rf"fast must be True or False.*got {fast!r}"):
        make(fast)
