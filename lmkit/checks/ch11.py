"""Checkers for the chapter 11 exercises (inside the model)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..inspect import head_outputs, hooks, normalize_like, run_with_cache
from ..model import ModelConfig, TransformerLM
from .common import (
    INPLACE,
    NO_RETURN,
    Mistake,
    call,
    call_tensors,
    checker,
    compare,
    fail,
    passed,
    perturbed,
)

__all__ = ["check_head_pattern", "check_induction_score", "check_logit_lens",
           "check_head_dla", "check_patch_resid", "check_probe_with_control", "MISTAKES"]

M = Mistake
_HOOK = M("leaving a forward hook on the model (registered by hand and never removed)",
          "you left a hook on the model: later forward passes would still be changed. Use "
          "`with hooks(model, {...}):` (it removes them), or call handle.remove()")
_SHAPE = M("returning the wrong shape (a dimension dropped, or the dimensions in another order)",
           "return the shape the exercise asks for: no dimension added, dropped or "
           "reordered (the batch dimension kept)")
_DTYPE = M("returning another dtype (float64)",
           "keep the model's dtype (float32): do not convert with .double()")
MISTAKES: dict[str, dict[str, Mistake]] = {
    "head_pattern": {
        "gqa": M("indexing the pattern with the key/value head (head // group) under "
                 "grouped-query attention",
                 "with grouped-query attention the pattern still has one map per *query* head: "
                 "index it with `head`, not with the key/value head head // group"),
        "transposed": M("transposing the map (keys as rows)",
                        "rows must be queries and columns keys: pattern[b, h, query, key]; you "
                        "transposed it"),
        "head_dim": M("indexing the head on the wrong dimension (`pattern[:, :, head]`)",
                      "the pattern's dimensions are (B, H, T_query, T_key): the head is dim 1, "
                      "pattern[:, head]"),
        "softmax": M("applying softmax to the pattern again",
                     "the pattern is already softmaxed (each row sums to 1); do not apply "
                     "softmax again"),
        "mean_heads": M("averaging over the heads", "you averaged over the heads; return the "
                        "one head asked for"),
        "layer": M("taking the next or the previous block's pattern",
                   "that is another block's pattern: blocks are numbered from 0, use "
                   "f\"blocks.{layer}.attn.pattern\""),
        "head": M("taking the next or the previous head",
                  "that is another head's pattern: heads are numbered from 0, pattern[:, head]"),
        "batch": M("dropping the batch dimension (`pattern[0, head]`)",
                   "keep the batch dimension: one (T, T) map per sequence, shape (B, T, T)"),
        "hook": _HOOK,
        "dtype": _DTYPE,
        "no_return": NO_RETURN,
    },
    "induction_score": {
        "duplicate": M("attending to t - N (the same token's earlier copy)",
                       "t - N is the earlier copy of the *same* token (a duplicate-token head); "
                       "an induction head attends to the token after it, t - N + 1"),
        "previous": M("using t - 1 (the previous-token score)",
                      "attention to t - 1 is the previous-token score; the induction score "
                      "looks one period back, at t - N + 1"),
        "minus_one": M("using t - N - 1 (the token *before* the earlier copy)",
                       "the induction target is the token *after* the earlier copy of the "
                       "current token: key t - N + 1, not t - N - 1"),
        "early": M("including queries of the first half (from t = N - 1 or from the start)",
                   "include only queries of the second half, t = N .. 2N - 1: in the first half "
                   "(query N - 1 is its last token) nothing has repeated yet"),
        "late": M("starting at query N + 1",
                  "start at query t = N: its earlier occurrence is token 0, so its induction "
                  "target is key 1"),
        "last": M("leaving out the last query (torch.arange(N, 2 * N - 1))",
                  "the queries run up to and including 2N - 1: torch.arange(N, 2 * N)"),
        "sum": M("summing instead of averaging", "average over the batch and the queries "
                                                 "(mean), do not sum"),
        "max": M("taking the maximum instead of the mean", "average over the batch and the "
                                                           "queries, do not take the maximum"),
        "swapped": M("swapping query and key (pattern[..., t - N + 1, t])",
                     "pattern[b, h, query, key]: the query t is dim 2 and the key t - N + 1 "
                     "dim 3; you swapped them"),
        "shape": M("keeping the batch or the query dimension (shape (B, H) or (H, N))",
                   "average over the batch (dim 0) and the queries, keeping one score per "
                   "head, shape (H,)"),
        "dtype": _DTYPE,
        "no_return": NO_RETURN,
    },
    "logit_lens": {
        "no_norm": M("reading the states without the final norm",
                     "apply the final norm before the LM head: lm_head(norm_f(state)); the LM "
                     "head was trained on normalised states only"),
        "logits": M("returning logits instead of probabilities",
                    "return probabilities: softmax over the vocabulary of the logits, then the "
                    "token's entry"),
        "log_probs": M("returning log-probabilities", "return probabilities, not "
                                                      "log-probabilities"),
        "softmax_dim": M("taking the softmax over the batch or the positions",
                         "take the softmax over the vocabulary, the last dimension of "
                         "lm_head's output (dim=-1)"),
        "resid_mid": M("reading the stream after each attention (resid_mid)",
                       "read the stream *after* each block (resid_post), not after its "
                       "attention (resid_mid)"),
        "norm_twice": M("applying the final norm to `final` again",
                        "the last entry applied the final norm twice: `final` is already "
                        "normalised; use blocks.{L-1}.resid_post for the last state"),
        "mlp_out": M("reading what the MLP wrote (mlp.out) instead of the stream",
                     "the stream after block i is resid_post, not what the MLP wrote "
                     "(mlp.out)"),
        "pos": M("reading another position", "read the position `pos`, state[:, pos]"),
        "resid_pre": M("reading the L resid_pre states (the last block's output missing)",
                       "the first state is `embed`, then resid_post of each block: L + 1 "
                       "states, not the L resid_pre"),
        "no_embed": M("leaving out the embedding (0 blocks applied)",
                      "include the embedding (0 blocks applied) as the first row: L + 1 states "
                      "in all"),
        "transposed": M("stacking along dim 1 (shape (B, L + 1))",
                        "stack the layers first: shape (L + 1, B)"),
        "no_return": NO_RETURN,
    },
    "head_dla": {
        "no_norm": M("leaving out the final norm", "freeze the final norm's scale: the head's "
                     "vector goes through normalize_like(model.norm_f, piece, resid) before "
                     "the dot product with u"),
        "own_norm": M("applying norm_f to the head's vector itself",
                      "norm_f(piece) normalises the head's vector by its *own* size (and adds "
                      "the norm's bias); freeze the scale of the whole stream, "
                      "normalize_like(model.norm_f, piece, resid)"),
        "rows": M("taking rows h*D:(h+1)*D of o_proj.weight instead of columns",
                  "head h owns the *columns* h*D:(h+1)*D of o_proj.weight (C, H*D): "
                  "z_h @ W_O[:, h*D:(h+1)*D].T"),
        "all_heads": M("using attn.out (all heads together)",
                       "that is all of the layer's heads (attn.out); take one head's z_h W_O^h"),
        "resid": M("freezing the scale of the wrong stream state (the layer's own resid_post)",
                   "freeze the scale of the *final* stream state (the last block's "
                   "resid_post), which is what norm_f divided"),
        "final": M("freezing the scale of `final` (already normalised)",
                   "freeze the scale of the stream *before* the final norm, the last block's "
                   "resid_post: `final` is already normalised, its scale is about 1"),
        "pos": M("explaining another position than the last",
                 "explain the prediction at the last position, [:, -1]"),
        "norm_bias": M("adding the norm's bias to the head's contribution",
                       "the norm's bias is not part of any head's contribution (it is a term "
                       "of its own): leave it out"),
        "center": M("not centring the head's vector (LayerNorm)",
                    "LayerNorm centres its input: subtract the head vector's own mean before "
                    "dividing by the stream's std"),
        "gamma": M("leaving out the norm's weight", "multiply by the norm's weight "
                   "(model.norm_f.weight) too: the frozen norm is y / scale * weight"),
        "unbiased": M("dividing by the unbiased standard deviation (torch.var's default)",
                      "LayerNorm divides by the *biased* standard deviation: "
                      "resid.var(-1, keepdim=True, unbiased=False)"),
        "o_bias": M("sharing o_proj's bias among the heads",
                    "o_proj's bias belongs to no head (it is a term of its own, like the "
                    "embedding): leave it out of the head's vector"),
        "head": M("taking the next head", "that is the next head: heads are numbered from 0"),
        "shape": _SHAPE,
        "no_return": NO_RETURN,
    },
    "patch_resid": {
        "unpatched": M("running the model outside the `with hooks(...)` block",
                       "nothing was patched: the output is the corrupted run's. Replace the "
                       "activation inside `with hooks(model, {name: fn}):` and run the model "
                       "*inside* the with-block"),
        "clean_run": M("returning the clean run (or pasting every position)",
                       "that is the clean run's output: run the *corrupted* ids, with the "
                       "clean activation pasted in at position `pos` only (pasting the whole "
                       "sequence also gives the clean run)"),
        "direction": M("patching in the wrong direction (corrupted into clean)",
                       "wrong direction: run the corrupted prompt and paste in the clean "
                       "activation"),
        "resid_post": M("patching resid_post or resid_mid instead of resid_pre",
                        "patch resid_pre of block `layer` (the stream entering it), not "
                        "resid_post (the next block's resid_pre: blocks are numbered from 0) "
                        "or resid_mid (at one position it has the same effect as resid_post: "
                        "the MLP works position by position)"),
        "position": M("patching the neighbouring position", "patch position `pos` (you "
                                                             "patched a neighbour)"),
        "range": M("patching a range of positions (`:pos + 1` or `pos:`)",
                   "patch position `pos` only, not a range of positions: act[:, pos]"),
        "first_seq": M("pasting the first clean sequence into every sequence of the batch",
                       "paste each sequence's own clean activation, clean[name][:, pos], not "
                       "the first sequence's"),
        "hook": _HOOK,
        "shape": _SHAPE,
        "no_return": NO_RETURN,
    },
    "probe_with_control": {
        "type": M("returning one number, or strings", "probe_with_control should return a "
                  "pair of numbers, (accuracy, control_accuracy)"),
        "inplace": INPLACE,
        "percent": M("returning percentages", "accuracies are fractions between 0 and 1, not "
                                              "percentages"),
        "error_rate": M("returning the error rate", "that looks like the error rate (fraction "
                        "wrong); return the fraction of correct predictions"),
        "order": M("returning (control, accuracy)", "the order is (accuracy, control_accuracy)"),
        "unshuffled": M("training the control on the real labels",
                        "the control probe must be trained on *shuffled* labels (a random "
                        "permutation of y, the same X), so it cannot find the real direction"),
        "one_class": M("a probe that predicts one class everywhere",
                       "the probe predicts one class everywhere. Predict class 1 where the "
                       "logit X @ w + b is > 0 (probability > 0.5), and train for enough steps "
                       "(standardise X first)"),
        "weak": M("too little training (no standardisation, too few steps, tiny learning rate)",
                  "a logistic regression reaches > 0.9 here: standardise X with the training "
                  "part's mean and std, use a learning rate around 0.05 with Adam and a few "
                  "hundred steps"),
        "on_train": M("measuring accuracy on the training rows",
                      "you measured accuracy on examples the probe was trained on. Train on "
                      "the first n_train rows and evaluate on the rest only"),
        "no_bias": M("a probe without a bias term (X @ w only)",
                     "give the probe a bias b, X @ w + b: with standardised features the bias "
                     "is what learns that one class is more common"),
        "control_fixed": M("a control that is not computed (a fixed 0.5)",
                           "compute the control, do not assume 0.5: a control is what the same "
                           "probe reaches with shuffled labels, and when one class is more "
                           "common it learns to predict that class"),
        "control_shuffle": M("a control not trained and scored on the seeded shuffle of y "
                             "(scored against the real labels, never trained on the shuffled "
                             "ones, or shuffled without `seed`)",
                             "train the control on the shuffled training labels and score it "
                             "on the shuffled held-out labels, with the shuffle the exercise "
                             "asks for: y[torch.randperm(len(y), "
                             "generator=torch.Generator().manual_seed(seed))]"),
        "control_range": M("a control far from chance on pure noise",
                           "with shuffled labels a held-out accuracy near chance is expected. "
                           "Shuffle y with a torch.Generator seeded with `seed`, then split and "
                           "train exactly as for the real probe"),
    },
}


def _hints(H: dict) -> dict:
    """compare's shape and dtype hints from an exercise's table."""
    return {"shape_hint": H["shape"].hint if "shape" in H else "",
            "dtype_hint": H["dtype"].hint if "dtype" in H else ""}


def _model(kind: str, seed: int = 0) -> TransformerLM:
    """A small random model with every weight perturbed (norms too), in eval mode."""
    if kind == "gpt2":  # 4 heads of 8; T = 4 in the pattern cases makes H == T
        cfg = ModelConfig.gpt2(vocab_size=53, context_length=32, d_model=32, n_layers=3,
                               n_heads=4)
    else:  # Llama layout, grouped-query attention: 4 query heads share 2 key/value heads
        cfg = ModelConfig.llama(vocab_size=61, context_length=32, d_model=32, n_layers=3,
                                n_heads=4, n_kv_heads=2, d_ff=48)
    with torch.random.fork_rng():  # the same weights every time, the caller's RNG untouched
        torch.manual_seed(seed)
        model = TransformerLM(cfg)
    return perturbed(model, seed, 0.1)


def _ids(model: TransformerLM, B: int, T: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=g)


def _no_hooks_left(model: TransformerLM, name: str) -> None:
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        fail(f"{name}: {_HOOK.hint}")


# ----------------------------------------------------------------------------- exercise 1


@checker
def check_head_pattern(fn) -> None:
    """Exercise 1: fn(model, ids, layer, head) -> head `head` of block `layer`'s pattern, (B, T, T)."""
    H = MISTAKES["head_pattern"]
    cases = [("gpt2", 2, 4, 1, 2), ("gpt2", 1, 7, 0, 3), ("llama", 3, 4, 2, 3), ("llama", 2, 6, 1, 0)]
    for kind, B, T, layer, head in cases:
        model = _model(kind)
        ids = _ids(model, B, T, seed=layer)
        _, cache = run_with_cache(model, ids)
        p = cache[f"blocks.{layer}.attn.pattern"]  # (B, H, T, T)
        want = p[:, head]
        n_heads = p.shape[1]
        group = n_heads // model.config.num_kv_heads
        got = call_tensors(fn, model, ids, layer, head, name="head_pattern")
        _no_hooks_left(model, "head_pattern")
        case = f"a {kind} model ({n_heads} heads), ids of shape {(B, T)}, layer {layer}, head {head}"
        mistakes = [] if group == 1 or head // group == head else [(p[:, head // group],
                                                                     H["gqa"].hint)]
        mistakes += [
            (p[:, head].transpose(-1, -2), H["transposed"].hint),
            (p[:, :, head], H["head_dim"].hint),
            (p[:, head].softmax(-1), H["softmax"].hint),
            (p.mean(1), H["mean_heads"].hint),
        ]
        for other in (layer + 1, layer - 1):
            if 0 <= other < model.config.n_layers:
                mistakes.append((cache[f"blocks.{other}.attn.pattern"][:, head], H["layer"].hint))
        for other in (head + 1, head - 1):
            if 0 <= other < n_heads:
                mistakes.append((p[:, other], H["head"].hint))
        if isinstance(got, Tensor) and got.shape == want.shape[1:]:
            fail(f"head_pattern on {case} returned shape {tuple(got.shape)}: {H['batch'].hint}")
        compare("head_pattern", case, got, want, mistakes, **_hints(H))
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


@checker
def check_induction_score(fn) -> None:
    """Exercise 2: fn(pattern, N) -> (H,) mean attention from t in [N, 2N) to t - N + 1."""
    H = MISTAKES["induction_score"]
    cases = [(2, 3, 5), (1, 4, 8), (3, 2, 6), (4, 5, 4)]
    for k, (B, n_heads, N) in enumerate(cases):
        p = _pattern(B, n_heads, 2 * N, seed=k)
        got = call_tensors(fn, p.clone(), N, name="induction_score")
        want = _diag_mean(p, N - 1, N, 2 * N)
        t = torch.arange(N, 2 * N)
        case = f"a pattern of shape {(B, n_heads, 2 * N, 2 * N)} with N={N}"
        mistakes = [
            (_diag_mean(p, N, N, 2 * N), H["duplicate"].hint),
            (_diag_mean(p, 1, N, 2 * N), H["previous"].hint),
            (_diag_mean(p, N + 1, N, 2 * N), H["minus_one"].hint),  # key -1 wraps: a 0 entry
            (_diag_mean(p, N - 1, N - 1, 2 * N), H["early"].hint),
            (_diag_mean(p, N - 1, 1, 2 * N), H["early"].hint),
            (_diag_mean(p, N - 1, N + 1, 2 * N), H["late"].hint),
            (_diag_mean(p, N - 1, N, 2 * N - 1), H["last"].hint),
            (p[:, :, t, t - N + 1].sum(dim=(0, 2)), H["sum"].hint),
            (p[:, :, t, t - N + 1].amax(dim=(0, 2)), H["max"].hint),
            (p[:, :, t - N + 1, t].mean(dim=(0, 2)), H["swapped"].hint),
        ]
        compare("induction_score", case, got, want, mistakes, **_hints(H))
    passed("induction_score", len(cases))


# ----------------------------------------------------------------------------- exercise 3


def _lens(model: TransformerLM, states: list[Tensor], pos: int, token: int,
          norm: bool = True, prob: bool = True, dim: int = -1) -> Tensor:
    with torch.no_grad():
        out = []
        for s in states:
            if dim == 1:  # the softmax over the positions (then the position `pos`)
                logits = model.lm_head(model.norm_f(s) if norm else s)  # (B, T, V)
                out.append(logits.softmax(1)[:, pos, token])
                continue
            h = model.norm_f(s[:, pos]) if norm else s[:, pos]  # (B, C)
            logits = model.lm_head(h)  # (B, V)
            out.append(logits.softmax(dim)[:, token] if prob else logits[:, token])
        return torch.stack(out)  # (n, B)


@checker
def check_logit_lens(fn) -> None:
    """Exercise 3: fn(model, cache, pos, token) -> (L + 1, B) probability of `token` at `pos`
    after 0, 1, ..., L blocks: softmax(lm_head(norm_f(state)))."""
    H = MISTAKES["logit_lens"]
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
            (_lens(model, post, pos, token, norm=False), H["no_norm"].hint),
            (_lens(model, post, pos, token, prob=False), H["logits"].hint),
            (log_probs, H["log_probs"].hint),
            (_lens(model, post, pos, token, dim=0), H["softmax_dim"].hint),
            (_lens(model, post, pos, token, dim=1), H["softmax_dim"].hint),
            (_lens(model, mid, pos, token), H["resid_mid"].hint),
            (twice, H["norm_twice"].hint),
            (_lens(model, [cache["embed"]] + [cache[f"blocks.{i}.mlp.out"] for i in range(L)],
                   pos, token), H["mlp_out"].hint),
            (_lens(model, post, 0 if pos != 0 else -1, token), H["pos"].hint),
            (_lens(model, pre, pos, token), H["resid_pre"].hint),  # (L, B): one state short
            (_lens(model, post[1:], pos, token), H["no_embed"].hint),
        ]
        if isinstance(got, Tensor) and got.shape == (B, L + 1) and B != L + 1:
            fail(f"logit_lens on {case} returned shape {(B, L + 1)}: {H['transposed'].hint}")
        compare("logit_lens", case, got, want, mistakes,
                shape_hint=f"One row per state (embed + {L} blocks), one column per sequence.")
    passed("logit_lens", len(cases))


# ----------------------------------------------------------------------------- exercise 4


@checker
def check_head_dla(fn) -> None:
    """Exercise 4: fn(model, cache, layer, head, token) -> (B,) head's direct contribution to
    `token`'s logit at the last position, the final norm's scale frozen from the run."""
    H = MISTAKES["head_dla"]
    cases = [("gpt2", 2, 5, 1, 2, 3), ("llama", 2, 6, 2, 3, 9), ("gpt2", 1, 4, 0, 0, 17),
             ("llama", 3, 3, 0, 1, 0)]
    for kind, B, T, layer, head, token in cases:
        model = _model(kind, seed=2)
        ids = _ids(model, B, T, seed=layer + 10)
        _, cache = run_with_cache(model, ids)
        L = model.config.n_layers
        attn = model.blocks[layer].attn
        D = attn.head_dim
        norm = model.norm_f
        resid = cache[f"blocks.{L - 1}.resid_post"][:, -1]  # (B, C)
        u = model.lm_head.weight[token]  # (C,)
        z = cache[f"blocks.{layer}.attn.z"][:, -1, head]  # (B, D)
        W_O = attn.o_proj.weight  # (C, H * D)
        with torch.no_grad():
            piece = head_outputs(model, cache, layer)[:, -1, head]  # (B, C)
            want = normalize_like(norm, piece, resid) @ u
            rows = z @ W_O[head * D:(head + 1) * D, :]  # the wrong slice: rows, not columns
            mistakes = [
                (piece @ u, H["no_norm"].hint),
                (norm(piece) @ u, H["own_norm"].hint),
                (normalize_like(norm, rows, resid) @ u, H["rows"].hint),
                (normalize_like(norm, cache[f"blocks.{layer}.attn.out"][:, -1], resid) @ u,
                 H["all_heads"].hint),
                (normalize_like(norm, piece, cache[f"blocks.{layer}.resid_post"][:, -1]) @ u,
                 H["resid"].hint),
                (normalize_like(norm, piece, cache["final"][:, -1]) @ u, H["final"].hint),
                (normalize_like(norm, head_outputs(model, cache, layer)[:, 0, head],
                                cache[f"blocks.{L - 1}.resid_post"][:, 0]) @ u, H["pos"].hint),
                (normalize_like(norm, piece, resid) / norm.weight @ u, H["gamma"].hint),
            ]
            if attn.o_proj.bias is not None:
                shared = piece + attn.o_proj.bias / attn.n_heads
                mistakes.append((normalize_like(norm, shared, resid) @ u, H["o_bias"].hint))
            if getattr(norm, "bias", None) is not None:  # LayerNorm
                mistakes.append((want + norm.bias @ u, H["norm_bias"].hint))
                std = torch.sqrt(resid.var(-1, keepdim=True, unbiased=False) + norm.eps)
                mistakes.append((piece / std * norm.weight @ u, H["center"].hint))
                std1 = torch.sqrt(resid.var(-1, keepdim=True, unbiased=True) + norm.eps)
                centred = piece - piece.mean(-1, keepdim=True)
                mistakes.append((centred / std1 * norm.weight @ u, H["unbiased"].hint))
            if head + 1 < attn.n_heads:
                other = head_outputs(model, cache, layer)[:, -1, head + 1]
                mistakes.append((normalize_like(norm, other, resid) @ u, H["head"].hint))
        got = call_tensors(fn, model, cache, layer, head, token, name="head_dla")
        case = f"a {kind} model, layer {layer}, head {head}, token {token}"
        compare("head_dla", case, got, want, mistakes, **_hints(H))
    passed("head_dla", len(cases))


# ----------------------------------------------------------------------------- exercise 5


def _patched(model: TransformerLM, source: Tensor, target: Tensor, name: str,
             pos: int | slice | None, first_seq: bool = False) -> Tensor:
    _, src = run_with_cache(model, source, names=[name])

    def put(act):
        act = act.clone()
        if pos is None:
            act[:] = src[name]
        elif first_seq:
            act[:, pos] = src[name][0, pos]
        else:
            act[:, pos] = src[name][:, pos]
        return act

    with torch.no_grad(), hooks(model, {name: put}):
        return model(target)


@checker
def check_patch_resid(fn) -> None:
    """Exercise 5: fn(model, clean_ids, corrupt_ids, layer, pos) -> logits (B, T, V) of the
    corrupted run with blocks.{layer}.resid_pre at position `pos` taken from the clean run."""
    H = MISTAKES["patch_resid"]
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
                (model(corrupt), H["unpatched"].hint),
                (model(clean), H["clean_run"].hint),
                (_patched(model, corrupt, clean, name, pos), H["direction"].hint),
                (_patched(model, clean, corrupt, f"blocks.{layer}.resid_post", pos),
                 H["resid_post"].hint),
                (_patched(model, clean, corrupt, name, slice(None, pos + 1)), H["range"].hint),
                (_patched(model, clean, corrupt, name, slice(pos, None)), H["range"].hint),
            ]
            if B > 1:
                mistakes.append((_patched(model, clean, corrupt, name, pos, first_seq=True),
                                 H["first_seq"].hint))
            for other in (pos - 1, pos + 1):
                if 0 <= other < T:
                    mistakes.append((_patched(model, clean, corrupt, name, other),
                                     f"you patched position {other}: {H['position'].hint}"))
        got = call_tensors(fn, model, clean.clone(), corrupt.clone(), layer, pos,
                           name="patch_resid")
        _no_hooks_left(model, "patch_resid")
        case = f"a {kind} model, ids {(B, T)}, layer {layer}, position {pos}"
        if isinstance(got, Tensor):
            got = got.detach()
        compare("patch_resid", case, got, want, mistakes, **_hints(H))
    passed("patch_resid", len(cases))


# ----------------------------------------------------------------------------- exercise 6


def _probe_data(n: int, d: int, seed: int, signal: bool, ones: float = 0.5
                ) -> tuple[Tensor, Tensor]:
    """n examples in d dims; labels from a random direction (signal) or coin flips (noise,
    a share `ones` of them 1)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g) + 3.0  # off-centre, so an unstandardised probe is slow
    if signal:
        w = torch.randn(d, generator=g)
        y = ((X - 3.0) @ w > 0).float()
    else:
        y = (torch.rand(n, generator=g) < ones).float()
    return X, y


def _planted(n: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """Coin-flip labels y, and features that encode y (dim 0) and also y shuffled exactly as
    the exercise asks with `seed` (dim 1): a control trained on that shuffle can read it."""
    g = torch.Generator().manual_seed(100 + seed)
    y = (torch.rand(n, generator=g) < 0.5).float()
    shuffled = y[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    X = torch.randn(n, d, generator=g) + 3.0
    X[:, 0] += 3.0 * (2 * y - 1)
    X[:, 1] += 3.0 * (2 * shuffled - 1)
    return X, y


def _as_float(x, what: str) -> float:
    if isinstance(x, Tensor) and x.numel() == 1:
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    fail(f"probe_with_control: {what} was {type(x).__name__}: "
         f"{MISTAKES['probe_with_control']['type'].hint}")


def _majority(y: Tensor) -> float:
    share = float(y.mean())
    return max(share, 1 - share)


@checker
def check_probe_with_control(fn) -> None:
    """Exercise 6: fn(X, y, n_train, seed) -> (held-out accuracy, shuffled-label accuracy)."""
    H = MISTAKES["probe_with_control"]
    cases = [  # (what, n, d, n_train, kind, seed)
        ("linearly separable labels", 400, 12, 300, "signal", 0),
        ("labels that are coin flips, many dims (d=60) and few training examples", 160, 60,
         80, "noise", 0),
        ("linearly separable labels, imbalanced held-out part", 300, 8, 200, "signal", 0),
        ("noise features, 85% of the labels 1", 400, 4, 300, "imbalanced", 0),
        ("features that encode y and also y shuffled with seed=3", 400, 6, 300, "planted", 3),
    ]
    for k, (what, n, d, n_train, kind, seed) in enumerate(cases):
        if kind == "planted":
            X, y = _planted(n, d, seed)
        else:
            X, y = _probe_data(n, d, seed=k, signal=kind == "signal",
                               ones=0.85 if kind == "imbalanced" else 0.5)
        if k == 2:  # a held-out part that is 3/4 one class
            order = torch.cat([torch.arange(n_train), n_train + y[n_train:].argsort(
                descending=True)])
            keep = torch.cat([order[:n_train], order[n_train:n_train + 75],
                              order[-25:]])
            X, y = X[keep], y[keep]
        out = call(fn, X, y, n_train, seed, name="probe_with_control")  # refuses X, y changed
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            fail(f"probe_with_control returned {type(out).__name__}"
                 + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
                 + f": {H['type'].hint}")
        acc, control = _as_float(out[0], "the accuracy"), _as_float(out[1], "the control")
        case = f"{what} (n={n}, d={d}, n_train={n_train}, seed={seed})"
        head = f"on {case} you returned ({acc:.3f}, {control:.3f})"
        if acc > 1.0 or control > 1.0:
            fail(f"{head}: {H['percent'].hint}")
        if kind == "signal":
            if acc < 0.2 and control > 0.3:
                fail(f"{head}: {H['error_rate'].hint}")
            if acc < 0.7 and control >= 0.8:
                fail(f"{head}: {H['order'].hint}")
            if control >= 0.8:
                fail(f"{head}: {H['unshuffled'].hint}")
            if abs(acc - _majority(y[n_train:])) < 0.02 and acc < 0.85:
                fail(f"{head}: the accuracy equals the share of the commoner class in the "
                     f"held-out part: {H['one_class'].hint}")
            if acc < 0.85:
                fail(f"{head}: the held-out accuracy is only {acc:.3f}: {H['weak'].hint}")
        elif kind == "noise":
            if acc > 0.75 or control > 0.75:
                fail(f"{head} although the labels are pure noise: {H['on_train'].hint}")
        elif kind == "imbalanced":  # both probes should learn the common class, nothing else
            if acc < _majority(y[n_train:]) - 0.1:
                fail(f"{head}; predicting the common class alone would score "
                     f"{_majority(y[n_train:]):.3f}: {H['no_bias'].hint}")
            if abs(control - 0.5) < 0.02 or control < 0.65:
                fail(f"{head}: the control should be near the share of the common class "
                     f"(about 0.85) here: {H['control_fixed'].hint}")
        else:  # planted: the seeded shuffle of y is readable from X
            if acc < 0.85:
                fail(f"{head}: the held-out accuracy is only {acc:.3f}: {H['weak'].hint}")
            if control < 0.85:
                fail(f"{head}: here a control trained and scored on the labels shuffled as "
                     f"asked reaches > 0.9 (the check made X encode that shuffle too): "
                     f"{H['control_shuffle'].hint}")
            continue
        if kind != "imbalanced" and not 0.25 <= control <= 0.75:
            fail(f"{head}: the control accuracy is {control:.3f}: {H['control_range'].hint}")
    passed("probe_with_control", len(cases))
