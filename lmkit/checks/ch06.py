"""Checkers for the chapter 06 exercises (the transformer LM)."""

from __future__ import annotations

import inspect
import operator

import torch

from ..model import Block, ModelConfig, TransformerLM
from .common import (
    INPLACE,
    OVERFLOW,
    Mistake,
    call,
    checker,
    close,
    fail,
    forbid,
    passed,
    perturbed,
    shape_of,
)

__all__ = ["check_lm_head_probs", "check_block_forward", "check_count_params",
           "check_flops_per_token", "check_gpt2_block_weights", "MISTAKES"]

M = Mistake
_INT = M("returning a float (`/`) or a tensor", "return an int: use // or int() for whole "
                                                "numbers")
MISTAKES: dict[str, dict[str, Mistake]] = {
    "lm_head_probs": {
        "logits": M("returning the logits", "you returned the logits: turn them into "
                                            "probabilities with torch.softmax(logits, dim=-1)"),
        "log": M("returning log-probabilities", "you returned log-probabilities (log_softmax); "
                                                "return softmax"),
        "dim": M("the softmax over positions or the batch",
                 "each position needs its own distribution over the V tokens, so take the "
                 "softmax over the last dim (dim=-1)"),
        "transpose": M("`h @ W_E` instead of `h @ W_E.T`",
                       "W_E has one row per token, shape (V, C), so the logits are h @ W_E.T"),
        "overflow": OVERFLOW,
        "sums": M("something that is not a softmax (sigmoid, dividing by the sum)",
                  "the probabilities at each position must be softmax(logits, dim=-1): "
                  "positive and summing to 1"),
        "shape": M("a shape other than (B, T, V)", "the logits are h @ W_E.T, (B, T, C) @ (C, V) "
                                                   "-> (B, T, V)"),
        "inplace": INPLACE,
    },
    "block_forward": {
        "post": M("a post-norm block", "that is a post-norm block (norm after the residual add); "
                                       "pre-norm normalises the input of each sublayer and adds "
                                       "the sublayer's output to the un-normalised stream: x = x "
                                       "+ attn(norm1(x)); x = x + mlp(norm2(x))"),
        "parallel": M("the MLP reading the block's input (a parallel block)",
                      "the feed-forward network read the block's input x, not the stream after "
                      "attention was added (that is a 'parallel' block): compute x = x + "
                      "attn(norm1(x)) first, then x = x + mlp(norm2(x)) on the updated x"),
        "norm1_twice": M("norm1 before the MLP too", "you used norm1 before the feed-forward "
                                                     "network too; each sublayer has its own "
                                                     "norm: mlp(norm2(x))"),
        "normed_stream": M("replacing the stream by its normalised copy",
                           "you replaced the stream by its normalised copy (x = norm1(x)) before "
                           "adding attention; keep x as it is and add attn(norm1(x)) to it"),
        "no_residual": M("forgetting a residual connection",
                         "a residual connection is missing: each sublayer's output is *added* "
                         "to the stream, x = x + sublayer(norm(x))"),
        "no_norms": M("forgetting the norms", "the norms are missing: attention and the "
                                              "feed-forward network read norm1(x) and norm2(x)"),
        "arg_order": M("the parameters in chapter 05's order (x, attn, mlp, norm1, norm2)",
                       "the parameters are in chapter 05's order: this exercise is "
                       "block_forward(x, norm1, attn, norm2, mlp), norms first, each before its "
                       "sublayer"),
        "inplace": INPLACE,
        "shape": M("returning something other than (B, T, C)",
                   "a block maps (B, T, C) to the same shape (B, T, C), so that blocks can be "
                   "stacked"),
    },
    "count_params": {
        "tied_twice": M("counting a tied LM head twice", "with tie_embeddings=True the LM head "
                                                         "*is* the token embedding (one V × C "
                                                         "matrix used twice): count it once"),
        "untied": M("forgetting the untied LM head", "with tie_embeddings=False the LM head has "
                                                     "its own V × C matrix: add it"),
        "no_tok": M("forgetting the token embedding", "the token embedding (vocab_size × "
                                                      "d_model) is missing"),
        "no_pos": M("forgetting the position embeddings", "the position embeddings "
                                                          "(context_length × d_model, GPT-2's "
                                                          "wpe) are missing"),
        "no_linear_bias": M("forgetting the Linear biases",
                            "the biases of the Linear layers are missing (q, k, v, o: 4 × "
                            "d_model; up: d_ff; down: d_model, in every block)"),
        "no_biases": M("forgetting every bias", "the biases are missing, of the Linear layers "
                                                "and of the LayerNorms"),
        "no_norm_bias": M("forgetting the LayerNorm biases", "the LayerNorm biases are missing: "
                                                             "a LayerNorm has a weight and a "
                                                             "bias of d_model numbers each"),
        "no_final_norm": M("forgetting the final LayerNorm",
                           "the final LayerNorm (norm_f: weight and bias, 2 × d_model) is "
                           "missing"),
        "no_norms": M("forgetting the LayerNorms", "LayerNorms are missing: two per block and a "
                                                   "final one, each with 2 × d_model numbers"),
        "one_block": M("one block too few (`range(n_layers - 1)`)",
                       "one block is missing: count all n_layers blocks"),
        "three_proj": M("three attention projections instead of four",
                        "attention has four projections per block, q, k, v and the output "
                        "projection o (GPT-2's attn.c_proj), each a d_model × d_model weight "
                        "with a bias: 4 × d_model² + 4 × d_model"),
        "ffn_width": M("4 × d_model instead of config.ffn_dim",
                       "the feed-forward width is config.ffn_dim (d_ff), which here is not 4 × "
                       "d_model"),
        "build": M("building the model to count (the exercise says: by formula)",
                   "compute it by formula from the config's fields, without building a model"),
        "type": _INT,
    },
    "flops_per_token": {
        "two_flops": M("1 FLOP per weight instead of 2", "a multiply-add is 2 FLOPs: each "
                                                         "weight costs 2 FLOPs per token"),
        "no_attn": M("leaving out the attention term",
                     "the attention term is missing: each token's query is multiplied with all "
                     "T keys (q kᵀ) and its weights with all T values (weights @ v), 2 × T × "
                     "d_model FLOPs each, per layer: 4 × n_layers × T × d_model"),
        "half_attn": M("only one of the two attention products",
                       "only one of the two attention products is counted: q kᵀ and weights @ v "
                       "cost 2 × T × d_model each, and lmkit counts all T keys (masked scores "
                       "are computed too)"),
        "attn_all_tokens": M("the attention term for all T tokens, not per token",
                             "that attention term is for all T tokens together; per token it is "
                             "4 × n_layers × T × d_model"),
        "no_o": M("forgetting the output projection", "the output projection (o_proj, d_model × "
                                                      "d_model) of each block is missing: "
                                                      "attention has four matrices, q, k, v and "
                                                      "o"),
        "ffn_width": M("4 × d_model instead of config.ffn_dim",
                       "the feed-forward width is config.ffn_dim (d_ff), which here is not 4 × "
                       "d_model: up and down are d_model × d_ff each"),
        "no_head": M("forgetting the LM head", "the LM head is missing: it multiplies each "
                                               "token's hidden state by a d_model × vocab_size "
                                               "matrix (tied or not)"),
        "tok_emb": M("counting the token embedding lookup",
                     "the token embedding is a lookup, not a matrix product: it costs no FLOPs; "
                     "only the LM head multiplies by the V × C matrix"),
        "pos_emb": M("counting the position embeddings", "position embeddings are looked up and "
                                                         "added, not multiplied: they cost no "
                                                         "FLOPs"),
        "rough": M("2 × num_parameters", "2 × num_parameters is the usual rough estimate; here "
                                         "count exactly the weights that are multiplied: every "
                                         "Linear's weight matrix and the LM head, not the "
                                         "embeddings' lookups, biases or norms"),
        "extras": M("counting biases and norm weights", "biases and norm weights are additions "
                                                        "and scalings, not matrix products: "
                                                        "leave them out"),
        "type": _INT,
    },
    "gpt2_block_weights": {
        "unsplit": M("not splitting c_attn into q, k and v",
                     "attn.c_attn holds q, k and v side by side ([q | k | v] along its last "
                     "dim); split it into three equal parts"),
        "transpose": M("not transposing Conv1D's (in, out) weights",
                       "GPT-2's Conv1D stores weights as (in, out), nn.Linear wants (out, in): "
                       "transpose them (.T)"),
        "split_dim": M("splitting c_attn along the wrong dimension",
                       "split attn.c_attn along its last dim (the output columns [q | k | v]), "
                       "then transpose"),
        "qkv_order": M("q, k and v in the wrong order", "c_attn's columns are [q | k | v] in "
                                                        "that order, each d_model wide"),
        "ln_swap": M("ln_1 and ln_2 swapped", "norm1 is ln_1, norm2 is ln_2"),
        "source": M("taking a weight from the wrong GPT-2 tensor (c_fc / c_proj mix-up)",
                    "mlp.c_fc is up_proj, mlp.c_proj is down_proj, attn.c_proj is o_proj"),
        "missing": M("a missing or misspelt key", "return exactly lmkit's Block names"),
        "type": M("returning a list or the model instead of a dict",
                  "return a dict {lmkit name: tensor}"),
        "inplace": INPLACE,
    },
}


# ----------------------------------------------------------------------------- exercise 1


@checker
def check_lm_head_probs(fn) -> None:
    """Exercise 1: fn(h, W_E) -> softmax(h @ W_E.T) over the vocabulary, shape (B, T, V)."""
    H = MISTAKES["lm_head_probs"]
    g = torch.Generator().manual_seed(0)
    # (B, T, C, V, scale); the first has V == C, so a missing transpose gives the right shape;
    # the last has logits in the hundreds, where exp overflows without the max subtracted
    shapes = [(2, 5, 6, 6, 1), (2, 5, 8, 11, 1), (1, 1, 4, 7, 1), (3, 4, 16, 50, 1),
              (1, 7, 5, 3, 1), (2, 3, 8, 9, 100)]
    for B, T, C, V, scale in shapes:
        h = torch.randn(B, T, C, generator=g) * scale
        W_E = torch.randn(V, C, generator=g) * 0.5
        got = call(fn, h.clone(), W_E.clone(), name="lm_head_probs")
        logits = h @ W_E.T  # (B, T, V)
        want = torch.softmax(logits, dim=-1)
        case = f"h of shape {(B, T, C)} and W_E of shape {(V, C)}" + (
            f" (logits up to {logits.abs().max():.0f})" if scale > 1 else "")
        if not isinstance(got, torch.Tensor):
            fail(f"lm_head_probs should return a tensor, got {type(got).__name__}")
        if got.shape != want.shape:
            fail(f"with {case} the probabilities should have shape (B, T, V) = {(B, T, V)}, got "
                 f"{shape_of(got)}: {H['shape'].hint}")
        got = got.float()
        if close(got, want):
            continue
        if not torch.isfinite(got).all():
            fail(f"with {case} your probabilities contain NaN or inf: {H['overflow'].hint}")
        if close(got, logits):
            fail(f"with {case}: {H['logits'].hint}")
        if close(got, torch.log_softmax(logits, dim=-1)):
            fail(f"with {case}: {H['log'].hint}")
        if V == C and close(got, torch.softmax(h @ W_E, dim=-1)):
            fail(f"with {case} you computed h @ W_E: {H['transpose'].hint} (this case has "
                 "V == C, so the shape did not warn you)")
        sums = got.sum(dim=-1)  # (B, T)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            for dim, what in ((1, "positions (dim 1)"), (0, "the batch (dim 0)")):
                s = got.sum(dim=dim)
                if torch.allclose(s, torch.ones_like(s), atol=1e-4):
                    fail(f"with {case} your probabilities sum to 1 over {what}, not over the "
                         f"vocabulary: {H['dim'].hint}")
            b, t = divmod(int((sums - 1).abs().argmax()), T)
            fail(f"with {case} the probabilities at batch {b}, position {t} sum to "
                 f"{sums[b, t]:.4f} over the vocabulary: {H['sums'].hint}")
        fail(f"with {case} the probabilities differ from softmax(h @ W_E.T, dim=-1) by up "
             f"to {(got - want).abs().max():.4f}: {H['sums'].hint}")
    passed("lm_head_probs", len(shapes))


# ----------------------------------------------------------------------------- exercise 2


def _wrong_blocks(x, n1, attn, n2, mlp):
    """Typical mistakes, each written out, and the key of the hint for each."""
    h = x + attn(n1(x))
    p = n1(x + attn(x))
    a = attn(n1(x))
    xn = n1(x)
    xn_h = xn + attn(xn)
    h5 = x + n1(n2(x))  # chapter 05's order (x, attn, mlp, norm1, norm2) called with ours
    return [
        (h5 + attn(mlp(h5)), "arg_order"),
        (n2(p + mlp(p)), "post"),
        (x + a + mlp(n2(x)), "parallel"),
        (h + mlp(n1(h)), "norm1_twice"),
        (xn_h + mlp(n2(xn_h)), "normed_stream"),
        (a + mlp(n2(a)), "no_residual"),
        (mlp(n2(h)), "no_residual"),
        (mlp(n2(a)), "no_residual"),
        ((x + attn(x)) + mlp(x + attn(x)), "no_norms"),
    ]


@checker
def check_block_forward(fn) -> None:
    """Exercise 2: fn(x, norm1, attn, norm2, mlp) -> a pre-norm block's output."""
    H = MISTAKES["block_forward"]
    try:
        params = list(inspect.signature(fn).parameters)[:5]
    except (TypeError, ValueError):
        params = []
    if params[1:3] == ["attn", "mlp"]:
        fail(f"block_forward({', '.join(params)}): {H['arg_order'].hint}")
    small = ModelConfig.gpt2(vocab_size=10, context_length=16, d_model=32, n_heads=4)
    llama = ModelConfig.llama(vocab_size=10, context_length=16, d_model=48, n_heads=4, d_ff=64)
    cases = [(small, (2, 6)), (small, (1, 1)), (llama, (3, 5)), (small, (1, 16))]
    g = torch.Generator().manual_seed(0)
    for k, (cfg, (B, T)) in enumerate(cases):
        with torch.random.fork_rng():  # the same weights every time, the caller's RNG untouched
            torch.manual_seed(k)
            block = perturbed(Block(cfg), seed=k, scale=0.3)
        x = torch.randn(B, T, cfg.d_model, generator=g)
        parts = (block.norm1, block.attn, block.norm2, block.mlp)
        with torch.no_grad():
            want = block(x)
            got = call(fn, x.clone(), *parts, name="block_forward")
            wrong = _wrong_blocks(x, *parts)
        case = (f"x of shape {(B, T, cfg.d_model)}"
                + (" (a Llama-style block: RMSNorm, SwiGLU)" if cfg is llama else ""))
        if not isinstance(got, torch.Tensor):
            fail(f"block_forward returned {type(got).__name__}: {H['shape'].hint}")
        if got.shape != want.shape:
            fail(f"with {case} the block returned shape {shape_of(got)}: {H['shape'].hint}")
        if close(got, want, atol=1e-5):
            continue
        for w, key in wrong:
            if close(got, w, atol=1e-5):
                fail(f"with {case}: {H[key].hint}")
        fail(f"with {case} the output differs from the pre-norm block's by up to "
             f"{(got - want).abs().max():.4f}: x = x + attn(norm1(x)), then "
             "x = x + mlp(norm2(x))")
    passed("block_forward", len(cases))


# ----------------------------------------------------------------------------- exercises 3, 4

_GPT2_CASES = [
    ModelConfig.gpt2(),  # GPT-2 small
    ModelConfig.gpt2(vocab_size=1000, context_length=100, d_model=64, n_layers=3, n_heads=4),
    ModelConfig.gpt2(vocab_size=1000, context_length=100, d_model=64, n_layers=3, n_heads=4,
                     tie_embeddings=False),
    ModelConfig.gpt2(vocab_size=300, context_length=40, d_model=48, n_layers=2, n_heads=4,
                     d_ff=100),
    ModelConfig.gpt2(d_model=1024, n_layers=24, n_heads=16),  # GPT-2 medium
    ModelConfig.gpt2(vocab_size=77, context_length=9, d_model=16, n_layers=1, n_heads=2,
                     d_ff=24, tie_embeddings=False),
]


def _describe(c: ModelConfig) -> str:
    return (f"ModelConfig.gpt2(vocab_size={c.vocab_size}, context_length={c.context_length}, "
            f"d_model={c.d_model}, n_layers={c.n_layers}, d_ff={c.ffn_dim}, "
            f"tie_embeddings={c.tie_embeddings})")


def _lmkit_counts(c: ModelConfig) -> tuple[int, int]:
    """What TransformerLM(c).num_parameters() and the weights of its Linear layers come to.

    Arithmetic, so that a check takes no time even for GPT-2 medium; tests/test_checks_ch06.py
    proves these equal lmkit's counts on a model built for every case.
    """
    V, P, C, L, F = c.vocab_size, c.context_length, c.d_model, c.n_layers, c.ffn_dim
    linear_weights = L * (4 * C * C + 2 * C * F)  # q, k, v, o; up, down
    linear_biases = L * (4 * C + F + C)
    norms = L * 2 * 2 * C + 2 * C  # norm1, norm2 per block; norm_f
    head = 0 if c.tie_embeddings else V * C
    n_params = V * C + P * C + linear_weights + linear_biases + norms + head
    return n_params, linear_weights + V * C  # the LM head is a Linear, tied or not


def _as_int(got, name: str) -> int:
    try:
        return operator.index(got)
    except TypeError:
        fail(f"{name} returned {type(got).__name__} {got!r}: {_INT.hint}")


@checker
def check_count_params(fn) -> None:
    """Exercise 3: fn(config) -> the number of parameters of a GPT-2-style model."""
    H = MISTAKES["count_params"]
    for c in _GPT2_CASES:
        with forbid(["lmkit.model.TransformerLM.__init__", "lmkit.model.Block.__init__"],
                    "count_params", H["build"]):
            got = _as_int(call(fn, c, name="count_params"), "count_params")
        want = _lmkit_counts(c)[0]
        if got == want:
            continue
        V, P, C, L, F = c.vocab_size, c.context_length, c.d_model, c.n_layers, c.ffn_dim
        d = got - want
        linear_biases = L * (4 * C + F + C)
        norm_biases = L * 2 * C + C
        per_block = 4 * C * C + 4 * C + 2 * C * F + F + C + 4 * C
        known = [
            (V * C if c.tie_embeddings else None, "tied_twice"),
            (-V * C if not c.tie_embeddings else None, "untied"),
            (-V * C, "no_tok"),
            (-P * C, "no_pos"),
            (-linear_biases, "no_linear_bias"),
            (-(linear_biases + norm_biases), "no_biases"),
            (-norm_biases, "no_norm_bias"),
            (-2 * C, "no_final_norm"),
            (-(4 * L * C + 2 * C), "no_norms"),
            (-4 * L * C, "no_norms"),
            (-per_block, "one_block"),
            (-L * (C * C + C), "three_proj"),
            (L * (2 * C + 1) * (4 * C - F) if F != 4 * C else None, "ffn_width"),
        ]
        for delta, key in known:
            if delta is not None and d == delta:
                fail(f"count_params({_describe(c)}) = {got:,}, expected {want:,}: {H[key].hint}")
        fail(f"count_params({_describe(c)}) = {got:,}, expected {want:,} (off by {d:+,}). "
             "Add up: token embedding, position embeddings, per block (attention q, k, v, o "
             "with biases; FFN up and down with biases; two LayerNorms), the final LayerNorm, "
             "and the LM head only if it is not tied")
    passed("count_params", len(_GPT2_CASES))


@checker
def check_flops_per_token(fn) -> None:
    """Exercise 4: fn(config, T) -> forward FLOPs per token, as TransformerLM.flops_per_token."""
    cases = [(_GPT2_CASES[0], 1024), (_GPT2_CASES[0], 1), (_GPT2_CASES[1], 16),
             (_GPT2_CASES[3], 7), (_GPT2_CASES[4], 512), (_GPT2_CASES[5], 9)]
    H = MISTAKES["flops_per_token"]
    for c, T in cases:
        got = _as_int(call(fn, c, T, name="flops_per_token"), "flops_per_token")
        n_params, n_linear = _lmkit_counts(c)
        want = 2 * n_linear + 4 * c.n_layers * T * c.d_model  # TransformerLM.flops_per_token
        if got == want:
            continue
        V, P, C, L = c.vocab_size, c.context_length, c.d_model, c.n_layers
        attn = 4 * L * T * C
        # parameters that are not multiplied: biases, norm weights (embeddings are lookups)
        extras = n_params - n_linear - P * C - (0 if c.tie_embeddings else V * C)
        d = got - want
        known = [
            (2 * got == want or 2 * got - attn == want, "two_flops"),
            (d == -attn, "no_attn"),
            (d == -attn // 2, "half_attn"),
            (d == attn * (T - 1) and T > 1, "attn_all_tokens"),
            (d == -2 * L * C * C, "no_o"),
            (d == 4 * L * C * (4 * C - c.ffn_dim) and c.ffn_dim != 4 * C, "ffn_width"),
            (d == -2 * V * C, "no_head"),
            (d == 2 * V * C, "tok_emb"),
            (d == 2 * P * C, "pos_emb"),
            (got == 2 * n_params + attn or got == 2 * n_params, "rough"),
            (d == 2 * extras, "extras"),
        ]
        for match, key in known:
            if match:
                fail(f"flops_per_token({_describe(c)}, T={T}) = {got:,}, expected {want:,}: "
                     f"{H[key].hint}")
        fail(f"flops_per_token({_describe(c)}, T={T}) = {got:,}, expected {want:,} "
             f"(off by {d:+,}): 2 FLOPs per weight of every Linear layer and of the LM head, "
             "plus 4 × n_layers × T × d_model for attention")
    passed("flops_per_token", len(cases))


# ----------------------------------------------------------------------------- exercise 5

# lmkit Block name -> (GPT-2 block name, what to do with it)
_GPT2_BLOCK = {
    "norm1.weight": ("ln_1.weight", "copy"), "norm1.bias": ("ln_1.bias", "copy"),
    "attn.q_proj.weight": ("attn.c_attn.weight", "q"), "attn.q_proj.bias": ("attn.c_attn.bias", "q"),
    "attn.k_proj.weight": ("attn.c_attn.weight", "k"), "attn.k_proj.bias": ("attn.c_attn.bias", "k"),
    "attn.v_proj.weight": ("attn.c_attn.weight", "v"), "attn.v_proj.bias": ("attn.c_attn.bias", "v"),
    "attn.o_proj.weight": ("attn.c_proj.weight", "T"), "attn.o_proj.bias": ("attn.c_proj.bias", "copy"),
    "norm2.weight": ("ln_2.weight", "copy"), "norm2.bias": ("ln_2.bias", "copy"),
    "mlp.up_proj.weight": ("mlp.c_fc.weight", "T"), "mlp.up_proj.bias": ("mlp.c_fc.bias", "copy"),
    "mlp.down_proj.weight": ("mlp.c_proj.weight", "T"),
    "mlp.down_proj.bias": ("mlp.c_proj.bias", "copy"),
}
_QKV = "qkv"


def _expected_block(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for ours, (theirs, how) in _GPT2_BLOCK.items():
        t = hf[theirs]
        if how == "T":
            t = t.T
        elif how in _QKV:  # c_attn's output columns are [q | k | v]
            t = t.chunk(3, dim=-1)[_QKV.index(how)]
            t = t.T if t.dim() == 2 else t
        out[ours] = t
    return out


def _block_hint(ours: str, got, want: torch.Tensor, hf: dict[str, torch.Tensor]) -> str | None:
    """None if `got` is right, else what is wrong with it, ending with the table's hint."""
    H = MISTAKES["gpt2_block_weights"]
    theirs, how = _GPT2_BLOCK[ours]
    src = f"{theirs} (shape {tuple(hf[theirs].shape)})"
    if not isinstance(got, torch.Tensor):
        return f"{ours} should be a tensor, got {type(got).__name__}: {H['type'].hint}"
    if got.shape != want.shape:
        if how in _QKV and got.numel() == 3 * want.numel():
            return (f"{ours} has shape {shape_of(got)} but lmkit's is {tuple(want.shape)}: "
                    f"{H['unsplit'].hint}")
        if how in _QKV and hf[theirs].shape[-1] in got.shape:
            return (f"{ours} has shape {shape_of(got)}, not {tuple(want.shape)}: "
                    f"{H['split_dim'].hint}")
        if got.dim() == 2 and got.shape == want.shape[::-1]:
            return (f"{ours} has shape {shape_of(got)} but nn.Linear wants (out, in) = "
                    f"{tuple(want.shape)}, from {src}: {H['transpose'].hint}")
        if how in _QKV and got.numel() == want.numel():
            return (f"{ours} has shape {shape_of(got)}, not {tuple(want.shape)}: "
                    f"{H['split_dim'].hint}")
        return f"{ours} should have shape {tuple(want.shape)}, got {shape_of(got)} (from {src})"
    if close(got, want):
        return None
    if want.dim() == 2 and close(got, want.T):
        return (f"{ours} holds the right numbers but transposed (the matrix is square, so the "
                f"shape did not tell), from {src}: {H['transpose'].hint}")
    if how in _QKV:
        for other in _QKV:
            part = hf[theirs].chunk(3, dim=-1)[_QKV.index(other)]
            for cand in (part, part.T) if part.dim() == 2 else (part,):
                if other != how and close(got, cand):
                    return f"{ours} holds the {other} part of {theirs}: {H['qkv_order'].hint}"
    if how == "copy" and theirs.startswith("ln"):
        for k in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            if k != theirs and close(got, hf[k]):
                return f"{ours} holds {k}; it should hold {theirs}: {H['ln_swap'].hint}"
    for k, t in hf.items():
        for cand in (t, t.T) if t.dim() == 2 else (t,):
            if k != theirs and close(got, cand):
                return f"{ours} holds {k}; it should come from {theirs}: {H['source'].hint}"
    return f"{ours} has the right shape but not the right values; it comes from {src}"


@checker
def check_gpt2_block_weights(fn) -> None:
    """Exercise 5: fn(GPT-2 block state dict) -> the same weights under lmkit's Block names.

    Checked tensor by tensor, then end to end: a TransformerLM built with the student's mapping
    must give the logits of Hugging Face's GPT2LMHeadModel.
    """
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:  # pragma: no cover - the course environment has it
        raise ImportError("this check compares with Hugging Face transformers: "
                          "pip install transformers") from e
    HM = MISTAKES["gpt2_block_weights"]
    sizes = [(64, 2, 4, None), (32, 1, 2, 48)]  # (d_model, n_layers, n_heads, d_ff)
    n_cases = 0
    for C, L, H, F in sizes:
        with torch.random.fork_rng():  # the same weights every time, the caller's RNG untouched
            torch.manual_seed(C)
            hf_model = perturbed(GPT2LMHeadModel(GPT2Config(
                vocab_size=97, n_positions=16, n_embd=C, n_layer=L, n_head=H, n_inner=F,
                bos_token_id=0, eos_token_id=0)), seed=C, scale=0.3)
        cfg = ModelConfig.gpt2(vocab_size=97, context_length=16, d_model=C, n_layers=L,
                               n_heads=H, d_ff=F)
        t = hf_model.transformer
        state = {"tok_emb.weight": t.wte.weight, "pos_emb.weight": t.wpe.weight,
                 "norm_f.weight": t.ln_f.weight, "norm_f.bias": t.ln_f.bias,
                 "lm_head.weight": t.wte.weight}
        for i, hf_block in enumerate(t.h):
            hf = {k: v.detach().clone() for k, v in hf_block.state_dict().items()
                  if k in {theirs for theirs, _ in _GPT2_BLOCK.values()}}
            got = call(fn, {k: v.clone() for k, v in hf.items()}, name="gpt2_block_weights")
            if not isinstance(got, dict):
                fail(f"gpt2_block_weights returned {type(got).__name__}: {HM['type'].hint}")
            want = _expected_block(hf)
            missing = [k for k in want if k not in got]
            if missing:
                fail(f"the dict has no {missing[0]!r}" + (f" (and {len(missing) - 1} more "
                     "missing)" if len(missing) > 1 else "") + f": {HM['missing'].hint}, "
                     + ", ".join(want))
            extra = [k for k in got if k not in want]
            if extra:
                fail(f"unexpected key {extra[0]!r}: {HM['missing'].hint}, " + ", ".join(want))
            for ours in want:
                hint = _block_hint(ours, got[ours], want[ours], hf)
                if hint:
                    fail(f"d_model={C}, block {i}: {hint}")
            state.update({f"blocks.{i}.{k}": v for k, v in got.items()})
            n_cases += 1
        with torch.random.fork_rng():  # its random init is overwritten anyway
            ours = TransformerLM(cfg).eval()
        ours.load_state_dict(state)
        ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = (ours(ids) - hf_model(ids).logits).abs().max().item()
        if not diff < 1e-4:  # every tensor matched, so this would be a bug in lmkit
            fail(f"all tensors match but the logits differ from Hugging Face's by {diff:.2e}")
    passed("gpt2_block_weights", n_cases)
