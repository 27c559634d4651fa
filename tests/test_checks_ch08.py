"""The chapter 08 checkers pass correct answers and reject a catalogue of wrong ones, each with
the hint meant for it (tests/catalogue.py explains the pattern)."""

import math

import pytest
import torch
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected, assert_stub_raises

from lmkit.checks import ch08
from lmkit.generation import top_k_filter, top_p_filter

INF = float("-inf")

# ----------------------------------------------------------------- exercise 1: temperature


def temperature_softmax(logits, T):
    return torch.softmax(logits / T, dim=-1)


def naive(logits, T):  # exp without subtracting the max overflows
    e = torch.exp(logits / T)
    return e / e.sum(-1, keepdim=True)


def global_max(logits, T):  # the batch's maximum, not each row's
    x = logits / T
    e = (x - x.max()).exp()
    return e / e.sum(-1, keepdim=True)


def inf_times_zero(logits, T):  # "masks" with a multiplication: -inf * 0 is NaN
    x = logits / T
    finite = torch.isfinite(x)
    x = torch.where(finite, x, torch.zeros_like(x)) + (~finite) * x * 0
    return torch.softmax(x, -1)


def divide_in_place(logits, T):
    logits /= T
    return torch.softmax(logits, -1)


W1 = [
    Wrong("temperature_softmax", "overflow", naive),
    Wrong("temperature_softmax", "global_max", global_max),
    Wrong("temperature_softmax", "dim", lambda lg, T: torch.softmax(lg / T, dim=0)),
    Wrong("temperature_softmax", "multiply", lambda lg, T: torch.softmax(lg * T, dim=-1)),
    Wrong("temperature_softmax", "after", lambda lg, T: torch.softmax(lg, dim=-1) / T),
    Wrong("temperature_softmax", "after", lambda lg, T: torch.softmax(torch.softmax(lg, -1) / T,
                                                                      -1)),
    Wrong("temperature_softmax", "inf", inf_times_zero),
    Wrong("temperature_softmax", "inplace", divide_in_place),
    Wrong("temperature_softmax", "shape", lambda lg, T: torch.softmax(lg / T, -1).flatten()),
]

# ----------------------------------------------------------------- exercise 2: top_k_mask


def kth(logits, k):
    return torch.topk(logits, k).values[..., -1:]


def exactly_k(logits, k):  # scatter of topk indices: drops ties at the boundary
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep.scatter_(-1, torch.topk(logits, k).indices, True)
    return logits.masked_fill(~keep, INF)


def global_kth(logits, k):  # one threshold for the whole batch
    t = torch.topk(logits.flatten(), k).values[-1]
    return logits.masked_fill(logits < t, INF)


def k_plus_one(logits, k):  # sorts, then takes the value at index k (the (k+1)-th)
    s = torch.sort(logits, descending=True).values
    t = s[..., min(k, logits.shape[-1] - 1):][..., :1]
    return logits.masked_fill(logits < t, INF) if k < logits.shape[-1] else logits.clone()


def fill_in_place(logits, k):
    logits.masked_fill_(logits < kth(logits, k), INF)
    return logits


W2 = [
    Wrong("top_k_mask", "fill", lambda lg, k: lg.masked_fill(lg < kth(lg, k), 0.0)),
    Wrong("top_k_mask", "fill", lambda lg, k: lg.masked_fill(lg < kth(lg, k), -1e9)),
    Wrong("top_k_mask", "kept", lambda lg, k: torch.softmax(lg, -1).masked_fill(lg < kth(lg, k),
                                                                                INF)),
    Wrong("top_k_mask", "ties", exactly_k),
    Wrong("top_k_mask", "per_row", global_kth),
    Wrong("top_k_mask", "k_plus_one", k_plus_one),
    Wrong("top_k_mask", "strict", lambda lg, k: lg.masked_fill(lg <= kth(lg, k), INF)),
    Wrong("top_k_mask", "inplace", fill_in_place),
    Wrong("top_k_mask", "shape", lambda lg, k: top_k_filter(lg, k).flatten()),
]

# ----------------------------------------------------------------- exercise 3: top_p_mask


def nucleus(inclusive=False, scatter=True, dim=-1, fill=INF, probs=False):
    def f(logits, p):
        pr = torch.softmax(logits, dim)
        sp, order = torch.sort(pr, descending=True, dim=dim)
        before = torch.cumsum(sp, dim) - (0 if inclusive else sp)
        remove_sorted = before > p if inclusive else before >= p
        if inclusive:
            remove_sorted[..., 0] = False
        remove = remove_sorted.scatter(dim, order, remove_sorted) if scatter else remove_sorted
        return (pr if probs else logits).masked_fill(remove, fill)
    return f


def keeps_extra(logits, p):  # removes only tokens whose preceding mass exceeds p
    pr = torch.softmax(logits, -1)
    sp, order = torch.sort(pr, descending=True)
    remove_sorted = (torch.cumsum(sp, -1) - sp) > p + 1e-9
    remove_sorted[..., :2] = False
    return logits.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), INF)


def masks_in_place(logits, p):
    remove = top_p_filter(logits, p).isneginf()
    logits[remove] = INF
    return logits


W3 = [
    Wrong("top_p_mask", "unsorted", nucleus(scatter=False)),
    Wrong("top_p_mask", "reach", nucleus(inclusive=True)),
    Wrong("top_p_mask", "too_many", keeps_extra),
    Wrong("top_p_mask", "per_row", nucleus(dim=0)),
    Wrong("top_p_mask", "fill", nucleus(fill=0.0)),
    Wrong("top_p_mask", "fill", nucleus(fill=-1e9)),
    Wrong("top_p_mask", "kept", nucleus(probs=True)),
    Wrong("top_p_mask", "inplace", masks_in_place),
    Wrong("top_p_mask", "shape", lambda lg, p: top_p_filter(lg, p)[..., :-1]),
]

# ----------------------------------------------------------------- exercise 4: cached step


def right_step(q, k_new, v_new, k_cache, v_cache):
    k_cache = torch.cat([k_cache, k_new], dim=2)
    v_cache = torch.cat([v_cache, v_new], dim=2)
    w = torch.softmax(q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v_cache, k_cache, v_cache


def attend_before_append(q, k_new, v_new, k_cache, v_cache):
    if k_cache.shape[2] == 0:  # nothing cached yet: attend to the new token alone
        out = v_new
    else:
        w = torch.softmax(q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        out = w @ v_cache
    return out, torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)


def copied_mask(q, k_new, v_new, k_cache, v_cache):
    k_cache, v_cache = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
    s = q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, 1, t + 1)
    mask = torch.tril(torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool))  # as in training
    return torch.softmax(s.masked_fill(~mask, INF), -1) @ v_cache, k_cache, v_cache


def general(scale=True, dim=-1, cat_dim=2, prepend=False, keep_cache=False):
    def f(q, k_new, v_new, k_cache, v_cache):
        if keep_cache:
            kc, vc = k_new, v_new
        elif prepend:
            kc, vc = torch.cat([k_new, k_cache], cat_dim), torch.cat([v_new, v_cache], cat_dim)
        else:
            kc, vc = torch.cat([k_cache, k_new], cat_dim), torch.cat([v_cache, v_new], cat_dim)
        s = q @ kc.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1)
        return torch.softmax(s, dim) @ vc, kc, vc
    return f


def scale_q_in_place(q, k_new, v_new, k_cache, v_cache):
    q /= math.sqrt(q.shape[-1])
    k_cache, v_cache = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
    return torch.softmax(q @ k_cache.transpose(-2, -1), -1) @ v_cache, k_cache, v_cache


W4 = [
    Wrong("cached_attention_step", "append", general(cat_dim=-1)),
    Wrong("cached_attention_step", "append", general(keep_cache=True)),
    Wrong("cached_attention_step", "prepend", general(prepend=True)),
    Wrong("cached_attention_step", "no_self", attend_before_append),
    Wrong("cached_attention_step", "copied_mask", copied_mask),
    Wrong("cached_attention_step", "no_scale", general(scale=False)),
    Wrong("cached_attention_step", "dim", general(dim=-2)),
    Wrong("cached_attention_step", "type", lambda *a: right_step(*a)[0]),
    Wrong("cached_attention_step", "inplace", scale_q_in_place),
]

# ----------------------------------------------------------------- exercise 5: beam step


def right_beam_step(beam_scores, logprobs, K):
    V = logprobs.shape[1]
    scores, idx = torch.topk((beam_scores[:, None] + logprobs).flatten(), K)
    return scores, idx // V, idx % V


def per_beam(beam_scores, logprobs, K):
    lp, tok = logprobs.max(-1)
    return beam_scores + lp, torch.arange(K), tok


def no_beam_score(beam_scores, logprobs, K):
    V = logprobs.shape[1]
    scores, idx = torch.topk(logprobs.flatten(), K)
    return scores, idx // V, idx % V


def flat(split):
    def f(beam_scores, logprobs, K):
        V = logprobs.shape[1]
        scores, idx = torch.topk((beam_scores[:, None] + logprobs).flatten(), K)
        return (scores, *split(idx, K, V))
    return f


def add_in_place(beam_scores, logprobs, K):
    logprobs += beam_scores[:, None]
    V = logprobs.shape[1]
    scores, idx = torch.topk(logprobs.flatten(), K)
    return scores, idx // V, idx % V


W5 = [
    Wrong("beam_step", "per_beam", per_beam),
    Wrong("beam_step", "raw", no_beam_score),
    Wrong("beam_step", "index_K", flat(lambda i, K, V: (i // K, i % K))),
    Wrong("beam_step", "index_mixed", flat(lambda i, K, V: (i % K, i // K))),
    Wrong("beam_step", "index_mixed", flat(lambda i, K, V: (i % V, i // V))),
    Wrong("beam_step", "scores", lambda bs, lp, K: (lambda s, b, t: (lp[b, t], b, t))(
        *right_beam_step(bs, lp, K))),
    Wrong("beam_step", "scores", lambda bs, lp, K: (lambda s, b, t: (bs[b] * lp[b, t], b, t))(
        *right_beam_step(bs, lp, K))),
    Wrong("beam_step", "type", lambda bs, lp, K: list(right_beam_step(bs, lp, K))),
    Wrong("beam_step", "shape", lambda bs, lp, K: tuple(t[None] for t in right_beam_step(bs, lp,
                                                                                          K))),
    Wrong("beam_step", "inplace", add_in_place),
]

CATALOGUE = W1 + W2 + W3 + W4 + W5
SOLUTIONS = {"temperature_softmax": temperature_softmax, "top_k_mask": top_k_filter,
             "top_p_mask": top_p_filter, "cached_attention_step": right_step,
             "beam_step": right_beam_step}


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_solution_passes_and_stub_raises(exercise, capsys):
    assert_passes(ch08, exercise, SOLUTIONS[exercise], capsys)
    assert_stub_raises(ch08, exercise)


@pytest.mark.parametrize("wrong", CATALOGUE, ids=lambda w: w.id)
def test_wrong_answer_gets_its_hint(wrong):
    assert_rejected(ch08, wrong)


def test_catalogue_complete():
    assert_complete(ch08, CATALOGUE, SOLUTIONS)


def test_alternatives_pass(capsys):
    ch08.check_beam_step(lambda bs, lp, K: tuple(t.flip(0) for t in right_beam_step(bs, lp, K)))
    ch08.check_top_p_mask(nucleus())
    assert capsys.readouterr().out.count("✓") == 2


REVIEW = [
    Wrong("temperature_softmax", "dtype", lambda lg, T: torch.softmax(lg.double() / T, -1)),
    Wrong("beam_step", "dtype", lambda bs, lp, K: (lambda s, b, t: (s, b.float(), t.float()))(
        *right_beam_step(bs, lp, K))),
]
CATALOGUE += REVIEW


@pytest.mark.parametrize("wrong", REVIEW, ids=lambda w: w.id)
def test_review_wrong_answers(wrong):
    assert_rejected(ch08, wrong)
