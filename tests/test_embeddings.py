import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
from transformers.models.llama.modeling_llama import rotate_half as hf_rotate_half

from lmkit.embeddings import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    apply_rope,
    rope_frequencies,
    rotate_half,
    sinusoidal_encoding,
)


def test_token_embedding_is_one_hot_times_matrix():
    emb = TokenEmbedding(11, 8)
    ids = torch.tensor([[0, 3, 10], [5, 5, 1]])
    one_hot = torch.nn.functional.one_hot(ids, 11).float()  # (B, T, V)
    torch.testing.assert_close(emb(ids), one_hot @ emb.weight)
    assert [n for n, _ in emb.named_parameters()] == ["weight"]


@pytest.mark.parametrize("bad", [11, 50, -1])
def test_token_embedding_rejects_out_of_range_ids(bad):
    emb = TokenEmbedding(11, 8)
    with pytest.raises(ValueError, match=rf"token id {bad} is out of range for vocab_size 11"):
        emb(torch.tensor([[1, bad, 2]]))


def test_learned_positions_start_offset():
    pos = LearnedPositionalEmbedding(16, 4)
    torch.testing.assert_close(pos(3, start=5), pos.weight[5:8])
    with pytest.raises(ValueError, match="do not fit in the context window of 16"):
        pos(4, start=13)


def numpy_sinusoid(T, d, base=10000.0):
    pe = np.zeros((T, d))
    for t in range(T):
        for i in range(0, d, 2):
            pe[t, i] = np.sin(t / base ** (i / d))
            pe[t, i + 1] = np.cos(t / base ** (i / d))
    return pe


@pytest.mark.parametrize("T,d", [(1, 2), (17, 8), (50, 32)])
def test_sinusoidal_encoding_matches_numpy_formula(T, d):
    ours = sinusoidal_encoding(T, d).double().numpy()
    np.testing.assert_allclose(ours, numpy_sinusoid(T, d), atol=1e-5)


def test_sinusoidal_module_is_a_buffer_and_honours_start():
    pe = SinusoidalPositionalEncoding(32, 16)
    assert list(pe.parameters()) == [] and "pe" not in pe.state_dict()
    torch.testing.assert_close(pe(4, start=7), sinusoidal_encoding(32, 16)[7:11])
    with pytest.raises(ValueError, match="even d_model"):
        sinusoidal_encoding(4, 7)


def hf_cos_sin(head_dim, positions, theta):
    """cos/sin as HF's LlamaRotaryEmbedding computes them, from its own formula."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = positions[..., None].float() * inv_freq  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def test_rotate_half_matches_hf():
    x = torch.randn(2, 3, 5, 8)
    torch.testing.assert_close(rotate_half(x), hf_rotate_half(x))


@pytest.mark.parametrize("start", [0, 7])
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_apply_rope_matches_hf_apply_rotary_pos_emb(start, theta):
    B, H, T, D = 2, 3, 6, 16
    q, k = torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    positions = torch.arange(start, start + T)[None].expand(B, T)  # (B, T)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, *hf_cos_sin(D, positions, theta))
    cos, sin = rope_frequencies(D, 32, theta)
    torch.testing.assert_close(apply_rope(q, cos, sin, start), hf_q)
    torch.testing.assert_close(apply_rope(k, cos, sin, positions=positions), hf_k)
    torch.testing.assert_close(RotaryEmbedding(D, 32, theta)(q, start), hf_q)


def test_rope_scores_depend_only_on_relative_position():
    D = 8
    cos, sin = rope_frequencies(D, 64)
    q, k = torch.randn(1, 1, 1, D), torch.randn(1, 1, 1, D)
    scores = [
        (apply_rope(q, cos, sin, m) * apply_rope(k, cos, sin, n)).sum()
        for m, n in [(5, 2), (13, 10), (40, 37)]
    ]
    torch.testing.assert_close(scores[0], scores[1])
    torch.testing.assert_close(scores[0], scores[2])


def test_rope_errors():
    with pytest.raises(ValueError, match="even head_dim, got 5"):
        rope_frequencies(5, 8)
    cos, sin = rope_frequencies(4, 8)
    with pytest.raises(ValueError, match="outside the RoPE table of 8 positions"):
        apply_rope(torch.randn(1, 1, 3, 4), cos, sin, start=6)
