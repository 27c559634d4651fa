"""Blockwise attention with an online softmax equals PyTorch's SDPA; the rolling KV cache (ch. 09)."""

import pytest
import torch
import torch.nn.functional as F

from lmkit.attention import RollingKVCache, causal_mask
from lmkit.blockwise import blockwise_attention, merge_softmax_blocks, peak_bytes
from lmkit.model import ModelConfig, TransformerLM


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Tq,Tk,bq,bk", [(100, 100, 32, 48), (37, 300, 16, 64), (1, 50, 8, 8),
                                          (256, 256, 128, 128), (5, 5, 64, 64)])
def test_blockwise_equals_sdpa(causal, Tq, Tk, bq, bk):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, Tq, 16), torch.randn(2, 3, Tk, 16), torch.randn(2, 3, Tk, 16)
    if not causal and Tq != Tk:
        expected = F.scaled_dot_product_attention(q, k, v)
    else:
        mask = causal_mask(Tq, Tk) if causal else None
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = blockwise_attention(q, k, v, causal=causal, block_q=bq, block_k=bk)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_merging_two_blocks_is_the_softmax_of_both():
    torch.manual_seed(1)
    s, v = torch.randn(4, 10) * 5, torch.randn(10, 3)

    def part(s_, v_):
        m = s_.amax(-1, keepdim=True)
        p = torch.exp(s_ - m)
        return m, p.sum(-1, keepdim=True), p @ v_

    m, l, o = merge_softmax_blocks(*part(s[:, :6], v[:6]), *part(s[:, 6:], v[6:]))  # noqa: E741
    torch.testing.assert_close(o / l, torch.softmax(s, -1) @ v)
    torch.testing.assert_close(m, s.amax(-1, keepdim=True))


def test_blockwise_peak_memory_is_a_tile_not_the_score_matrix():
    q = k = v = torch.randn(1, 2, 1024, 32)
    scores = 2 * 1024 * 1024 * 4  # one float32 (H, T, T) score matrix
    explicit = peak_bytes(lambda: torch.softmax(q @ k.transpose(-2, -1), -1) @ v)
    assert explicit >= 2 * scores  # the scores and the weights are alive together
    assert peak_bytes(lambda: blockwise_attention(q, k, v, causal=True)) < scores / 8


def test_rolling_cache_keeps_window_minus_one_positions():
    cache = RollingKVCache(4)
    for t in range(10):
        k = torch.full((1, 1, 1, 2), float(t))
        keys, _ = cache.update(k, k)
        assert keys[0, 0, :, 0].tolist() == [float(i) for i in range(max(0, t - 3), t + 1)]
        assert cache.length == t + 1 and cache.stored == min(3, t + 1)
    keys, _ = cache.update(torch.zeros(1, 1, 5, 2), torch.zeros(1, 1, 5, 2))  # a chunk of 5
    assert keys.shape[-2] == 8 and cache.stored == 3 and cache.length == 15
    with pytest.raises(ValueError, match="window"):
        RollingKVCache(0)


@pytest.mark.parametrize("window", [1, 3, 8])
def test_sliding_window_model_with_rolling_cache_equals_full_recompute(window):
    torch.manual_seed(0)
    c = ModelConfig.llama(vocab_size=40, context_length=64, d_model=32, n_layers=2, n_heads=4,
                          n_kv_heads=2, window=window)
    model = TransformerLM(c).eval()
    ids = torch.randint(0, 40, (2, 30))
    with torch.no_grad():
        full = model(ids)  # the window mask over the whole sequence
        cache = model.new_cache()
        steps = [model(ids[:, :5], cache=cache)]  # a prompt of 5, then one token at a time
        steps += [model(ids[:, t : t + 1], cache=cache) for t in range(5, 30)]
    assert all(layer.stored <= window - 1 for layer in cache)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # the window mask is what full attention would be if every older key were hidden
    unwindowed = TransformerLM(ModelConfig.from_dict({**c.to_dict(), "window": None})).eval()
    unwindowed.load_state_dict(model.state_dict())
    T = 30
    keep = causal_mask(T, window=window)[None, None]  # (1, 1, T, T)
    with torch.no_grad():
        torch.testing.assert_close(unwindowed(ids, mask=keep), full, atol=1e-5, rtol=1e-5)


def test_blockwise_rejects_bad_blocks_and_shapes():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="block sizes must be positive"):
        blockwise_attention(q, q, q, block_q=0)
    with pytest.raises(ValueError, match="same leading"):
        blockwise_attention(q, torch.randn(2, 2, 8, 4), torch.randn(2, 2, 8, 4))
    empty = torch.full((1, 1), float("-inf"))
    m, l, o = merge_softmax_blocks(empty, torch.zeros(1, 1), torch.zeros(1, 3),  # noqa: E741
                                   empty, torch.zeros(1, 1), torch.zeros(1, 3))
    assert not l.isnan().any() and not o.isnan().any()
    with pytest.raises(ValueError, match="window"):
        RollingKVCache(True)


def _softmax_part(s, v):
    """(max, sum, weighted values) of one block of scores, computed the plain way: a row whose
    scores are all -inf (every key masked) gets max -inf and nan sums (exp(-inf - -inf))."""
    m = s.amax(-1, keepdim=True)
    p = torch.exp(s - m)
    return m, p.sum(-1, keepdim=True), p @ v


@pytest.mark.parametrize("masked", ["first", "second", "rows"])
def test_merging_a_fully_masked_block_changes_nothing(masked):
    """A block whose maxima are -inf (every key masked) contributes nothing, whatever its
    sums hold: the merge equals the softmax over the unmasked keys alone, with no nan."""
    torch.manual_seed(2)
    s, v = torch.randn(4, 10) * 3, torch.randn(10, 3)
    if masked == "first":
        s[:, :4] = float("-inf")
    elif masked == "second":
        s[:, 4:] = float("-inf")
    else:  # rows 0 and 2 see no key of the first block, rows 1 and 3 none of the second
        s[::2, :4] = float("-inf")
        s[1::2, 4:] = float("-inf")
    m, l, o = merge_softmax_blocks(*_softmax_part(s[:, :4], v[:4]),  # noqa: E741
                                   *_softmax_part(s[:, 4:], v[4:]))
    torch.testing.assert_close(o / l, torch.softmax(s, -1) @ v)
    torch.testing.assert_close(m, s.amax(-1, keepdim=True))


@pytest.mark.parametrize("blocks", [dict(block_q=True), dict(block_k=False), dict(block_q=2.0),
                                    dict(block_k=-4)])
def test_block_sizes_must_be_positive_integers_not_bools(blocks):
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="block sizes must be positive integers"):
        blockwise_attention(q, q, q, **blocks)
