"""Checkers for the chapter 08 exercises (decoding)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..attention import scaled_dot_product_attention
from ..generation import top_k_filter, top_p_filter
from .common import INPLACE, OVERFLOW, Mistake, call, checker, fail, passed

__all__ = ["check_temperature_softmax", "check_top_k_mask", "check_top_p_mask",
           "check_cached_attention_step", "check_beam_step", "MISTAKES"]

M = Mistake
_SHAPE = M("changing the shape (flattening, dropping the batch dimension)",
           "the output keeps the input's shape (one value per token, every row separately)")
_DTYPE = M("a different dtype (float64 probabilities, float indices)",
           "keep the dtype: probabilities and logits in the input's float dtype, beam and token "
           "indices as integers (torch.long)")
_FILL = M("filling removed tokens with 0 or -1e9 instead of -inf",
          "set the removed logits to float('-inf'): a logit of 0 still has probability exp(0) "
          "> 0 after the softmax, and -1e9 is only a big number")
_KEPT = M("returning probabilities, or changing the kept logits",
          "return the input logits with -inf at the removed tokens: leave the kept ones as they "
          "are, not probabilities")
MISTAKES: dict[str, dict[str, Mistake]] = {
    "temperature_softmax": {
        "overflow": OVERFLOW,
        "global_max": M("subtracting the batch's global maximum instead of each row's",
                        "subtract each ROW's maximum (x.max(dim=-1, keepdim=True)), not the "
                        "maximum of the whole batch: a row far below the global maximum "
                        "underflows to 0 / 0 = NaN"),
        "dim": M("normalising over the wrong dimension", "normalise over the last dimension "
                                                         "(the vocabulary), dim=-1"),
        "multiply": M("multiplying the logits by T", "you multiplied the logits by T: divide by "
                                                     "it, so that T < 1 sharpens the "
                                                     "distribution and T > 1 flattens it"),
        "after": M("applying the temperature after the softmax",
                   "the temperature divides the LOGITS, before the softmax: softmax(logits / T); "
                   "dividing the probabilities afterwards changes nothing but their sum"),
        "inf": M("turning a -inf logit (a filtered token) into NaN",
                 "a filtered token has logit -inf and must get probability exactly 0: "
                 "torch.softmax handles -inf; do not multiply -inf by 0 or subtract -inf"),
        "inplace": INPLACE,
        "shape": _SHAPE,
        "dtype": _DTYPE,
    },
    "top_k_mask": {
        "fill": _FILL,
        "kept": _KEPT,
        "ties": M("breaking ties at the k-th place (keeping exactly k when there is a tie)",
                  "keep every logit >= the k-th largest value (ties with it included, as "
                  "Hugging Face does); remove only those below"),
        "per_row": M("one k-th value for the whole batch instead of per row",
                     "each row needs its own k-th largest value: topk over dim=-1, and keep the "
                     "last dimension (values[..., -1:]) to compare row by row"),
        "k_plus_one": M("keeping k + 1 tokens (off by one in the threshold)",
                        "you kept one token too many: the threshold is the k-th largest value, "
                        "torch.topk(logits, k).values[..., -1:], and the tokens below it go"),
        "strict": M("removing the k-th token too (`<=` instead of `<`)",
                    "remove the logits strictly below the k-th largest (logits < kth), not <= "
                    "it: the k-th token stays"),
        "inplace": INPLACE,
        "shape": _SHAPE,
    },
    "top_p_mask": {
        "unsorted": M("forgetting to scatter the mask back to vocabulary order",
                      "the mask is computed in sorted order; scatter it back to vocabulary "
                      "order with the indices torch.sort returned"),
        "reach": M("dropping the token that crosses p (the nucleus falls short of p)",
                   "the nucleus must *reach* p: keep a token while the mass of the tokens "
                   "before it is below p (the token that crosses p stays)"),
        "too_many": M("keeping tokens after the mass has reached p",
                      "drop a token when the tokens before it already hold at least p: the "
                      "smallest set reaching p"),
        "per_row": M("sorting or summing over the wrong dimension (batches)",
                     "sort, sum and compare along the last dimension, each row on its own"),
        "fill": _FILL,
        "kept": _KEPT,
        "inplace": INPLACE,
        "shape": _SHAPE,
    },
    "cached_attention_step": {
        "append": M("appending along the wrong dimension, or not at all",
                    "append the new position along the time dimension, dim=2 (or -2), and "
                    "return the grown caches"),
        "prepend": M("putting the new key in front of the cache",
                     "append k_new at the END of the cache: torch.cat([k_cache, k_new], dim=2)"),
        "no_self": M("attending before appending (the token misses itself)",
                     "the new token did not attend to itself. Append k_new and v_new to the "
                     "cache first, then attend over the whole updated cache"),
        "copied_mask": M("copying the causal mask into the cached step",
                         "the new query is the LAST position, so it may see every cached key: a "
                         "cached step needs no mask (torch.tril(torch.ones(1, t + 1)) keeps only "
                         "key 0)"),
        "no_scale": M("forgetting 1/sqrt(D)", "divide the scores by sqrt(D)"),
        "dim": M("the softmax over the wrong dimension", "take the softmax over the keys, the "
                                                         "last dimension of the scores (dim=-1)"),
        "type": M("returning only the output, not (out, k_cache, v_cache)",
                  "return a tuple (out, k_cache, v_cache)"),
        "inplace": INPLACE,
    },
    "beam_step": {
        "per_beam": M("extending each beam with its own best token",
                      "you extended each beam with its own best token; compare all K x V "
                      "candidates together (two of the best may extend the same beam, and a "
                      "weak beam may get none)"),
        "raw": M("ranking by the token's log-prob alone",
                 "you ranked candidates by the token's log-prob alone; a candidate's score is "
                 "its beam's score plus the token's log-prob"),
        "index_K": M("dividing the flat index by K instead of V",
                     "the flat (K * V) candidates are K rows of V tokens, so index i is beam "
                     "i // V and token i % V (divide by the vocabulary size, not by K)"),
        "index_mixed": M("beam and token indices swapped",
                         "the beam and token indices are mixed up: in the flattened (K * V) "
                         "candidates, index i is beam i // V, token i % V"),
        "scores": M("returning the token's log-prob (or a product) as the new score",
                    "a new beam's score is the old beam's score plus the token's log-prob"),
        "type": M("returning a list or two tensors instead of (scores, beam, token)",
                  "return a tuple (scores, beam, token) of three tensors"),
        "shape": _SHAPE,
        "dtype": _DTYPE,
        "inplace": INPLACE,
    },
}

INF = float("-inf")


def _rand(*shape, seed=0, scale=1.0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _tensor(got, name: str, shape: tuple[int, ...], where: str,
            dtype: torch.dtype | None = None) -> Tensor:
    """Fail unless `got` is a tensor of `shape`; the shape gets its own hint."""
    if not isinstance(got, Tensor):
        fail(f"{name} {where} should return a tensor, got {type(got).__name__}")
    if tuple(got.shape) != shape:
        fail(f"{name} {where} returned shape {tuple(got.shape)}, expected {shape}: "
             f"{_SHAPE.hint}")
    if dtype is not None and got.dtype != dtype:
        fail(f"{name} {where} returned dtype {got.dtype}, expected {dtype}: {_DTYPE.hint}")
    return got


def _kept(x: Tensor) -> list[int]:
    return (x > INF).nonzero().flatten().tolist()


@checker
def check_temperature_softmax(fn) -> None:
    """Exercise 1: fn(logits, temperature) -> softmax(logits / temperature) over the last dim."""
    H = MISTAKES["temperature_softmax"]
    cases = [
        ("a 5-token vector at T=1", torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5]), 1.0),
        ("a 5-token vector at T=0.5", torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5]), 0.5),
        ("a 5-token vector at T=3", torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5]), 3.0),
        ("a batch (3, 10) at T=0.7", _rand(3, 10, seed=1, scale=3), 0.7),
        ("large logits [1000, 990, 0] at T=0.1", torch.tensor([1000.0, 990.0, 0.0]), 0.1),
        ("logits with -inf (a filtered token) at T=2", torch.tensor([1.0, INF, 0.0]), 2.0),
        ("a batch of rows of different scale, [[1000, 990, 0], [1, 0, -1]] at T=1",
         torch.tensor([[1000.0, 990.0, 0.0], [1.0, 0.0, -1.0]]), 1.0),
    ]
    for where, logits, T in cases:
        got = _tensor(call(fn, logits.clone(), T, name="temperature_softmax"),
                      "temperature_softmax", tuple(logits.shape), f"on {where}", logits.dtype)
        want = torch.softmax(logits / T, dim=-1)
        head = f"temperature_softmax on {where}"
        if torch.allclose(got, want, atol=1e-5):
            continue
        if torch.isnan(got).any():
            x = logits / T
            shifted = (x - x.max()).exp()
            global_max = shifted / shifted.sum(-1, keepdim=True)
            if logits.dim() > 1 and torch.allclose(got, global_max, atol=1e-5, equal_nan=True):
                fail(f"{head} gave nan: {H['global_max'].hint}")
            if torch.isinf(logits).any() and logits.abs()[torch.isfinite(logits)].max() < 80:
                fail(f"{head} gave nan: {H['inf'].hint}")
            fail(f"{head} gave nan: {H['overflow'].hint}")
        if T != 1.0 and torch.allclose(got, torch.softmax(logits * T, dim=-1), atol=1e-5):
            fail(f"{head}: {H['multiply'].hint}")
        if (T != 1.0 and torch.allclose(got, torch.softmax(logits, -1) / T, atol=1e-5)) or \
                torch.allclose(got, torch.softmax(torch.softmax(logits, -1) / T, -1), atol=1e-5):
            fail(f"{head}: {H['after'].hint}")
        if not torch.allclose(got.sum(-1), torch.ones(got.shape[:-1]), atol=1e-5):
            fail(f"{head}: rows sum to {got.sum(-1).tolist()}, not 1: {H['dim'].hint}")
        fail(f"{head}: expected {want.flatten()[:5].tolist()}..., "
             f"got {got.flatten()[:5].tolist()}...")
    passed("temperature_softmax", len(cases))


def _filled(got: Tensor, removed: Tensor) -> bool:
    """The removed tokens were filled with 0 or a big finite negative number, not -inf."""
    vals = got[removed]
    return bool(removed.any()) and bool(torch.isfinite(vals).all()) and bool(
        ((vals == 0) | (vals <= -1e4)).all())


@checker
def check_top_k_mask(fn) -> None:
    """Exercise 2: fn(logits, k) -> logits with all but the k largest (per row) set to -inf."""
    H = MISTAKES["top_k_mask"]
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
        head = f"top_k_mask on {where}"
        if _filled(got, removed):
            fail(f"{head} gave the removed logits {got[removed][0].item():g}: {H['fill'].hint}")
        keep = ~got.isneginf()
        if not torch.equal(got[keep], logits[keep]):
            fail(f"{head} changed the kept logits: {H['kept'].hint}")
        if not torch.equal(got.isneginf(), removed):
            n_got = keep.sum(-1)
            n_want = (~removed).sum(-1)
            if "tie" in where:
                fail(f"{head}: logits {logits.tolist()} should keep {n_want.tolist()} tokens, "
                     f"you kept {n_got.tolist()}. {H['ties'].hint}")
            if logits.dim() == 2 and not torch.equal(n_got, n_want) and (
                    n_got != n_got.flatten()[0]).any():
                fail(f"{head}: kept {n_got.tolist()} tokens per row, expected "
                     f"{n_want.tolist()}: {H['per_row'].hint}")
            if torch.equal(n_got, n_want + 1):
                fail(f"{head}: kept {n_got.tolist()} tokens, expected {n_want.tolist()}: "
                     f"{H['k_plus_one'].hint}")
            if torch.equal(n_got, n_want - 1):
                fail(f"{head}: kept {n_got.tolist()} tokens, expected {n_want.tolist()}: "
                     f"{H['strict'].hint}")
            if logits.dim() == 2:
                fail(f"{head}: kept {n_got.tolist()} tokens per row, expected "
                     f"{n_want.tolist()}: {H['per_row'].hint}")
            fail(f"{head}: kept {n_got.tolist()} token(s), expected {n_want.tolist()} "
                 f"(positions {_kept(want)})")
        if not torch.equal(got, want):
            fail(f"{head}: expected {want.tolist()}, got {got.tolist()}")
    passed("top_k_mask", len(cases))


@checker
def check_top_p_mask(fn) -> None:
    """Exercise 3: fn(logits, p) -> logits outside the top-p nucleus (per row) set to -inf."""
    H = MISTAKES["top_p_mask"]
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
        if _filled(got, want.isneginf()):
            fail(f"top_p_mask on {where} gave the removed logits {got[want.isneginf()][0]:g}: "
                 f"{H['fill'].hint}")
        if not torch.equal(got[~got.isneginf()], logits[~got.isneginf()]):
            fail(f"top_p_mask on {where} changed the kept logits: {H['kept'].hint}")
        if not torch.equal(got.isneginf(), want.isneginf()):
            probs = torch.softmax(logits, -1)
            kept_mass = probs[~got.isneginf()].sum().item()
            n_got = (~got.isneginf()).sum(-1).tolist()
            n_want = (~want.isneginf()).sum(-1).tolist()
            if logits.dim() == 1 and n_got == n_want:
                fail(f"top_p_mask on {where}: you kept the right number of tokens ({n_got}) "
                     f"but the wrong ones (positions {_kept(got)}, expected {_kept(want)}): "
                     f"{H['unsorted'].hint}")
            if logits.dim() == 1 and kept_mass < p - 1e-6:
                fail(f"top_p_mask on {where}: the tokens you kept hold {kept_mass:.4f} of the "
                     f"mass, less than p = {p}. {H['reach'].hint}")
            if logits.dim() == 1:
                fail(f"top_p_mask on {where}: kept {n_got} token(s) (mass {kept_mass:.4f}), "
                     f"expected {n_want} token(s) at positions {_kept(want)}: "
                     f"{H['too_many'].hint}")
            fail(f"top_p_mask on {where}: kept {n_got} tokens per row, expected {n_want}: "
                 f"{H['per_row'].hint}")
    passed("top_p_mask", len(cases))


@checker
def check_cached_attention_step(fn) -> None:
    """Exercise 4: fn(q, k_new, v_new, k_cache, v_cache) -> (out, k_cache, v_cache).

    Decoding token by token with the student's step must give full causal attention's rows.
    """
    H = MISTAKES["cached_attention_step"]
    n_cases, pending = 0, None
    for B, H_, T, D, seed in [(1, 1, 5, 4, 0), (2, 3, 7, 8, 1), (1, 2, 1, 16, 2)]:
        q, k, v = _rand(3, B, H_, T, D, seed=seed).unbind(0)  # each (B, H, T, D)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        full = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, D)
        k_cache, v_cache = torch.empty(B, H_, 0, D), torch.empty(B, H_, 0, D)
        for t in range(T):
            where = f"step {t} (B={B}, H={H_}, D={D}, cache of {t} positions)"
            s = slice(t, t + 1)
            try:
                res = call(fn, q[:, :, s].clone(), k[:, :, s].clone(), v[:, :, s].clone(),
                           k_cache, v_cache, name="cached_attention_step")
            except AssertionError as e:  # a crash: say what the shapes are
                if INPLACE.hint in str(e):
                    raise
                fail(f"{e}\nAt {where}: q, k_new, v_new have shape {(B, H_, 1, D)} and the "
                     f"caches {(B, H_, t, D)} (empty at step 0): {H['append'].hint}")
            if not isinstance(res, tuple) or len(res) != 3:
                fail(f"cached_attention_step returned {type(res).__name__}: {H['type'].hint}")
            out, k_cache, v_cache = res
            for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
                if not isinstance(x, Tensor) or tuple(x.shape) != (B, H_, t + 1, D):
                    shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                    fail(f"cached_attention_step at {where}: the new {name} has shape {shape}, "
                         f"expected {(B, H_, t + 1, D)}: {H['append'].hint}")
            out = _tensor(out, "cached_attention_step", (B, H_, 1, D), f"at {where}")
            if not torch.allclose(k_cache[:, :, -1:], k[:, :, s]):
                fail(f"cached_attention_step at {where}: the last row of k_cache is not the new "
                     f"key: {H['prepend'].hint}")
            want = full[:, :, s]
            if not torch.allclose(out, want, atol=1e-5):
                head = f"cached_attention_step at {where}"
                ks, vs = k[:, :, : t + 1], v[:, :, : t + 1]
                no_self = _attend(q[:, :, s], k[:, :, :t], v[:, :, :t]) if t > 0 else None
                first_only = v[:, :, :1]
                if t == 1 and torch.allclose(out, first_only, atol=1e-5):
                    pending = f"{head}: {H['no_self'].hint}"  # step 2 tells the two apart
                    continue
                if t > 0 and torch.allclose(out, no_self, atol=1e-5):
                    fail(f"{head}: {H['no_self'].hint}")
                if t > 0 and torch.allclose(out, first_only, atol=1e-5):
                    fail(f"{head}: {H['copied_mask'].hint}")
                if t > 0 and torch.allclose(out, _attend(q[:, :, s], ks, vs, scale=1.0),
                                            atol=1e-5):
                    fail(f"{head}: {H['no_scale'].hint}, sqrt(D) = {math.sqrt(D):.3f}")
                if t > 0 and torch.allclose(out, vs.sum(2, keepdim=True), atol=1e-5):
                    fail(f"{head}: {H['dim'].hint}")
                fail(f"{head}: the output differs from full causal attention at that position "
                     f"by {(out - want).abs().max().item():.3g}")
            n_cases += 1
        if pending:
            fail(pending)
    passed("cached_attention_step", n_cases)


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


@checker
def check_beam_step(fn) -> None:
    """Exercise 5: fn(beam_scores (K,), logprobs (K, V), K) -> (scores, beam, token), each (K,)."""
    H = MISTAKES["beam_step"]
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
            fail(f"beam_step returned {type(res).__name__}: {H['type'].hint}")
        for name, x in zip(("scores", "beam", "token"), res, strict=True):
            _tensor(x, f"beam_step's {name}", (K,), f"on {where}",
                    None if name == "scores" else torch.long)
        scores, beam, token = res
        cand = (beam_scores[:, None] + logprobs).flatten()  # (K*V,)
        want_scores, idx = torch.topk(cand, K)
        want = sorted(zip(want_scores.tolist(), (idx // V).tolist(), (idx % V).tolist()),
                      reverse=True)
        got = sorted(zip(scores.tolist(), beam.tolist(), token.tolist()), reverse=True)
        pairs = {(b, t) for _, b, t in got}
        swapped = {(t, b) for _, b, t in want}
        if pairs != {(b, t) for _, b, t in want}:
            per_beam = {(b, int(logprobs[b].argmax())) for b in range(K)}
            raw = torch.topk(logprobs.flatten(), K).indices
            raw = set(zip((raw // V).tolist(), (raw % V).tolist()))
            if per_beam == raw and pairs == raw:  # both mistakes fit: let a later case decide
                pending = pending or f"beam_step on {where}: expected (beam, token) pairs " \
                    f"{[(b, t) for _, b, t in want]}, got {sorted(pairs)}"
                continue
            if pairs == per_beam:
                fail(f"beam_step on {where}: {H['per_beam'].hint}")
            if pairs == raw:
                fail(f"beam_step on {where}: {H['raw'].hint}")
            if pairs == {(i // K, i % K) for i in idx.tolist()}:
                fail(f"beam_step on {where} (V = {V}): {H['index_K'].hint}")
            if pairs == {(i % K, i // K) for i in idx.tolist()} or pairs == swapped:
                fail(f"beam_step on {where}: {H['index_mixed'].hint}")
            fail(f"beam_step on {where}: expected (beam, token) pairs "
                 f"{[(b, t) for _, b, t in want]}, got {[(b, t) for _, b, t in got]}")
        got = sorted(got, key=lambda x: (x[1], x[2]))  # pair by pair with want
        want = sorted(want, key=lambda x: (x[1], x[2]))
        if not torch.allclose(torch.tensor([s for s, _, _ in got]),
                              torch.tensor([s for s, _, _ in want]), atol=1e-5):
            alone = torch.tensor([logprobs[b, t].item() for _, b, t in got])
            if pending and torch.allclose(torch.tensor([s for s, _, _ in got]), alone):
                fail(f"beam_step on {where}: {H['raw'].hint}")
            fail(f"beam_step on {where}: the right candidates, but scores "
                 f"{[round(s, 4) for s, _, _ in got]} instead of "
                 f"{[round(s, 4) for s, _, _ in want]}: {H['scores'].hint}")
    if pending:
        fail(pending)
    passed("beam_step", len(cases))
