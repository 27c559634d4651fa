"""Checkers for the chapter 11 exercises (inside the model)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..inspect import head_outputs, hooks, normalize_like, run_with_cache
from ..model import ModelConfig, TransformerLM
from .common import call, call_tensors, compare, fail, passed

__all__ = ["check_head_pattern", "check_induction_score", "check_logit_lens",
           "check_head_dla", "check_patch_resid", "check_probe_with_control"]


def _model(kind: str, seed: int = 0) -> TransformerLM:
    """A small random model with every weight perturbed (norms too), in eval mode."""
    if kind == "gpt2":  # 4 heads of 8; T = 4 in the pattern cases makes H == T
        cfg = ModelConfig.gpt2(vocab_size=53, context_length=32, d_model=32, n_layers=3,
                               n_heads=4)
    else:  # Llama layout, grouped-query attention: 4 query heads share 2 key/value heads
        cfg = ModelConfig.llama(vocab_size=61, context_length=32, d_model=32, n_layers=3,
                                n_heads=4, n_kv_heads=2, d_ff=48)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TransformerLM(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _ids(model: TransformerLM, B: int, T: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=g)


def _no_hooks_left(model: TransformerLM, name: str) -> None:
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        fail(f"{name} left a hook on the model: later forward passes would still be changed. "
             "Use `with hooks(model, {...}):` (it removes them), or call handle.remove()")


# ----------------------------------------------------------------------------- exercise 1


def check_head_pattern(fn) -> None:
    """Exercise 1: fn(model, ids, layer, head) -> head `head` of block `layer`'s pattern, (B, T, T)."""
    cases = [("gpt2", 2, 4, 1, 2), ("gpt2", 1, 7, 0, 3), ("llama", 3, 4, 2, 3), ("llama", 2, 6, 1, 0)]
    for kind, B, T, layer, head in cases:
        model = _model(kind)
        ids = _ids(model, B, T, seed=layer)
        _, cache = run_with_cache(model, ids)
        p = cache[f"blocks.{layer}.attn.pattern"]  # (B, H, T, T)
        want = p[:, head]
        H = p.shape[1]
        group = H // model.config.num_kv_heads
        got = call_tensors(fn, model, ids, layer, head, name="head_pattern")
        _no_hooks_left(model, "head_pattern")
        case = (f"a {kind} model ({H} heads), ids of shape {(B, T)}, layer {layer}, head {head}")
        mistakes = [] if group == 1 or head // group == head else [
            (p[:, head // group], "with grouped-query attention the pattern still has one map "
             "per *query* head: index it with `head`, not with the key/value head "
             "head // group")]
        mistakes += [
            (p[:, head].transpose(-1, -2), "rows must be queries and columns keys: "
             "pattern[b, h, query, key]; you transposed it"),
            (p[:, :, head], "the pattern's dimensions are (B, H, T_query, T_key): the head is "
             "dim 1, pattern[:, head]"),
            (p[:, head].softmax(-1), "the pattern is already softmaxed (each row sums to 1); "
             "do not apply softmax again"),
            (p.mean(1), "you averaged over the heads; return the one head asked for"),
        ]
        if layer + 1 < model.config.n_layers:
            mistakes.append((cache[f"blocks.{layer + 1}.attn.pattern"][:, head],
                             "that is the next block's pattern: blocks are numbered from 0, "
                             "use f\"blocks.{layer}.attn.pattern\""))
        if layer > 0:
            mistakes.append((cache[f"blocks.{layer - 1}.attn.pattern"][:, head],
                             "that is the previous block's pattern: use the block `layer` itself"))
        for other, what in ((head + 1, "next"), (head - 1, "previous")):
            if 0 <= other < H:
                mistakes.append((p[:, other], f"that is the {what} head's pattern: heads are "
                                 "numbered from 0, pattern[:, head]"))
        if isinstance(got, Tensor) and got.shape == want.shape[1:]:
            fail(f"head_pattern on {case} returned shape {tuple(got.shape)}: keep the batch "
                 f"dimension, (B, T, T) = {tuple(want.shape)}")
        compare("head_pattern", case, got, want, mistakes,
                shape_hint="The pattern of one head has shape (B, T_query, T_key).")
    passed("head_pattern", len(cases))


# ----------------------------------------------------------------------------- exercise 2


def _pattern(B: int, H: int, T: int, seed: int) -> Tensor:
    """A random causal attention pattern (B, H, T, T): rows sum to 1, upper triangle 0."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, H, T, T, generator=g) * 2
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


def _diag_mean(p: Tensor, offset: int, start: int, stop: int) -> Tensor:
    """(H,): mean over the batch and queries start..stop-1 of p[:, :, t, t - offset]."""
    t = torch.arange(start, stop)
    return p[:, :, t, t - offset].mean(dim=(0, 2))


def check_induction_score(fn) -> None:
    """Exercise 2: fn(pattern, N) -> (H,) mean attention from t in [N, 2N) to t - N + 1."""
    cases = [(2, 3, 5), (1, 4, 8), (3, 2, 6), (4, 5, 4)]
    for k, (B, H, N) in enumerate(cases):
        p = _pattern(B, H, 2 * N, seed=k)
        got = call_tensors(fn, p.clone(), N, name="induction_score")
        want = _diag_mean(p, N - 1, N, 2 * N)
        t = torch.arange(N, 2 * N)
        case = f"a pattern of shape {(B, H, 2 * N, 2 * N)} with N={N}"
        if not isinstance(got, Tensor):
            fail(f"induction_score on {case} should return a tensor of shape ({H},), got "
                 f"{type(got).__name__}")
        mistakes = [
            (_diag_mean(p, N, N, 2 * N), "t - N is the earlier copy of the *same* token (a "
             "duplicate-token head); an induction head attends to the token after it, t - N + 1"),
            (_diag_mean(p, 1, N, 2 * N), "attention to t - 1 is the previous-token score; the "
             "induction score looks one period back, at t - N + 1"),
            (_diag_mean(p, N - 1, N - 1, 2 * N), "include only queries of the second half, "
             "t = N .. 2N - 1 (query N - 1 is the last token of the first half)"),
            (_diag_mean(p, N - 1, N + 1, 2 * N), "start at query t = N: its earlier occurrence "
             "is token 0, so its induction target is key 1"),
            (p[:, :, t, t - N + 1].sum(dim=(0, 2)), "average over the batch and the queries "
             "(mean), do not sum"),
            (p[:, :, t, t - N + 1].amax(dim=(0, 2)), "average over the batch and the queries, "
             "do not take the maximum"),
            (p[:, :, t - N + 1, t].mean(dim=(0, 2)), "pattern[b, h, query, key]: the query t is "
             "dim 2 and the key t - N + 1 dim 3; you swapped them"),
            (_diag_mean(p, N - 1, 1, 2 * N), "include only queries of the second half, "
             "t = N .. 2N - 1: in the first half nothing has repeated yet"),
        ]
        if got.shape == (B, H) or got.shape == (B,) or got.shape == (N,):
            fail(f"induction_score on {case} returned shape {tuple(got.shape)}: average over "
                 f"the batch (dim 0) and the queries, keeping one score per head, ({H},)")
        compare("induction_score", case, got, want, mistakes,
                shape_hint="One score per head: average over dims 0 (batch) and the queries.")
    passed("induction_score", len(cases))


# ----------------------------------------------------------------------------- exercise 3


def _lens(model: TransformerLM, states: list[Tensor], pos: int, token: int,
          norm: bool = True, prob: bool = True) -> Tensor:
    with torch.no_grad():
        out = []
        for s in states:
            h = model.norm_f(s[:, pos]) if norm else s[:, pos]  # (B, C)
            logits = model.lm_head(h)  # (B, V)
            out.append(logits.softmax(-1)[:, token] if prob else logits[:, token])
        return torch.stack(out)  # (n, B)


def check_logit_lens(fn) -> None:
    """Exercise 3: fn(model, cache, pos, token) -> (L + 1, B) probability of `token` at `pos`
    after 0, 1, ..., L blocks: softmax(lm_head(norm_f(state)))."""
    cases = [("gpt2", 2, 6, -1, 5), ("llama", 1, 5, 2, 7), ("gpt2", 3, 4, 0, 11)]
    for kind, B, T, pos, token in cases:
        model = _model(kind, seed=1)
        ids = _ids(model, B, T, seed=T)
        _, cache = run_with_cache(model, ids)
        L = model.config.n_layers
        post = [cache["embed"]] + [cache[f"blocks.{i}.resid_post"] for i in range(L)]
        pre = [cache[f"blocks.{i}.resid_pre"] for i in range(L)]
        mid = [cache["embed"]] + [cache[f"blocks.{i}.resid_mid"] for i in range(L)]
        got = call(fn, model, cache, pos, token, name="logit_lens")
        want = _lens(model, post, pos, token)
        case = f"a {kind} model with {L} blocks, position {pos}, token {token}"
        with torch.no_grad():
            log_probs = torch.stack([model.lm_head(model.norm_f(s[:, pos])).log_softmax(-1)
                                     [:, token] for s in post])
            twice = want.clone()
            twice[-1] = model.lm_head(model.norm_f(cache["final"][:, pos])).softmax(-1)[:, token]
        mistakes = [
            (_lens(model, post, pos, token, norm=False),
             "apply the final norm before the LM head: lm_head(norm_f(state)); the LM head was "
             "trained on normalised states only"),
            (_lens(model, post, pos, token, prob=False), "return probabilities: "
             "softmax over the vocabulary of the logits, then the token's entry"),
            (log_probs, "return probabilities, not log-probabilities"),
            (_lens(model, mid, pos, token), "read the stream *after* each block "
             "(resid_post), not after its attention (resid_mid)"),
            (twice, "the last entry applied the final norm twice: `final` is already "
             "normalised; use blocks.{L-1}.resid_post for the last state"),
            (_lens(model, [cache["embed"]] + [cache[f"blocks.{i}.mlp.out"] for i in range(L)],
                   pos, token), "the stream after block i is resid_post, not what the MLP "
             "wrote (mlp.out)"),
            (_lens(model, post, 0 if pos != 0 else -1, token), "read the position `pos`, "
             "state[:, pos]"),
        ]
        if isinstance(got, Tensor) and got.shape == (L, B):
            for states, hint in [(pre, "the first state is `embed`, then resid_post of each "
                                  "block: L + 1 states, not the L resid_pre"),
                                 (post[1:], "include the embedding (0 blocks applied) as the "
                                  "first row: L + 1 states in all")]:
                if torch.allclose(got.double(), _lens(model, states, pos, token).double(),
                                  atol=1e-5):
                    fail(f"logit_lens on {case}: {hint}")
        if isinstance(got, Tensor) and got.shape == (B, L + 1):
            fail(f"logit_lens on {case} returned shape {(B, L + 1)}: stack the layers first, "
                 f"(L + 1, B) = {(L + 1, B)}")
        compare("logit_lens", case, got, want, mistakes,
                shape_hint=f"One row per state (embed + {L} blocks), one column per sequence.")
    passed("logit_lens", len(cases))


# ----------------------------------------------------------------------------- exercise 4


def check_head_dla(fn) -> None:
    """Exercise 4: fn(model, cache, layer, head, token) -> (B,) head's direct contribution to
    `token`'s logit at the last position, the final norm's scale frozen from the run."""
    cases = [("gpt2", 2, 5, 1, 2, 3), ("llama", 2, 6, 2, 3, 9), ("gpt2", 1, 4, 0, 0, 17),
             ("llama", 3, 3, 0, 1, 0)]
    for kind, B, T, layer, head, token in cases:
        model = _model(kind, seed=2)
        ids = _ids(model, B, T, seed=layer + 10)
        _, cache = run_with_cache(model, ids)
        L = model.config.n_layers
        attn = model.blocks[layer].attn
        D = attn.head_dim
        resid = cache[f"blocks.{L - 1}.resid_post"][:, -1]  # (B, C)
        u = model.lm_head.weight[token]  # (C,)
        z = cache[f"blocks.{layer}.attn.z"][:, -1, head]  # (B, D)
        W_O = attn.o_proj.weight  # (C, C)
        with torch.no_grad():
            piece = head_outputs(model, cache, layer)[:, -1, head]  # (B, C)
            want = normalize_like(model.norm_f, piece, resid) @ u
            norm_bias = getattr(model.norm_f, "bias", None)
            rows = z @ W_O[head * D:(head + 1) * D, :]  # the wrong slice: rows, not columns
            mistakes = [
                (piece @ u, "freeze the final norm's scale: the head's vector goes through "
                 "normalize_like(model.norm_f, piece, resid) before the dot product with u"),
                (model.norm_f(piece) @ u, "norm_f(piece) normalises the head's vector by its "
                 "*own* size (and adds the norm's bias); freeze the scale of the whole stream, "
                 "normalize_like(model.norm_f, piece, resid)"),
                (normalize_like(model.norm_f, rows, resid) @ u, "head h owns the *columns* "
                 "h*D:(h+1)*D of o_proj.weight (C, H*D): z_h @ W_O[:, h*D:(h+1)*D].T"),
                (normalize_like(model.norm_f, cache[f"blocks.{layer}.attn.out"][:, -1], resid)
                 @ u, "that is all of the layer's heads (attn.out); take one head's z_h W_O^h"),
                (normalize_like(model.norm_f, piece, cache[f"blocks.{layer}.resid_post"][:, -1])
                 @ u, "freeze the scale of the *final* stream state (the last block's "
                 "resid_post), which is what norm_f divided"),
                (normalize_like(model.norm_f, head_outputs(model, cache, layer)[:, 0, head],
                                cache[f"blocks.{L - 1}.resid_post"][:, 0]) @ u,
                 "explain the prediction at the last position, [:, -1]"),
            ]
            if norm_bias is not None:
                mistakes.append((want + norm_bias @ u, "the norm's bias is not part of any "
                                 "head's contribution (it is a term of its own): leave it out"))
                y = piece / torch.sqrt(resid.var(-1, keepdim=True, unbiased=False)
                                       + model.norm_f.eps) * model.norm_f.weight
                mistakes.append((y @ u, "LayerNorm centres its input: subtract the head "
                                 "vector's own mean before dividing by the stream's std"))
            if head + 1 < attn.n_heads:
                other = normalize_like(model.norm_f, head_outputs(model, cache, layer)[:, -1,
                                                                  head + 1], resid) @ u
                mistakes.append((other, "that is the next head: heads are numbered from 0"))
        got = call_tensors(fn, model, cache, layer, head, token, name="head_dla")
        case = f"a {kind} model, layer {layer}, head {head}, token {token}"
        compare("head_dla", case, got, want, mistakes,
                shape_hint="One number per sequence: the contribution at the last position.")
    passed("head_dla", len(cases))


# ----------------------------------------------------------------------------- exercise 5


def _patched(model: TransformerLM, source: Tensor, target: Tensor, name: str,
             pos: int | None) -> Tensor:
    _, src = run_with_cache(model, source, names=[name])

    def put(act):
        act = act.clone()
        if pos is None:
            act[:] = src[name]
        else:
            act[:, pos] = src[name][:, pos]
        return act

    with torch.no_grad(), hooks(model, {name: put}):
        return model(target)


def check_patch_resid(fn) -> None:
    """Exercise 5: fn(model, clean_ids, corrupt_ids, layer, pos) -> logits (B, T, V) of the
    corrupted run with blocks.{layer}.resid_pre at position `pos` taken from the clean run."""
    cases = [("gpt2", 1, 5, 1, 2), ("llama", 2, 6, 2, 4), ("gpt2", 2, 4, 0, 1),
             ("llama", 1, 5, 1, 0)]
    for kind, B, T, layer, pos in cases:
        model = _model(kind, seed=3)
        clean = _ids(model, B, T, seed=100 + layer)
        corrupt = clean.clone()
        corrupt[:, pos] = (corrupt[:, pos] + 1 + layer) % model.config.vocab_size
        corrupt[:, 0] = (corrupt[:, 0] + 2) % model.config.vocab_size  # differ in two places
        name = f"blocks.{layer}.resid_pre"
        with torch.no_grad():
            want = _patched(model, clean, corrupt, name, pos)
            mistakes = [
                (model(corrupt), "nothing was patched: the output is the corrupted run's. "
                 "Replace the activation inside `with hooks(model, {name: fn}):` and run the "
                 "model *inside* the with-block"),
                (model(clean), "that is the clean run's output: run the *corrupted* ids, "
                 "with the clean activation pasted in at position `pos` only (pasting the "
                 "whole sequence also gives the clean run)"),
                (_patched(model, corrupt, clean, name, pos), "wrong direction: run the "
                 "corrupted prompt and paste in the clean activation"),
                (_patched(model, clean, corrupt, f"blocks.{layer}.resid_post", pos),
                 "patch resid_pre of block `layer` (the stream entering it), not resid_post "
                 "(the next block's resid_pre: blocks are numbered from 0) or resid_mid (at "
                 "one position it has the same effect as resid_post: the MLP works position "
                 "by position)"),
            ]
            for other in (pos - 1, pos + 1):
                if 0 <= other < T:
                    mistakes.append((_patched(model, clean, corrupt, name, other),
                                     f"you patched position {other}; patch position `pos`"))
        got = call_tensors(fn, model, clean.clone(), corrupt.clone(), layer, pos,
                           name="patch_resid")
        _no_hooks_left(model, "patch_resid")
        case = f"a {kind} model, ids {(B, T)}, layer {layer}, position {pos}"
        if isinstance(got, Tensor):
            got = got.detach()
        compare("patch_resid", case, got, want, mistakes,
                shape_hint="Return the patched run's logits, (B, T, V).")
    passed("patch_resid", len(cases))


# ----------------------------------------------------------------------------- exercise 6


def _probe_data(n: int, d: int, seed: int, signal: bool) -> tuple[Tensor, Tensor]:
    """n examples in d dims; labels from a random direction (signal) or coin flips (noise)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g) + 3.0  # off-centre, so an unstandardised probe is slow
    if signal:
        w = torch.randn(d, generator=g)
        y = ((X - 3.0) @ w > 0).float()
    else:
        y = (torch.rand(n, generator=g) < 0.5).float()
    return X, y


def _as_float(x, what: str) -> float:
    if isinstance(x, Tensor) and x.numel() == 1:
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    fail(f"probe_with_control should return two numbers (accuracy, control accuracy); "
         f"{what} was {type(x).__name__}")


def check_probe_with_control(fn) -> None:
    """Exercise 6: fn(X, y, n_train, seed) -> (held-out accuracy, shuffled-label accuracy)."""
    cases = [  # (what, n, d, n_train, signal)
        ("linearly separable labels", 400, 12, 300, True),
        ("labels that are coin flips, many dims (d=60) and few training examples", 160, 60,
         80, False),
        ("linearly separable labels, imbalanced held-out part", 300, 8, 200, True),
    ]
    for k, (what, n, d, n_train, signal) in enumerate(cases):
        X, y = _probe_data(n, d, seed=k, signal=signal)
        if k == 2:  # a held-out part that is 3/4 one class
            order = torch.cat([torch.arange(n_train), n_train + y[n_train:].argsort(
                descending=True)])
            keep = torch.cat([order[:n_train], order[n_train:n_train + 75],
                              order[-25:]])
            X, y = X[keep], y[keep]
        before = (X.clone(), y.clone())
        out = call(fn, X, y, n_train, 0, name="probe_with_control")
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            fail("probe_with_control should return a pair (accuracy, control_accuracy), got "
                 f"{type(out).__name__}" + (f" of length {len(out)}"
                                           if isinstance(out, (tuple, list)) else ""))
        if not (torch.equal(X, before[0]) and torch.equal(y, before[1])):
            fail("probe_with_control changed X or y in place (e.g. shuffled y itself): the "
                 "caller's labels must stay as they were; shuffle a copy, y[perm]")
        acc, control = _as_float(out[0], "the accuracy"), _as_float(out[1], "the control")
        case = f"{what} (n={n}, d={d}, n_train={n_train})"
        if acc > 1.0 or control > 1.0:
            fail(f"on {case} you returned {acc:.3f} and {control:.3f}: accuracies are "
                 "fractions between 0 and 1, not percentages")
        if signal:
            if acc < 0.2 and control > 0.3:
                fail(f"on {case} the accuracy is {acc:.3f}: that looks like the error rate "
                     "(fraction wrong); return the fraction of correct predictions")
            if acc < 0.7 and control >= 0.8:
                fail(f"on {case} you returned ({acc:.3f}, {control:.3f}): the order is "
                     "(accuracy, control_accuracy)")
            if control >= 0.8:
                fail(f"on {case} the control reached {control:.3f}: the control probe must be "
                     "trained on *shuffled* labels (a random permutation of y, the same X), so "
                     "it cannot find the real direction")
            base = float(y[n_train:].mean())
            if abs(acc - max(base, 1 - base)) < 0.02 and acc < 0.85:
                fail(f"on {case} the accuracy {acc:.3f} equals the share of the commoner class "
                     "in the held-out part: the probe predicts one class everywhere. Predict "
                     "class 1 where the logit X @ w + b is > 0 (probability > 0.5), and train "
                     "for enough steps (standardise X first)")
            if acc < 0.85:
                fail(f"on {case} the held-out accuracy is only {acc:.3f} (a logistic regression "
                     "reaches > 0.9): standardise X with the training part's mean and std, use "
                     "a learning rate around 0.05 with Adam and a few hundred steps")
        else:
            if acc > 0.75 or control > 0.75:
                fail(f"on {case} you returned ({acc:.3f}, {control:.3f}) although the labels "
                     "are pure noise: you measured accuracy on examples the probe was trained "
                     "on. Train on the first n_train rows and evaluate on the rest only")
        if not 0.25 <= control <= 0.75:
            fail(f"on {case} the control accuracy is {control:.3f}; with shuffled labels a "
                 "held-out accuracy near 0.5 is expected. Shuffle y with a torch.Generator "
                 "seeded with `seed`, then split and train exactly as for the real probe")
    passed("probe_with_control", len(cases))
