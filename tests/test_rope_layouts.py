"""RoPE in both layouts real checkpoints use, and the weight permutation between them (ch. 09)."""

import math

import pytest
import torch

from lmkit.embeddings import (
    apply_rope,
    apply_rope_interleaved,
    convert_rope_layout,
    rope_frequencies,
    rope_permutation,
)
from lmkit.model import ModelConfig, TransformerLM


def test_interleaved_rotates_adjacent_pairs_by_the_roformer_angles():
    """Reference: complex multiplication, as in Meta's Llama code (x[2i] + i x[2i+1])."""
    torch.manual_seed(0)
    B, H, T, D, theta = 2, 3, 7, 8, 500.0
    x = torch.randn(B, H, T, D)
    cos, sin = rope_frequencies(D, 16, theta)
    got = apply_rope_interleaved(x, cos, sin, start=4)
    freqs = theta ** (-torch.arange(0, D, 2).double() / D)  # (D/2,)
    angles = torch.outer(torch.arange(4, 4 + T).double(), freqs)  # (T, D/2)
    z = torch.view_as_complex(x.double().reshape(B, H, T, D // 2, 2).contiguous())
    expected = torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).flatten(-2)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_half_layout_pairs_i_with_i_plus_half():
    x = torch.zeros(1, 1, 2, 4)
    x[..., 0] = 1.0  # first number of pair 0 in the half layout
    cos, sin = rope_frequencies(4, 4, 10000.0)
    y = apply_rope(x, cos, sin)  # position 1 turns pair (0, 2) by 1 radian
    torch.testing.assert_close(y[0, 0, 1], torch.tensor([math.cos(1), 0, math.sin(1), 0]))


def test_permutation_moves_pairs():
    assert rope_permutation(8, "half").tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert rope_permutation(8, "interleaved").tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    w = torch.randn(3 * 8, 5)
    there = convert_rope_layout(w, 3, to="interleaved")
    assert torch.equal(convert_rope_layout(there, 3, to="half"), w)
    with pytest.raises(ValueError, match="layout 'sideways'"):
        rope_permutation(8, "sideways")


def test_llama_cpp_permute_is_the_conversion_to_interleaved():
    """llama.cpp's convert script: w.reshape(H, 2, D/2, C).swapaxes(1, 2) (HF -> GGUF)."""
    H, D, C = 3, 8, 5
    w = torch.randn(H * D, C)
    llama_cpp = w.reshape(H, 2, D // 2, C).swapaxes(1, 2).reshape(H * D, C)
    assert torch.equal(convert_rope_layout(w, H, to="interleaved"), llama_cpp)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_same_logits_once_converted(n_kv_heads):
    torch.manual_seed(0)
    half = ModelConfig.llama(vocab_size=50, context_length=32, d_model=32, n_layers=2,
                             n_heads=4, n_kv_heads=n_kv_heads)
    inter = ModelConfig.from_dict({**half.to_dict(), "rope_layout": "interleaved"})
    a, b = TransformerLM(half).double().eval(), TransformerLM(inter).double().eval()
    with torch.no_grad():  # sharp attention, so that positions matter to the logits
        for p in a.parameters():
            p.mul_(10)
    state = a.state_dict()
    for name, w in state.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = 4 if "q_proj" in name else n_kv_heads
            state[name] = convert_rope_layout(w, heads, to="interleaved")
    b.load_state_dict(state)
    ids = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(b(ids), a(ids), atol=1e-9, rtol=1e-9)
        b.load_state_dict(a.state_dict())  # unconverted: different logits
        assert (b(ids) - a(ids)).abs().max() > 0.1


def test_config_rejects_unknown_layout():
    with pytest.raises(ValueError, match="rope_layout 'x'"):
        ModelConfig.llama(rope_layout="x")
