"""The chapter 08 checkers accept right answers and reject typical mistakes with a useful hint."""

import math

import pytest
import torch

from lmkit.checks import ch08
from lmkit.generation import top_k_filter, top_p_filter


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


@pytest.mark.parametrize(
    "check",
    [ch08.check_temperature_softmax, ch08.check_top_k_mask, ch08.check_top_p_mask,
     ch08.check_cached_attention_step, ch08.check_beam_step],
)
def test_stub_fails(check):
    with pytest.raises(NotImplementedError):
        check(stub)


# ----------------------------------------------------------------------------- 1 temperature


def test_temperature_softmax(capsys):
    ch08.check_temperature_softmax(lambda logits, T: torch.softmax(logits / T, dim=-1))
    assert "✓ temperature_softmax" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="multiplied the logits by T"):
        ch08.check_temperature_softmax(lambda logits, T: torch.softmax(logits * T, dim=-1))

    def naive(logits, T):  # exp without subtracting the max overflows
        e = torch.exp(logits / T)
        return e / e.sum(-1, keepdim=True)

    with pytest.raises(AssertionError, match="subtract each row's max"):
        ch08.check_temperature_softmax(naive)
    with pytest.raises(AssertionError, match="dim=-1"):
        ch08.check_temperature_softmax(lambda logits, T: torch.softmax(logits / T, dim=0))
    with pytest.raises(AssertionError, match="should return a tensor"):
        ch08.check_temperature_softmax(lambda logits, T: (logits / T).tolist())


# ----------------------------------------------------------------------------- 2 top-k


def test_top_k_mask(capsys):
    ch08.check_top_k_mask(top_k_filter)
    assert "✓ top_k_mask" in capsys.readouterr().out

    def at_most(logits, k):  # removes the k-th itself: keeps k - 1
        kth = torch.topk(logits, k).values[..., -1:]
        return logits.masked_fill(logits <= kth, float("-inf"))

    with pytest.raises(AssertionError, match=r"strictly below the k-th largest"):
        ch08.check_top_k_mask(at_most)

    def exactly_k(logits, k):  # scatter of topk indices: drops ties at the boundary
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, torch.topk(logits, k).indices, True)
        return logits.masked_fill(~keep, float("-inf"))

    with pytest.raises(AssertionError, match="ties with it included"):
        ch08.check_top_k_mask(exactly_k)

    def global_kth(logits, k):  # one threshold for the whole batch
        kth = torch.topk(logits.flatten(), k).values[-1]
        return logits.masked_fill(logits < kth, float("-inf"))

    with pytest.raises(AssertionError, match="Each row needs its own"):
        ch08.check_top_k_mask(global_kth)

    def zeros(logits, k):
        return top_k_filter(logits, k).nan_to_num(neginf=0.0)

    with pytest.raises(AssertionError, match="use float\\('-inf'\\)"):
        ch08.check_top_k_mask(zeros)


# ----------------------------------------------------------------------------- 3 top-p


def test_top_p_mask(capsys):
    ch08.check_top_p_mask(top_p_filter)
    assert "✓ top_p_mask" in capsys.readouterr().out

    def cum_at_most_p(logits, p):  # keeps tokens whose cumulative mass <= p: never reaches p
        probs = torch.softmax(logits, -1)
        sorted_probs, order = torch.sort(probs, descending=True)
        remove_sorted = torch.cumsum(sorted_probs, -1) > p
        remove_sorted[..., 0] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        return logits.masked_fill(remove, float("-inf"))

    with pytest.raises(AssertionError, match="must \\*reach\\* p"):
        ch08.check_top_p_mask(cum_at_most_p)

    def sorted_order(logits, p):  # forgets to scatter the mask back to vocabulary order
        probs = torch.softmax(logits, -1)
        sorted_probs, _ = torch.sort(probs, descending=True)
        remove = torch.cumsum(sorted_probs, -1) - sorted_probs >= p
        return logits.masked_fill(remove, float("-inf"))

    with pytest.raises(AssertionError, match="scatter it back to vocabulary order"):
        ch08.check_top_p_mask(sorted_order)

    def probabilities(logits, p):  # returns filtered probabilities instead of logits
        out = torch.softmax(logits, -1)
        return out.masked_fill(top_p_filter(logits, p).isneginf(), float("-inf"))

    with pytest.raises(AssertionError, match="changed the kept logits"):
        ch08.check_top_p_mask(probabilities)


# ----------------------------------------------------------------------------- 4 cached step


def right_step(q, k_new, v_new, k_cache, v_cache):
    k_cache = torch.cat([k_cache, k_new], dim=2)
    v_cache = torch.cat([v_cache, v_new], dim=2)
    w = torch.softmax(q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v_cache, k_cache, v_cache


def test_cached_attention_step(capsys):
    ch08.check_cached_attention_step(right_step)
    assert "✓ cached_attention_step" in capsys.readouterr().out

    def attend_before_append(q, k_new, v_new, k_cache, v_cache):
        if k_cache.shape[2] == 0:  # nothing cached yet: attend to the new token alone
            out = v_new
        else:
            w = torch.softmax(q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
            out = w @ v_cache
        return out, torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)

    with pytest.raises(AssertionError, match="did not attend to itself"):
        ch08.check_cached_attention_step(attend_before_append)

    def replaces_the_cache(q, k_new, v_new, k_cache, v_cache):  # keeps only the new position
        out, _, _ = right_step(q, k_new, v_new, k_cache, v_cache)
        return out, k_new, v_new

    with pytest.raises(AssertionError, match="expected \\(1, 1, 2, 4\\): append the new "
                                             "position along the time dimension"):
        ch08.check_cached_attention_step(replaces_the_cache)

    def unscaled(q, k_new, v_new, k_cache, v_cache):
        k_cache, v_cache = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
        return torch.softmax(q @ k_cache.transpose(-2, -1), -1) @ v_cache, k_cache, v_cache

    with pytest.raises(AssertionError, match="not divided by sqrt"):
        ch08.check_cached_attention_step(unscaled)

    def appends_along_d(q, k_new, v_new, k_cache, v_cache):  # crashes on the empty cache
        k_cache, v_cache = torch.cat([k_cache, k_new], -1), torch.cat([v_cache, v_new], -1)
        return right_step(q, k_new, v_new, k_cache, v_cache)

    with pytest.raises(AssertionError, match="raised RuntimeError(.|\n)*append along the time "
                                             "dimension, dim=2"):
        ch08.check_cached_attention_step(appends_along_d)


# ----------------------------------------------------------------------------- 5 beam step


def right_beam_step(beam_scores, logprobs, K):
    V = logprobs.shape[1]
    scores, idx = torch.topk((beam_scores[:, None] + logprobs).flatten(), K)
    return scores, idx // V, idx % V


def test_beam_step(capsys):
    ch08.check_beam_step(right_beam_step)
    assert "✓ beam_step" in capsys.readouterr().out

    def unsorted(beam_scores, logprobs, K):  # any order of the K winners is fine
        s, b, t = right_beam_step(beam_scores, logprobs, K)
        return s.flip(0), b.flip(0), t.flip(0)

    ch08.check_beam_step(unsorted)

    def per_beam(beam_scores, logprobs, K):
        lp, tok = logprobs.max(-1)
        return beam_scores + lp, torch.arange(K), tok

    with pytest.raises(AssertionError, match="compare all K x V candidates together"):
        ch08.check_beam_step(per_beam)

    def no_beam_score(beam_scores, logprobs, K):
        V = logprobs.shape[1]
        scores, idx = torch.topk(logprobs.flatten(), K)
        return scores, idx // V, idx % V

    with pytest.raises(AssertionError, match="beam's score plus the token's log-prob"):
        ch08.check_beam_step(no_beam_score)

    def swapped(beam_scores, logprobs, K):
        scores, idx = torch.topk((beam_scores[:, None] + logprobs).flatten(), K)
        return scores, idx % K, idx // K

    with pytest.raises(AssertionError, match="indices are mixed up"):
        ch08.check_beam_step(swapped)

    def divides_by_k(beam_scores, logprobs, K):  # the flat index split with K, not V
        scores, idx = torch.topk((beam_scores[:, None] + logprobs).flatten(), K)
        return scores, idx // K, idx % K

    with pytest.raises(AssertionError, match="divide by the vocabulary size, not by K"):
        ch08.check_beam_step(divides_by_k)

    def forgot_old_score_in_output(beam_scores, logprobs, K):
        s, b, t = right_beam_step(beam_scores, logprobs, K)
        return logprobs[b, t], b, t

    with pytest.raises(AssertionError, match="the right candidates, but scores"):
        ch08.check_beam_step(forgot_old_score_in_output)
