import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.attention import KVCache, MultiHeadAttention, causal_mask, scaled_dot_product_attention

torch.manual_seed(0)


def qkv(B=2, H=3, Tq=5, Tk=5, D=8):
    return torch.randn(B, H, Tq, D), torch.randn(B, H, Tk, D), torch.randn(B, H, Tk, D)


# ----------------------------------------------------------------------- functional


def test_explicit_attention_matches_torch_sdpa_without_mask():
    q, k, v = qkv(Tq=4, Tk=6)
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v)
    )


def test_explicit_attention_matches_torch_sdpa_causal():
    q, k, v = qkv(Tq=7, Tk=7)
    ours = scaled_dot_product_attention(q, k, v, mask=causal_mask(7))
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_explicit_attention_matches_torch_sdpa_with_boolean_mask():
    q, k, v = qkv(B=2, Tq=4, Tk=6)
    mask = torch.rand(2, 1, 4, 6) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    ours = scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 3), H=st.integers(1, 4), Tq=st.integers(1, 9), extra=st.integers(0, 5),
    D=st.integers(1, 16), window=st.one_of(st.none(), st.integers(1, 6)),
    scale=st.floats(0.01, 30.0),
)
def test_softmax_rows_sum_to_one_and_respect_mask(B, H, Tq, extra, D, window, scale):
    q, k, v = qkv(B, H, Tq, Tq + extra, D)
    mask = causal_mask(Tq, Tq + extra, window=window)
    out, w = scaled_dot_product_attention(q * scale, k, v, mask=mask, return_weights=True)
    assert out.shape == (B, H, Tq, D) and w.shape == (B, H, Tq, Tq + extra)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, Tq))
    assert (w[..., ~mask] == 0).all()


def test_causal_mask_with_fewer_queries_than_keys_and_window():
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 5), expected)  # queries are positions 3 and 4
    windowed = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 5, window=2), windowed)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        causal_mask(5, 3)


def test_wrong_mask_shape_and_dtype_are_rejected():
    q, k, v = qkv(B=2, H=3, Tq=4, Tk=6)
    with pytest.raises(ValueError, match=r"mask of shape \(4, 4\) does not broadcast"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be boolean"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(4, 6))
    attn = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match=r"broadcast to \(B, H, Tq, Tk\) = \(2, 4, 5, 5\)"):
        attn(torch.randn(2, 5, 16), mask=torch.ones(3, 1, 1, 5, dtype=torch.bool))


# ----------------------------------------------------------------------- module


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"n_kv_heads": 2},
        {"n_kv_heads": 1, "rope_theta": 10000.0},
        {"window": 3},
        {"causal": False},
    ],
)
def test_sdpa_path_matches_explicit_path(kwargs):
    torch.manual_seed(1)
    explicit = MultiHeadAttention(32, 4, fast=False, **kwargs).eval()
    fused = MultiHeadAttention(32, 4, **kwargs).eval()
    assert fused.fast and "fast=True" in repr(fused) and "fast=False" in repr(explicit)
    fused.load_state_dict(explicit.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(fused(x), explicit(x), atol=1e-6, rtol=1e-5)


def test_module_matches_hand_computation():
    attn = MultiHeadAttention(12, 3).eval()
    x = torch.randn(2, 4, 12)
    q = attn.q_proj(x).view(2, 4, 3, 4).transpose(1, 2)
    k = attn.k_proj(x).view(2, 4, 3, 4).transpose(1, 2)
    v = attn.v_proj(x).view(2, 4, 3, 4).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 4, 12)
    out, w = attn(x, return_weights=True)
    torch.testing.assert_close(out, attn.o_proj(y))
    assert w.shape == (2, 3, 4, 4)


@pytest.mark.parametrize("kwargs", [{}, {"n_kv_heads": 2}, {"window": 2}, {"rope_theta": 1e4}])
def test_changing_token_j_changes_no_earlier_output(kwargs):
    attn = MultiHeadAttention(16, 4, **kwargs).eval()
    x = torch.randn(1, 8, 16)
    j = 5
    x2 = x.clone()
    x2[0, j] += 10.0
    y, y2 = attn(x), attn(x2)
    torch.testing.assert_close(y[:, :j], y2[:, :j])
    assert not torch.allclose(y[:, j], y2[:, j])


def test_gqa_equals_mha_with_repeated_key_value_weights():
    d, H, H_kv = 24, 6, 2
    D, group = d // H, H // H_kv
    gqa = MultiHeadAttention(d, H, n_kv_heads=H_kv).eval()
    mha = MultiHeadAttention(d, H).eval()
    state = gqa.state_dict()
    for name in ("k_proj", "v_proj"):  # kv head g serves query heads g*group .. g*group+group-1
        w = state[f"{name}.weight"].view(H_kv, D, d).repeat_interleave(group, dim=0)
        b = state[f"{name}.bias"].view(H_kv, D).repeat_interleave(group, dim=0)
        state[f"{name}.weight"], state[f"{name}.bias"] = w.reshape(d, d), b.reshape(d)
    mha.load_state_dict(state)
    x = torch.randn(2, 7, d)
    torch.testing.assert_close(gqa(x), mha(x))
    assert gqa.k_proj.weight.shape == (H_kv * D, d)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"n_kv_heads": 2},
        {"n_kv_heads": 1},
        {"window": 3},
        {"rope_theta": 10000.0, "n_kv_heads": 2},
        {"rope_theta": 10000.0, "window": 4, "fast": False},
    ],
)
def test_cached_step_by_step_matches_full_forward(kwargs):
    attn = MultiHeadAttention(32, 4, **kwargs).eval()
    x = torch.randn(2, 10, 32)
    full = attn(x)
    cache = KVCache()
    steps = [attn(x[:, :4], cache=cache)]  # the prompt, then one token at a time
    for t in range(4, 10):
        steps.append(attn(x[:, t : t + 1], cache=cache))
    assert cache.length == 10
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_writes_in_place_and_grows_by_chunks(monkeypatch):
    monkeypatch.setattr(KVCache, "CHUNK", 3)  # grow often: every third position
    attn = MultiHeadAttention(32, 4, n_kv_heads=2).eval()
    x = torch.randn(2, 10, 32)
    cache, steps, buffers = KVCache(), [], []
    with torch.no_grad():
        full = attn(x)
        steps.append(attn(x[:, :4], cache=cache))
        for t in range(4, 10):
            steps.append(attn(x[:, t : t + 1], cache=cache))
            buffers.append(cache._k_buf.data_ptr())
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.k.shape == (2, 2, 10, 8) and cache._k_buf.shape[-2] == 12  # 10 rounded up
    # capacity 6 after the prompt, then 9, then 12: three buffers for six steps, not six
    assert len(set(buffers)) == 3


def test_kv_cache_with_gradients_keeps_autograd_correct():
    attn = MultiHeadAttention(16, 2)
    x = torch.randn(1, 5, 16)
    cache = KVCache()
    y = torch.cat([attn(x[:, :3], cache=cache), attn(x[:, 3:4], cache=cache),
                   attn(x[:, 4:], cache=cache)], dim=1)
    (g_cached,) = torch.autograd.grad(y.square().sum(), attn.q_proj.weight)
    (g_full,) = torch.autograd.grad(attn(x).square().sum(), attn.q_proj.weight)
    torch.testing.assert_close(g_cached, g_full, atol=1e-5, rtol=1e-5)


def test_kv_cache_reorder_keeps_selected_rows():
    cache = KVCache()
    k = torch.randn(3, 2, 4, 8)
    cache.update(k, k + 1)
    cache.reorder(torch.tensor([2, 2, 0]))
    torch.testing.assert_close(cache.k, k[[2, 2, 0]])
    torch.testing.assert_close(cache.v, k[[2, 2, 0]] + 1)


def test_clear_errors():
    with pytest.raises(ValueError, match="d_model=30 is not divisible by n_heads=4"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="n_heads=6 is not divisible by n_kv_heads=4"):
        MultiHeadAttention(24, 6, n_kv_heads=4)
    attn = MultiHeadAttention(64, 4)
    expected = r"expected x of shape \(B, T, C\) with C=64, got \(2, 5\)"
    with pytest.raises(ValueError, match=expected):
        attn(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"with C=64, got \(2, 5, 32\)"):
        attn(torch.randn(2, 5, 32))


def test_weight_names_follow_hf():
    names = {n for n, _ in MultiHeadAttention(16, 4, n_kv_heads=2, bias=False).named_parameters()}
    assert names == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}


# ----------------------------------------------------------------------- padding


def test_a_query_with_no_key_gets_zeros_on_both_paths():
    q, k, v = qkv(B=1, H=2, Tq=3, Tk=3)
    mask = torch.tensor([[False, False, False], [True, False, False], [True, True, True]])
    out, weights = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.equal(out[..., 0, :], torch.zeros_like(out[..., 0, :]))
    assert torch.equal(weights[..., 0, :], torch.zeros_like(weights[..., 0, :]))
    torch.testing.assert_close(weights[..., 1:, :].sum(-1), torch.ones(1, 2, 2))


@pytest.mark.parametrize("fast", [False, True])
def test_left_padding_on_a_whole_model_gives_the_unpadded_logits_and_no_nan(fast):
    """Row 0 is left-padded with 3 tokens hidden by the mask. The pad queries see no key at
    all; NaN there must not spread, and with RoPE (relative positions) the real tokens must
    get exactly the logits of the same tokens run without padding."""
    from lmkit.model import ModelConfig, TransformerLM

    torch.manual_seed(0)
    cfg = ModelConfig.llama(vocab_size=50, context_length=16, d_model=32, n_layers=3,
                            n_heads=4, n_kv_heads=2)
    model = TransformerLM(cfg, fast=fast)
    ids = torch.randint(1, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    ids[0, :3] = 0  # padding
    attention_mask = torch.ones(2, 8, dtype=torch.bool)
    attention_mask[0, :3] = False
    logits = model(ids, mask=attention_mask[:, None, None, :])  # (B, T, V)
    assert torch.isfinite(logits).all()
    with torch.no_grad():
        alone = model(ids[:1, 3:])  # the real tokens of row 0, no padding, no mask
        full = model(ids[1:])
    torch.testing.assert_close(logits[0, 3:], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1], full[0], atol=1e-5, rtol=1e-5)
    other = TransformerLM(cfg, fast=not fast)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(ids, mask=attention_mask[:, None, None, :]), logits)
    logits[0, 3:].logsumexp(-1).sum().backward()  # gradients stay finite too
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("fast", ["no", 0, 1, None])
def test_fast_must_be_a_bool(fast):
    """fast="no" is truthy: it would silently pick PyTorch's kernel."""
    with pytest.raises(TypeError, match=rf"fast must be True or False.*got {fast!r}"):
        MultiHeadAttention(16, 4, fast=fast)
