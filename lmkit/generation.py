"""Decoding: turning a language model's next-token logits into text (chapter 08).

- `top_k_filter`, `top_p_filter`: keep the k most likely tokens / the smallest set whose
  probability mass reaches p, setting every other logit to -inf.
- `generate`: greedy or sampled decoding (temperature, then top-k, then top-p, in Hugging
  Face's order), or beam search; stops per row at `eos_token_id`.
- `generate_stream`: the same greedy or sampled decoding, yielding each step's tokens.
- `beam_search`: the `num_beams` best continuations, returning (sequences, scores).

Keywords mean what they mean in Hugging Face `generate()`. With `use_cache=True` the prompt
is processed once and then one token at a time, reusing every layer's keys and values
(`lmkit.attention.KVCache`); with `use_cache=False` every step recomputes the whole sequence.

Context window: by default the whole output (prompt + new tokens) must fit in
`config.context_length`; lmkit does not crop silently, it raises a ValueError that says how
to crop the prompt. With `slide=True` the window slides instead: each new token is predicted
from the last `context_length` tokens only. Once the output outgrows the window every step
recomputes the whole window (the positions of the cached tokens change, so the KV cache can
no longer be reused), which is slower.

Shapes: B batch, T prompt length, V vocabulary, K beams.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["generate", "generate_stream", "beam_search", "top_k_filter", "top_p_filter"]


# ----------------------------------------------------------------------------- filters


def _check_logits(logits: Tensor, name: str) -> None:
    if not isinstance(logits, Tensor) or logits.dim() < 1 or not logits.is_floating_point():
        got = (f"a {logits.dtype} tensor of shape {tuple(logits.shape)}"
               if isinstance(logits, Tensor) else type(logits).__name__)
        raise TypeError(f"{name} expects floating-point logits of shape (..., V), got {got}")


def _check_top_k(k) -> None:
    """top_k is a whole number >= 1: a TypeError for True or 2.5, a ValueError for 0."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"top_k must be an integer >= 1 (or None for no top-k), got {k!r} of "
                        f"type {type(k).__name__}")
    if k < 1:
        raise ValueError(f"top_k must be an integer >= 1 (or None for no top-k), got {k}; "
                         "top_k=1 is greedy")


def _check_top_p(p) -> None:
    """top_p is a number in (0, 1]: p <= 0 would remove every token."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"top_p must be a number in (0, 1] (or None for no top-p), got {p!r} of "
                        f"type {type(p).__name__}")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None for no top-p), got {p}; "
                         "a small p such as 0.1 keeps only the most likely tokens")


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Logits (..., V) with everything below the k-th largest set to -inf (chapter 08).

    As in Hugging Face, tokens tied with the k-th largest are kept too. k is an integer >= 1.
    """
    _check_logits(logits, "top_k_filter")
    _check_top_k(k)
    k = int(k)
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Logits (..., V) keeping the smallest set of most likely tokens whose mass reaches p.

    Nucleus sampling (chapter 08): sort by probability, keep a token while the mass of the
    tokens before it is still below p. The most likely token is always kept; p=1 keeps all.
    p must be in (0, 1].
    """
    _check_logits(logits, "top_p_filter")
    _check_top_p(p)
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # (..., V)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # (..., V)
    remove_sorted = mass_before >= p  # the set already reached p without this token
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


# ----------------------------------------------------------------------------- checks


def _check_args(model: nn.Module, ids: Tensor, max_new_tokens: int, *, do_sample: bool,
                temperature: float, top_k: int | None, top_p: float | None,
                num_beams: int, eos_token_id: int | None, slide: bool = False) -> None:
    """Raise a ValueError naming the wrong value and the fix, before any work is done."""
    config = getattr(model, "config", None)
    if config is not None and not getattr(config, "causal", True):
        raise ValueError(
            "generate needs a causal language model, but this model has config.causal=False: "
            "a bidirectional encoder (chapter 10) sees every position at once and was never "
            "trained to predict the next token, so its 'continuations' are meaningless. Use a "
            "decoder (ModelConfig with causal=True)"
        )
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
        got = f"{ids.dtype} of shape {tuple(ids.shape)}" if isinstance(ids, Tensor) else repr(ids)
        raise ValueError(f"expected ids as a LongTensor of shape (B, T), got {got}; "
                         "for one prompt use torch.tensor([ids])")
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty (T = 0); start from at least one token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise TypeError(f"max_new_tokens must be an integer >= 0 (how many tokens to add), got "
                        f"{max_new_tokens!r} of type {type(max_new_tokens).__name__}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}; "
                         "for the single most likely token use do_sample=False (greedy)")
    if top_k is not None:
        _check_top_k(top_k)
    if top_p is not None:
        _check_top_p(top_p)
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if num_beams > 1 and do_sample:
        raise ValueError("beam search with sampling is not supported: use num_beams=1 with "
                         "do_sample=True, or do_sample=False with num_beams > 1")
    if not isinstance(slide, bool):
        raise ValueError(f"slide must be True or False, got {slide!r}")
    _check_eos(eos_token_id, model.config.vocab_size)
    M, T = model.config.context_length, ids.shape[1]
    if slide:
        if num_beams > 1 and T + max_new_tokens > M:
            raise ValueError(f"slide=True is for greedy decoding and sampling, not beam search; "
                             f"with num_beams={num_beams} keep prompt + max_new_tokens <= {M}")
        return
    if max_new_tokens >= M:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in a "
                         f"context window of {M}; ask for at most {M - 1} new tokens, or pass "
                         "slide=True to slide the window over longer output")
    if T + max_new_tokens > M:
        keep = M - max_new_tokens
        raise ValueError(
            f"prompt has {T} tokens but the context window is {M}, and {max_new_tokens} new "
            f"tokens must fit too; keep the last M - max_new_tokens = {keep} tokens, "
            f"e.g. ids[:, -{keep}:], or pass slide=True to slide the window"
        )


def _check_eos(eos_token_id, V: int) -> None:
    """eos_token_id is None or an id the model can produce: any other value never stops a row."""
    if eos_token_id is None:
        return
    if isinstance(eos_token_id, bool) or not isinstance(eos_token_id, numbers.Integral):
        raise TypeError(f"eos_token_id must be a token id (an integer) or None, got "
                        f"{eos_token_id!r} of type {type(eos_token_id).__name__}; take the id "
                        "from the tokenizer, e.g. tok.eos_token_id or tok.encode('<|endoftext|>')[0]")
    if not 0 <= eos_token_id < V:
        raise ValueError(f"eos_token_id={eos_token_id} is not in this model's vocabulary of {V} "
                         f"tokens (ids 0..{V - 1}), so no row could ever stop; is it the id of "
                         "another tokenizer? Pass the end-of-text id of this model's tokenizer, "
                         "or None")


# ----------------------------------------------------------------------------- greedy, sampling


def _next_logits(model: nn.Module, ids: Tensor, new: Tensor | None, cache) -> Tensor:
    """The logits (B, V) for the token after `ids`; `new` are the tokens not yet seen.

    inference_mode (no_grad without autograd's bookkeeping) saves about a tenth of a small
    model's step; only the logits and the cache are inference tensors, never what we return.
    """
    with torch.inference_mode():
        if cache is None:
            return model(ids)[:, -1, :]  # recompute the whole sequence: (B, T, V) -> (B, V)
        return model(ids if new is None else new, cache=cache)[:, -1, :]  # (B, V)


def _steps(model, ids, max_new_tokens, do_sample, temperature, top_k, top_p, use_cache,
           eos_token_id, generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (next tokens (B,), raw logits (B, V)) for each new position, greedy or sampled.

    The model sees at most the last context_length tokens (only reached with slide=True).
    """
    B, T = ids.shape
    M = model.config.context_length
    out = ids.new_empty(B, T + max_new_tokens)  # (B, T + new): filled as we go, no torch.cat
    out[:, :T] = ids
    cache = model.new_cache() if use_cache else None
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    new = None  # with the cache, the first step feeds the whole prompt
    for t in range(T, T + max_new_tokens):
        if t > M:  # the window slides: every position shifts, so the cache cannot be reused
            cache = None
        logits = _next_logits(model, out[:, max(0, t - M) : t], new, cache).float()  # (B, V)
        if do_sample:
            scores = logits / temperature if temperature != 1.0 else logits
            if top_k is not None:
                scores = top_k_filter(scores, top_k)
            if top_p is not None:
                scores = top_p_filter(scores, top_p)
            probs = torch.softmax(scores, dim=-1)  # (B, V)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
        else:
            nxt = logits.argmax(dim=-1)  # (B,)
        if eos_token_id is not None:  # finished rows keep emitting eos (padding, as HF)
            nxt = nxt.masked_fill(finished, eos_token_id)
            finished |= nxt == eos_token_id
        out[:, t] = nxt
        new = out[:, t : t + 1]  # (B, 1): the only token the cached model has not seen
        yield nxt, logits
        if eos_token_id is not None and bool(finished.all()):
            return


def generate_stream(
    model: nn.Module,
    ids: Tensor,
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    slide: bool = False,
) -> Iterator[Tensor]:
    """Yield the next tokens (B,) one step at a time, for live demos (chapter 08).

    Same keywords as `generate` (greedy or sampling; no beam search), so the tokens are those
    `generate` returns for the same arguments and generator state. The model is in eval mode
    while the stream runs; its training flag comes back when the stream ends or closes.
    The arguments are checked when the stream is created, not at the first `next()`.
    """
    _check_args(model, ids, max_new_tokens, do_sample=do_sample, temperature=temperature,
                top_k=top_k, top_p=top_p, num_beams=1, eos_token_id=eos_token_id, slide=slide)
    return _stream(model, ids, max_new_tokens, do_sample, temperature, top_k, top_p,
                   use_cache, eos_token_id, generator)


def _stream(model, ids, max_new_tokens, do_sample, temperature, top_k, top_p, use_cache,
            eos_token_id, generator) -> Iterator[Tensor]:
    was_training = model.training
    model.eval()
    try:
        for nxt, _ in _steps(model, ids, max_new_tokens, do_sample, temperature, top_k, top_p,
                             use_cache, eos_token_id, generator):
            yield nxt
    finally:
        model.train(was_training)


def generate(
    model: nn.Module,
    ids: Tensor,
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 1,
    use_cache: bool = True,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    length_penalty: float = 1.0,
    return_logits: bool = False,
    slide: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Continue each prompt of ids (B, T): a LongTensor (B, T + new), new <= max_new_tokens.

    do_sample=False is greedy (argmax); do_sample=True samples from softmax(logits /
    temperature) after top-k then top-p filtering (both ignored when greedy, as in HF).
    num_beams > 1 is beam search (see `beam_search`). Rows that produce `eos_token_id` are
    padded with it; decoding stops early once every row has. With `return_logits` (not for
    beams) also returns the model's raw logits (B, new, V) at each step. T + max_new_tokens
    must fit in the context window: otherwise a ValueError says how to crop the prompt, unless
    `slide=True`, which predicts each token from the last context_length tokens only (greedy
    and sampling; slower once the output outgrows the window, see the module docstring).
    """
    _check_args(model, ids, max_new_tokens, do_sample=do_sample, temperature=temperature,
                top_k=top_k, top_p=top_p, num_beams=num_beams, eos_token_id=eos_token_id,
                slide=slide)
    if num_beams > 1:
        if return_logits:
            raise ValueError("return_logits is for greedy and sampling; beam search returns "
                             "scores: call beam_search(...)")
        return beam_search(model, ids, max_new_tokens, num_beams=num_beams,
                           use_cache=use_cache, eos_token_id=eos_token_id,
                           length_penalty=length_penalty)[0]
    was_training = model.training
    model.eval()
    try:
        tokens, logits = [], []
        for nxt, step_logits in _steps(model, ids, max_new_tokens, do_sample, temperature,
                                       top_k, top_p, use_cache, eos_token_id, generator):
            tokens.append(nxt)
            if return_logits:
                logits.append(step_logits)
    finally:
        model.train(was_training)
    B, V = ids.shape[0], model.config.vocab_size
    new = torch.stack(tokens, dim=1) if tokens else ids.new_empty(B, 0)  # (B, new)
    out = torch.cat((ids, new), dim=1)  # (B, T + new)
    if not return_logits:
        return out
    stacked = torch.stack(logits, dim=1) if logits else torch.empty(B, 0, V)  # (B, new, V)
    stacked = stacked.clone() if stacked.is_inference() else stacked  # usable outside
    return out, stacked


# ----------------------------------------------------------------------------- beam search


def beam_search(
    model: nn.Module,
    ids: Tensor,
    max_new_tokens: int,
    *,
    num_beams: int,
    use_cache: bool = True,
    eos_token_id: int | None = None,
    length_penalty: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The best of `num_beams` kept hypotheses per prompt: (sequences (B, T + new), scores (B,)).

    Each step every beam is extended by every token and the K best (beam score + log-prob)
    survive (chapter 08). A hypothesis ending in eos is set aside with Hugging Face's score
    sum(log-probs) / new_len ** length_penalty (new_len counts generated tokens, eos included);
    a row is done when it has K finished hypotheses and no running beam scores better. At
    max_new_tokens the running beams finish too. Rows shorter than the longest are padded with
    eos_token_id.
    """
    _check_args(model, ids, max_new_tokens, do_sample=False, temperature=1.0, top_k=None,
                top_p=None, num_beams=num_beams, eos_token_id=eos_token_id)
    was_training = model.training
    model.eval()
    try:
        return _beam_search(model, ids, max_new_tokens, num_beams, use_cache, eos_token_id,
                            length_penalty)
    finally:
        model.train(was_training)


def _beam_search(model, ids, max_new_tokens, K, use_cache, eos_token_id, length_penalty):
    B, T = ids.shape
    V, dev = model.config.vocab_size, ids.device
    if max_new_tokens == 0:
        return ids.clone(), torch.zeros(B, device=dev)
    seqs = ids.repeat_interleave(K, dim=0)  # (B*K, T): K copies of each prompt
    # only the first copy is live at the start, or the K beams would be K identical copies
    beam_scores = torch.full((B, K), float("-inf"), device=dev)
    beam_scores[:, 0] = 0.0
    beam_scores = beam_scores.view(-1)  # (B*K,) sum of the log-probs of each beam's new tokens
    cache = model.new_cache() if use_cache else None
    finished: list[list[tuple[float, Tensor]]] = [[] for _ in range(B)]  # (score, tokens)
    done = [False] * B
    new = None

    def norm(score: float, n: int) -> float:
        return score / (n ** length_penalty)

    for step in range(1, max_new_tokens + 1):
        logits = _next_logits(model, seqs, new, cache).float()  # (B*K, V)
        logprobs = torch.log_softmax(logits, dim=-1)  # (B*K, V)
        cand = (beam_scores[:, None] + logprobs).view(B, K * V)  # (B, K*V)
        # 2K candidates so that K remain even if K of them end in eos (as HF)
        top_scores, top_idx = torch.topk(cand, min(2 * K, K * V), dim=-1)  # (B, 2K)
        beam_of, token_of = top_idx // V, top_idx % V  # (B, 2K) each
        next_scores = torch.full((B, K), float("-inf"), device=dev)
        next_beam = torch.zeros(B, K, dtype=torch.long, device=dev)
        next_token = torch.zeros(B, K, dtype=torch.long, device=dev)
        for b in range(B):
            if done[b]:  # keep the row's shape; its beams are never looked at again
                next_beam[b] = b * K
                next_token[b] = eos_token_id if eos_token_id is not None else 0
                continue
            k = 0
            for rank, (s, beam, tok) in enumerate(zip(top_scores[b].tolist(), beam_of[b].tolist(),
                                                      token_of[b].tolist(), strict=True)):
                if eos_token_id is not None and tok == eos_token_id:
                    if rank < K and s > float("-inf"):  # as HF: only eos among the best K
                        hyp = torch.cat((seqs[b * K + beam, T:], token_of[b, rank : rank + 1]))
                        finished[b].append((norm(s, step), hyp))
                    continue
                next_scores[b, k], next_beam[b, k], next_token[b, k] = s, b * K + beam, tok
                k += 1
                if k == K:
                    break
            finished[b] = sorted(finished[b], key=lambda h: -h[0])[:K]
            best_running = norm(next_scores[b, 0].item(), step)
            if len(finished[b]) == K and finished[b][-1][0] >= best_running:
                done[b] = True
        index = next_beam.view(-1)  # (B*K,) which old beam each new beam extends
        seqs = torch.cat((seqs[index], next_token.view(-1, 1)), dim=1)  # (B*K, T + step)
        beam_scores = next_scores.view(-1)
        if cache is not None:
            for layer in cache:
                layer.reorder(index)
        new = seqs[:, -1:]  # (B*K, 1)
        if all(done):
            break

    n_new = seqs.shape[1] - T
    results, scores = [], []
    for b in range(B):
        hyps = list(finished[b])
        if not done[b]:  # ran out of tokens: the running beams are candidates too
            for k in range(K):
                s = beam_scores[b * K + k].item()
                if s > float("-inf"):
                    hyps.append((norm(s, n_new), seqs[b * K + k, T:]))
        score, best = max(hyps, key=lambda h: h[0])
        results.append(best)
        scores.append(score)
    width = max(len(r) for r in results)
    pad = eos_token_id if eos_token_id is not None else 0
    out = ids.new_full((B, T + width), pad)
    out[:, :T] = ids
    for b, r in enumerate(results):
        out[b, T : T + len(r)] = r
    return out, torch.tensor(scores, device=dev)
