"""Checkers for the chapter 08 exercises (decoding)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..attention import scaled_dot_product_attention
from ..generation import top_k_filter, top_p_filter
from .common import call, fail, passed

__all__ = ["check_temperature_softmax", "check_top_k_mask", "check_top_p_mask",
           "check_cached_attention_step", "check_beam_step"]

INF = float("-inf")


def _rand(*shape, seed=0, scale=1.0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _tensor(got, name: str, shape: tuple[int, ...], where: str) -> Tensor:
    """Fail unless `got` is a tensor of `shape`; the shape gets its own hint."""
    if not isinstance(got, Tensor):
        fail(f"{name} {where} should return a tensor, got {type(got).__name__}")
    if tuple(got.shape) != shape:
        fail(f"{name} {where} returned shape {tuple(got.shape)}, expected {shape}: "
             "the output keeps the input's shape (one value per token, every row separately)")
    return got


def _kept(x: Tensor) -> list[int]:
    return (x > INF).nonzero().flatten().tolist()


def check_temperature_softmax(fn) -> None:
    """Exercise 1: fn(logits, temperature) -> softmax(logits / temperature) over the last dim."""
    cases = [
        ("a 5-token vector at T=1", torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5]), 1.0),
        ("a 5-token vector at T=0.5", torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5]), 0.5),
        ("a 5-token vector at T=3", torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5]), 3.0),
        ("a batch (3, 10) at T=0.7", _rand(3, 10, seed=1, scale=3), 0.7),
        ("large logits [1000, 990, 0] at T=0.1", torch.tensor([1000.0, 990.0, 0.0]), 0.1),
        ("logits with -inf (a filtered token) at T=2", torch.tensor([1.0, INF, 0.0]), 2.0),
    ]
    for where, logits, T in cases:
        got = _tensor(call(fn, logits.clone(), T, name="temperature_softmax"),
                      "temperature_softmax", tuple(logits.shape), f"on {where}")
        want = torch.softmax(logits / T, dim=-1)
        if torch.isnan(got).any():
            fail(f"temperature_softmax on {where} gave nan: exp() of a large number overflows; "
                 "subtract each row's max before exponentiating (or use torch.softmax)")
        if not torch.allclose(got.sum(-1), torch.ones(got.shape[:-1]), atol=1e-5):
            fail(f"temperature_softmax on {where}: rows sum to {got.sum(-1).tolist()}, not 1: "
                 "normalise over the last dimension (the vocabulary), dim=-1")
        if not torch.allclose(got, want, atol=1e-5):
            if T != 1.0 and torch.allclose(got, torch.softmax(logits * T, dim=-1), atol=1e-5):
                fail(f"temperature_softmax on {where} multiplied the logits by T: divide by "
                     "it, so that T < 1 sharpens the distribution and T > 1 flattens it")
            fail(f"temperature_softmax on {where}: expected {want.flatten()[:5].tolist()}..., "
                 f"got {got.flatten()[:5].tolist()}...")
    passed("temperature_softmax", len(cases))


def check_top_k_mask(fn) -> None:
    """Exercise 2: fn(logits, k) -> logits with all but the k largest (per row) set to -inf."""
    cases = [
        ("a 6-token vector, k=2", torch.tensor([1.0, 5.0, 3.0, 4.0, 0.0, 2.0]), 2),
        ("a 6-token vector, k=1", torch.tensor([1.0, 5.0, 3.0, 4.0, 0.0, 2.0]), 1),
        ("k equal to the vocabulary size", torch.tensor([0.3, -0.2, 0.1]), 3),
        ("a batch of 2 rows with different scales, k=3",
         torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0], [0.1, 0.5, 0.3, 0.2, 0.4]]), 3),
        ("a tie at the k-th place, k=2", torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0]), 2),
        ("a random batch (4, 50), k=10", _rand(4, 50, seed=2), 10),
    ]
    for where, logits, k in cases:
        got = _tensor(call(fn, logits.clone(), k, name="top_k_mask"), "top_k_mask",
                      tuple(logits.shape), f"on {where}")
        want = top_k_filter(logits, k)
        removed = want == INF
        if removed.any() and (got[removed] == 0).all():
            fail(f"top_k_mask on {where} set removed logits to 0; a logit of 0 still has "
                 "probability exp(0) > 0 after the softmax: use float('-inf')")
        if got.isneginf().any() and not torch.equal(got[~got.isneginf()], logits[~got.isneginf()]):
            fail(f"top_k_mask on {where} changed the kept logits: leave them as they are, "
                 "only set the removed ones to -inf")
        if not torch.equal(got.isneginf(), removed):
            n_got = (~got.isneginf()).sum(-1).tolist()
            n_want = (~removed).sum(-1).tolist()
            if "tie" in where:
                fail(f"top_k_mask on {where}: logits {logits.tolist()} should keep {n_want} "
                     f"tokens, you kept {n_got}. Keep every logit >= the k-th largest value "
                     "(ties with it included, as Hugging Face does); remove only those below")
            if logits.dim() == 2:
                fail(f"top_k_mask on {where}: kept {n_got} tokens per row, expected {n_want}. "
                     "Each row needs its own k-th largest value: topk over dim=-1, "
                     "and keep the last dimension (values[..., -1:]) to compare row by row")
            fail(f"top_k_mask on {where}: kept {n_got} token(s), expected {n_want} "
                 f"(positions {_kept(want)}): remove the logits strictly below the k-th "
                 "largest (logits < kth), not <= it")
        if not torch.equal(got, want):
            fail(f"top_k_mask on {where}: expected {want.tolist()}, got {got.tolist()}")
    passed("top_k_mask", len(cases))


def check_top_p_mask(fn) -> None:
    """Exercise 3: fn(logits, p) -> logits outside the top-p nucleus (per row) set to -inf."""
    base = torch.tensor([0.5, 0.25, 0.125, 0.125]).log()
    shuffled = torch.tensor([0.125, 0.25, 0.125, 0.5]).log()
    cases = [
        ("probs [0.5, 0.25, 0.125, 0.125], p=0.6", base, 0.6),
        ("probs [0.5, 0.25, 0.125, 0.125], p=0.5", base, 0.5),
        ("probs [0.5, 0.25, 0.125, 0.125], p=0.75 (exactly reached)", base, 0.75),
        ("probs [0.125, 0.25, 0.125, 0.5] (not sorted), p=0.7", shuffled, 0.7),
        ("probs [0.5, 0.25, 0.125, 0.125], p=1.0", base, 1.0),
        ("a batch of 2 rows, p=0.6", torch.stack([base, shuffled]), 0.6),
        ("a random batch (3, 40), p=0.9", _rand(3, 40, seed=3, scale=2), 0.9),
    ]
    for where, logits, p in cases:
        got = _tensor(call(fn, logits.clone(), p, name="top_p_mask"), "top_p_mask",
                      tuple(logits.shape), f"on {where}")
        want = top_p_filter(logits, p)
        if not torch.equal(got.isneginf(), want.isneginf()):
            probs = torch.softmax(logits, -1)
            kept_mass = probs[~got.isneginf()].sum().item()
            n_got = (~got.isneginf()).sum(-1).tolist()
            n_want = (~want.isneginf()).sum(-1).tolist()
            if logits.dim() == 1 and n_got == n_want:
                fail(f"top_p_mask on {where}: you kept the right number of tokens ({n_got}) "
                     f"but the wrong ones (positions {_kept(got)}, expected {_kept(want)}): "
                     "the mask is computed in sorted order; scatter it back to vocabulary "
                     "order with the indices torch.sort returned")
            if logits.dim() == 1 and kept_mass < p - 1e-6:
                fail(f"top_p_mask on {where}: the tokens you kept hold {kept_mass:.4f} of the "
                     f"mass, less than p = {p}. The nucleus must *reach* p: keep a token while "
                     "the mass of the tokens before it is below p (the token that crosses p "
                     "stays)")
            if logits.dim() == 1:
                fail(f"top_p_mask on {where}: kept {n_got} token(s) (mass {kept_mass:.4f}), "
                     f"expected the smallest set reaching p: {n_want} token(s) at positions "
                     f"{_kept(want)}. Drop a token only when the tokens before it already "
                     "hold at least p")
            fail(f"top_p_mask on {where}: kept {n_got} tokens per row, expected {n_want}: "
                 "sort, sum and compare along the last dimension, each row on its own")
        if not torch.equal(got[~got.isneginf()], logits[~got.isneginf()]):
            fail(f"top_p_mask on {where} changed the kept logits: return the input logits "
                 "with -inf at the removed tokens, not probabilities")
    passed("top_p_mask", len(cases))


def check_cached_attention_step(fn) -> None:
    """Exercise 4: fn(q, k_new, v_new, k_cache, v_cache) -> (out, k_cache, v_cache).

    Decoding token by token with the student's step must give full causal attention's rows.
    """
    n_cases = 0
    for B, H, T, D, seed in [(1, 1, 5, 4, 0), (2, 3, 7, 8, 1), (1, 2, 1, 16, 2)]:
        q, k, v = _rand(3, B, H, T, D, seed=seed).unbind(0)  # each (B, H, T, D)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        full = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, D)
        k_cache, v_cache = torch.empty(B, H, 0, D), torch.empty(B, H, 0, D)
        for t in range(T):
            where = f"step {t} (B={B}, H={H}, D={D}, cache of {t} positions)"
            s = slice(t, t + 1)
            try:
                res = call(fn, q[:, :, s], k[:, :, s], v[:, :, s], k_cache, v_cache,
                           name="cached_attention_step")
            except AssertionError as e:  # a crash: say what the shapes are
                fail(f"{e}\nAt {where}: q, k_new, v_new have shape {(B, H, 1, D)} and the "
                     f"caches {(B, H, t, D)} (empty at step 0): append along the time "
                     "dimension, dim=2 (or -2)")
            if not isinstance(res, tuple) or len(res) != 3:
                fail("cached_attention_step should return a tuple (out, k_cache, v_cache)")
            out, k_cache, v_cache = res
            for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
                if not isinstance(x, Tensor) or tuple(x.shape) != (B, H, t + 1, D):
                    shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                    fail(f"cached_attention_step at {where}: the new {name} has shape {shape}, "
                         f"expected {(B, H, t + 1, D)}: append the new position along the "
                         "time dimension, dim=2 (or -2)")
            out = _tensor(out, "cached_attention_step", (B, H, 1, D), f"at {where}")
            if not torch.allclose(k_cache[:, :, -1:], k[:, :, s]):
                fail(f"cached_attention_step at {where}: the last row of k_cache is not the new "
                     "key: append k_new at the end of the cache")
            want = full[:, :, s]
            if not torch.allclose(out, want, atol=1e-5):
                if t > 0 and torch.allclose(out, _attend(q[:, :, s], k[:, :, :t], v[:, :, :t]),
                                            atol=1e-5):
                    fail(f"cached_attention_step at {where}: the new token did not attend to "
                         "itself. Append k_new and v_new to the cache first, then attend over "
                         "the whole updated cache")
                if torch.allclose(out, _attend(q[:, :, s], k[:, :, : t + 1], v[:, :, : t + 1],
                                               scale=1.0), atol=1e-5) and t > 0:
                    fail(f"cached_attention_step at {where}: scores are not divided by "
                         f"sqrt(D) = {math.sqrt(D):.3f}")
                fail(f"cached_attention_step at {where}: the output differs from full causal "
                     f"attention at that position by {(out - want).abs().max().item():.3g}")
            n_cases += 1
    passed("cached_attention_step", n_cases)


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


def check_beam_step(fn) -> None:
    """Exercise 5: fn(beam_scores (K,), logprobs (K, V), K) -> (scores, beam, token), each (K,)."""
    lp = torch.log_softmax(_rand(3, 6, seed=4, scale=2), -1)  # (3, 6)
    peaked = torch.log_softmax(torch.tensor([[5.0, 4.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.3]]), -1)
    cases = [
        ("the first step: one live beam, the others at -inf", torch.tensor([0.0, INF, INF]),
         lp),
        ("3 beams with different scores", torch.tensor([-1.0, -1.5, -4.0]), lp),
        ("2 beams where the best two candidates extend the same beam",
         torch.tensor([-0.2, -0.3]), peaked),
        ("beams whose scores outweigh the tokens' log-probs", torch.tensor([-0.1, -6.0]),
         torch.log_softmax(torch.tensor([[0.0, 0.05, 0.02, 0.1], [9.0, 0.0, 0.0, 0.0]]), -1)),
        ("4 beams over a vocabulary of 50", -torch.arange(4.0),
         torch.log_softmax(_rand(4, 50, seed=5, scale=3), -1)),
    ]
    pending = None  # a failure whose cause a later case will tell
    for where, beam_scores, logprobs in cases:
        K, V = logprobs.shape
        res = call(fn, beam_scores.clone(), logprobs.clone(), K, name="beam_step")
        if not isinstance(res, tuple) or len(res) != 3:
            fail("beam_step should return a tuple (scores, beam, token) of three tensors")
        for name, x in zip(("scores", "beam", "token"), res, strict=True):
            _tensor(x, f"beam_step's {name}", (K,), f"on {where}")
        scores, beam, token = res
        cand = (beam_scores[:, None] + logprobs).flatten()  # (K*V,)
        want_scores, idx = torch.topk(cand, K)
        want = sorted(zip(want_scores.tolist(), (idx // V).tolist(), (idx % V).tolist()),
                      reverse=True)
        got = sorted(zip(scores.tolist(), beam.tolist(), token.tolist()), reverse=True)
        pairs = {(b, t) for _, b, t in got}
        if pairs != {(b, t) for _, b, t in want}:
            per_beam = {(b, int(logprobs[b].argmax())) for b in range(K)}
            raw = torch.topk(logprobs.flatten(), K).indices
            raw = set(zip((raw // V).tolist(), (raw % V).tolist()))
            if per_beam == raw and pairs == raw:  # both mistakes fit: let a later case decide
                pending = pending or f"beam_step on {where}: expected (beam, token) pairs " \
                    f"{[(b, t) for _, b, t in want]}, got {sorted(pairs)}"
                continue
            if pairs == per_beam:
                fail(f"beam_step on {where}: you extended each beam with its own best token; "
                     "compare all K x V candidates together (two of the best may extend the "
                     "same beam, and a weak beam may get none)")
            if pairs == raw:
                fail(f"beam_step on {where}: you ranked candidates by the token's log-prob "
                     "alone; a candidate's score is its beam's score plus the token's log-prob")
            if pairs == {(i // K, i % K) for i in idx.tolist()}:
                fail(f"beam_step on {where}: the beam and token indices are wrong; the flat "
                     f"(K * V) candidates are K rows of V = {V} tokens, so index i is beam "
                     "i // V and token i % V (divide by the vocabulary size, not by K)")
            if pairs == {(i % K, i // K) for i in idx.tolist()}:
                fail(f"beam_step on {where}: the beam and token indices are mixed up: in the "
                     "flattened (K * V) candidates, index i is beam i // V, token i % V")
            fail(f"beam_step on {where}: expected (beam, token) pairs "
                 f"{[(b, t) for _, b, t in want]}, got {[(b, t) for _, b, t in got]}")
        got = sorted(got, key=lambda x: (x[1], x[2]))  # pair by pair with want
        want = sorted(want, key=lambda x: (x[1], x[2]))
        if not torch.allclose(torch.tensor([s for s, _, _ in got]),
                              torch.tensor([s for s, _, _ in want]), atol=1e-5):
            fail(f"beam_step on {where}: the right candidates, but scores "
                 f"{[round(s, 4) for s, _, _ in got]} instead of "
                 f"{[round(s, 4) for s, _, _ in want]}: a new beam's score is the old beam's "
                 "score plus the token's log-prob")
    if pending:
        fail(pending)
    passed("beam_step", len(cases))
