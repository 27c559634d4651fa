"""Checkers for the chapter 05 exercises (residuals and normalization).

Each checker compares the student's function with PyTorch's own op, with `lmkit.model.Block`
(whose sublayers and norms are handed to the student), or with autograd, and recognises the
typical mistakes by recomputing them: a result that equals "LayerNorm with the unbiased
variance" gets that hint.
"""

from __future__ import annotations

import dataclasses
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model import Block, ModelConfig, TransformerLM
from ..norm import LayerNorm, RMSNorm
from .common import (
    AUTOGRAD_OPS,
    INPLACE,
    NO_GRAD,
    Mistake,
    call,
    call_tensors,
    checker,
    compare,
    fail,
    forbid,
    forbidden,
    grads_flow,
    passed,
    sentence,
)

__all__ = ["check_layer_norm", "check_rms_norm", "check_pre_norm_block", "check_post_norm_block",
           "check_count_norm_params", "check_layer_norm_backward", "MISTAKES"]

M = Mistake
_NAN = M("eps left out, so a constant vector gives 0 / 0 (NaN)",
         "a division by zero? Keep eps inside the square root, sqrt(... + eps), so a constant "
         "vector gives 0, not 0 / 0")
_SHAPE = M("reducing without `keepdim=True` (shape error)",
           "a norm works on each vector (the last dimension) on its own: the output has the "
           "input's shape. Reduce with keepdim=True so (B, T, 1) broadcasts against (B, T, C)")
_NORMED = ("you added the sublayer's output to the *normalized* x (x = norm1(x), then x = x + "
           "attn(x)). In pre-norm the residual stream itself is never normalized: only the "
           "sublayer's input is. Write x = x + attn(norm1(x))")
_SPREAD = ("x.std() and x.var() measure the spread around the mean; RMSNorm divides by the "
           "root mean square of x itself: torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)")
MISTAKES: dict[str, dict[str, Mistake]] = {
    "layer_norm": {
        "forbidden": forbidden("F.layer_norm", "compute the mean and the variance yourself"),
        "no_grad": NO_GRAD,
        "unbiased": M("the unbiased variance (`x.var()` divides by C - 1)",
                      "you used the unbiased variance (dividing by C - 1, torch's default for "
                      "x.var()); LayerNorm uses the biased one: x.var(dim=-1, unbiased=False, "
                      "keepdim=True), or ((x - mean) ** 2).mean(dim=-1, keepdim=True)"),
        "eps_out": M("eps outside the square root",
                     "eps is outside the square root: divide by torch.sqrt(var + eps), not "
                     "torch.sqrt(var) + eps. The difference shows when the variance is tiny"),
        "no_eps": _NAN,
        "whole": M("normalizing over the whole tensor",
                   "you normalized over the whole tensor; LayerNorm normalizes each vector on "
                   "its own: take the mean and variance over the last dimension only (dim=-1, "
                   "keepdim=True)"),
        "batch": M("normalizing over the batch (like BatchNorm)",
                   "you normalized across the vectors (over the batch, like BatchNorm); "
                   "LayerNorm normalizes each vector over its own C numbers: use dim=-1"),
        "affine": M("forgetting the weight or the bias",
                    "the last step is x_hat * weight + bias: include both"),
        "keepdim": _SHAPE,
        "inplace": INPLACE,
    },
    "rms_norm": {
        "centre": M("subtracting the mean (that is LayerNorm)",
                    "you subtracted the mean. RMSNorm does not centre: it divides x itself by "
                    "sqrt(mean(x ** 2) + eps). (Centring, then dividing by the root mean "
                    "square, is LayerNorm)"),
        "spread": M("dividing by the standard deviation (`x.std()`, `x.var()`)", _SPREAD),
        "sum": M("the sum of squares instead of the mean",
                 "you used the sum of squares; RMSNorm uses the *mean* of the squares "
                 "(x.pow(2).mean(dim=-1, keepdim=True)), so the result does not depend on C"),
        "no_sqrt": M("forgetting the square root", "the square root is missing: divide by "
                                                   "sqrt(mean(x ** 2) + eps), the root mean "
                                                   "square"),
        "eps_out": M("eps outside the square root",
                     "eps is outside the square root: divide by torch.sqrt(mean_sq + eps), not "
                     "torch.sqrt(mean_sq) + eps"),
        "no_eps": _NAN,
        "no_weight": M("forgetting the weight", "the weight is missing: multiply by weight at "
                                                "the end"),
        "whole": M("the mean square over the whole tensor",
                   "you took the mean square over the whole tensor; RMSNorm normalizes each "
                   "vector on its own: x.pow(2).mean(dim=-1, keepdim=True)"),
        "keepdim": _SHAPE,
        "no_grad": NO_GRAD,
        "inplace": INPLACE,
    },
    "pre_norm_block": {
        "normed_stream": M("normalizing the residual stream itself (`x = norm1(x)`)", _NORMED),
        "post": M("normalizing after the addition (that is post-norm)",
                  "this is post-norm: you normalized after the addition. Pre-norm normalizes "
                  "the sublayer's input and adds its output to the untouched x: x = x + "
                  "attn(norm1(x))"),
        "stale_x": M("feeding the MLP the stream from before attention",
                     "the MLP read x from *before* attention wrote to it. Update x first (x = "
                     "x + attn(norm1(x))), then apply the MLP to the updated x: x = x + "
                     "mlp(norm2(x))"),
        "swapped": M("norm1 and norm2 swapped", "norm1 and norm2 are swapped: norm1 goes before "
                                                "attention, norm2 before the MLP"),
        "norm_output": M("normalizing the sublayer's output instead of its input",
                         "the norms go on the sublayer's *input*, not its output: x = x + "
                         "attn(norm1(x))"),
        "no_residual": M("forgetting a residual connection",
                         "a residual connection is missing: add each sublayer's output to x, "
                         "x = x + attn(norm1(x)), then x = x + mlp(norm2(x))"),
        "chained": M("chaining attention into the MLP without adding it to x first",
                     "attention's output must be added to x before the MLP reads it: two "
                     "residual additions, x = x + attn(norm1(x)), then x = x + mlp(norm2(x))"),
        "inplace": INPLACE,
    },
    "post_norm_block": {
        "pre": M("the pre-norm layout instead", "this is pre-norm (x = x + attn(norm1(x))). "
                                                "Post-norm adds first and normalizes the sum: "
                                                "x = norm1(x + attn(x))"),
        "norm_output": M("normalizing the sublayer's output alone",
                         "normalize the sum x + attn(x), not the sublayer's output alone: "
                         "x = norm1(x + attn(x))"),
        "no_residual": M("forgetting a residual connection",
                         "a residual connection is missing: add x before normalizing, "
                         "x = norm1(x + attn(x)), then x = norm2(x + mlp(x))"),
        "swapped": M("norm1 and norm2 swapped", "norm1 and norm2 are swapped: norm1 follows "
                                                "attention, norm2 the MLP"),
        "stale_x": M("feeding the MLP the stream from before attention",
                     "the MLP read x from *before* attention's update: set x = norm1(x + "
                     "attn(x)) first, then x = norm2(x + mlp(x))"),
        "missing_norm": M("forgetting norm1 or norm2", "a norm is missing: x = norm1(x + "
                                                       "attn(x)), then x = norm2(x + mlp(x))"),
        "inplace": INPLACE,
        "shape": M("returning a tuple or the sublayer outputs only",
                   "a block maps (B, T, C) to (B, T, C): return the updated stream x"),
    },
    "count_norm_params": {
        "no_final": M("forgetting the final norm of a pre-norm model",
                      "the final norm is missing. A pre-norm model never normalizes the "
                      "residual stream itself, so it applies one more norm (norm_f) before the "
                      "LM head: 2 * n_layers + 1 norms in all"),
        "post_final": M("a final norm in a post-norm model",
                        "a post-norm model has no final norm (norm_f is nn.Identity): each "
                        "block already ends with a norm, so there are 2 * n_layers norms"),
        "one_per_block": M("one norm per block instead of two",
                           "each block has *two* norms, norm1 (for attention) and norm2 (for "
                           "the MLP)"),
        "rms_bias": M("giving RMSNorm a bias", "RMSNorm has a weight (d_model numbers) but no "
                                               "bias"),
        "bias_false": M("counting LayerNorm biases when bias=False",
                        "with bias=False the LayerNorms have no bias either, only a weight of "
                        "d_model numbers"),
        "no_bias": M("forgetting LayerNorm's bias", "a LayerNorm with bias=True has a weight "
                                                    "*and* a bias, 2 * d_model numbers"),
        "type": M("returning a float or a tensor", "return an int"),
        "build": M("building the model to count (the exercise says: from the fields alone)",
                   "compute it from the config's fields alone, without building a model"),
    },
    "layer_norm_backward": {
        "autograd": forbidden("autograd (.backward, torch.autograd.grad)",
                              "use the formula; autograd is what the check compares with"),
        "constants": M("treating the mean and the variance as constants",
                       "you treated the mean and the variance as constants (grad_out * weight "
                       "/ sigma). Both depend on x: subtract the mean of g over the vector, "
                       "and subtract x_hat times the mean of g * x_hat"),
        "no_var_term": M("forgetting the variance term",
                         "the mean is handled but the variance is treated as a constant: also "
                         "subtract x_hat * (g * x_hat).mean(dim=-1, keepdim=True)"),
        "no_mean_term": M("forgetting the mean term",
                          "the variance term is there but the mean is treated as a constant: "
                          "also subtract g.mean(dim=-1, keepdim=True)"),
        "no_weight": M("forgetting the weight", "the weight is missing: the gradient reaching "
                                                "x_hat is g = grad_out * weight"),
        "unbiased": M("the unbiased variance in sigma", "sigma must use the biased variance "
                                                        "(divide by C), as in the forward pass"),
        "no_eps": _NAN,
        "keepdim": _SHAPE,
        "inplace": INPLACE,
    },
}

_NAN_HINT = _NAN.hint[0].upper() + _NAN.hint[1:]


def _ln_variant(x: Tensor, w: Tensor | None, b: Tensor | None, eps: float, *,
                unbiased: bool = False, eps_out: bool = False, no_eps: bool = False,
                dims: tuple[int, ...] = (-1,)) -> Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=unbiased)
    if no_eps:
        std = var.sqrt()
    elif eps_out:
        std = var.sqrt() + eps
    else:
        std = (var + eps).sqrt()
    y = (x - mean) / std
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


_NORM_SHAPE_HINT = sentence(_SHAPE.hint)


# ----------------------------------------------------------------------------- exercise 1


def _norm_cases(seed: int) -> list[tuple[str, Tensor, float]]:
    g = torch.Generator().manual_seed(seed)
    return [
        ("x of shape (2, 3, 8)", torch.randn(2, 3, 8, generator=g) * 3 + 2, 1e-5),
        ("x of shape (5, 4): C = 4, where C and C - 1 differ a lot",
         torch.randn(5, 4, generator=g) * 2 - 1, 1e-5),
        ("x of shape (3, 6) with eps = 0.5", torch.randn(3, 6, generator=g), 0.5),
        ("a nearly constant x (variance about 1e-6) with eps = 1e-5",
         1e-3 * torch.randn(2, 16, generator=g) - 2e-3, 1e-5),
        ("a 1-d x of shape (10,)", torch.randn(10, generator=g) * 4, 1e-5),
        ("x with a constant row (variance exactly 0)",
         torch.cat([torch.full((1, 8), 3.0), torch.randn(2, 8, generator=g)]), 1e-5),
    ]


@checker
def check_layer_norm(fn) -> None:
    """Exercise 1: fn(x, weight, bias, eps) -> LayerNorm over the last dimension, built by hand
    (F.layer_norm refused) and differentiable (gradients reach x, weight and bias)."""
    H = MISTAKES["layer_norm"]
    cases = _norm_cases(0)
    g = torch.Generator().manual_seed(1)
    for k, (case, x, eps) in enumerate(cases):
        C = x.shape[-1]
        if k == 0:  # the plain start: weight 1, bias 0, as nn.LayerNorm initialises them
            w, b = torch.ones(C), torch.zeros(C)
        else:
            w, b = 1 + 0.5 * torch.randn(C, generator=g), 0.5 * torch.randn(C, generator=g)
        leaves = {n: t.clone().requires_grad_() for n, t in [("x", x), ("weight", w), ("bias", b)]}
        with forbid(["torch.nn.functional.layer_norm", "torch.layer_norm",
                     "torch.native_layer_norm", "torch.nn.functional.group_norm",
                     "torch.group_norm", "torch.nn.functional.instance_norm"], "layer_norm",
                    H["forbidden"]):
            got = call_tensors(fn, *leaves.values(), eps, name="layer_norm",
                               shape_hint=_NORM_SHAPE_HINT)
        want = F.layer_norm(x, (C,), w, b, eps)
        mistakes = [
            (_ln_variant(x, w, b, eps, unbiased=True), H["unbiased"].hint),
            (_ln_variant(x, w, b, eps, eps_out=True), H["eps_out"].hint),
            (_ln_variant(x, w, b, eps, no_eps=True), H["no_eps"].hint),
            (_ln_variant(x, w, b, eps, dims=tuple(range(x.dim()))), H["whole"].hint),
            (_ln_variant(x, None, None, eps), H["affine"].hint),
            (_ln_variant(x, w, None, eps), H["affine"].hint),
            (_ln_variant(x, None, b, eps), H["affine"].hint),
            (_ln_variant(x, w, b, eps, unbiased=True, eps_out=True),
             "two mistakes: " + H["unbiased"].hint + "; and " + H["eps_out"].hint),
        ]
        if x.dim() >= 2:
            for dims in {(0,), tuple(range(x.dim() - 1))}:
                mistakes.append((_ln_variant(x, w, b, eps, dims=dims), H["batch"].hint))
        compare("layer_norm", case, got, want, mistakes, _NORM_SHAPE_HINT, nan_hint=_NAN_HINT)
        ref = F.layer_norm(leaves["x"], (C,), leaves["weight"], leaves["bias"], eps)
        if k > 0:  # weight 1 and bias 0 would not tell "unused" from "no gradient"
            grads_flow("layer_norm", case, got, ref, leaves)
    passed("layer_norm", len(cases))


# ----------------------------------------------------------------------------- exercise 2


def _rms_variant(x: Tensor, w: Tensor | None, eps: float, *, centre: bool = False,
                 eps_out: bool = False, no_eps: bool = False, sum_sq: bool = False,
                 no_sqrt: bool = False) -> Tensor:
    if centre:
        x = x - x.mean(dim=-1, keepdim=True)
    ms = x.pow(2).sum(-1, keepdim=True) if sum_sq else x.pow(2).mean(-1, keepdim=True)
    if no_sqrt:
        denom = ms + eps
    elif no_eps:
        denom = ms.sqrt()
    elif eps_out:
        denom = ms.sqrt() + eps
    else:
        denom = (ms + eps).sqrt()
    y = x / denom
    return y if w is None else y * w


_SPREAD_HINT = ("x.std() and x.var() measure the spread around the mean; RMSNorm divides by the "
                "root mean square of x itself: torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) "
                "+ eps)")


def _spreads(x: Tensor, eps: float) -> list[Tensor]:
    """Dividing by the standard deviation instead of the root mean square, four ways."""
    out = []
    for unbiased in (True, False):
        var = x.var(dim=-1, keepdim=True, unbiased=unbiased)
        out += [(var + eps).sqrt(), var.sqrt() + eps]
    return out


@checker
def check_rms_norm(fn) -> None:
    """Exercise 2: fn(x, weight, eps) -> RMSNorm over the last dimension."""
    H = MISTAKES["rms_norm"]
    cases = _norm_cases(2)
    cases[-1] = ("x with an all-zero row", torch.cat([torch.zeros(1, 8), cases[-1][1][1:]]), 1e-6)
    g = torch.Generator().manual_seed(3)
    for k, (case, x, eps) in enumerate(cases):
        C = x.shape[-1]
        w = torch.ones(C) if k == 0 else 1 + 0.5 * torch.randn(C, generator=g)
        leaves = {"x": x.clone().requires_grad_(), "weight": w.clone().requires_grad_()}
        got = call_tensors(fn, *leaves.values(), eps, name="rms_norm",
                           shape_hint=_NORM_SHAPE_HINT)
        want = F.rms_norm(x, (C,), w, eps)
        mistakes = [
            (_rms_variant(x, w, eps, centre=True), H["centre"].hint),
            *[(x / spread * w, H["spread"].hint) for spread in _spreads(x, eps)],
            (_rms_variant(x, w, eps, sum_sq=True), H["sum"].hint),
            (_rms_variant(x, w, eps, no_sqrt=True), H["no_sqrt"].hint),
            (_rms_variant(x, w, eps, eps_out=True), H["eps_out"].hint),
            (_rms_variant(x, w, eps, no_eps=True), H["no_eps"].hint),
            (_rms_variant(x, None, eps), H["no_weight"].hint),
            (x / (x.pow(2).mean() + eps).sqrt() * w, H["whole"].hint),
        ]
        compare("rms_norm", case, got, want, mistakes, _NORM_SHAPE_HINT, nan_hint=_NAN_HINT)
        if k > 0:  # weight 1 would not tell "unused" from "no gradient"
            grads_flow("rms_norm", case, got, F.rms_norm(leaves["x"], (C,), leaves["weight"], eps),
                       leaves)
    passed("rms_norm", len(cases))


# ----------------------------------------------------------------------------- exercises 3, 4


def _block_cases(position: str) -> list[tuple[str, Block, Tensor]]:
    """Small lmkit Blocks with norms that are not the identity, and inputs off scale."""
    cases = []
    specs = [("layernorm", (2, 5, 16)), ("rmsnorm", (3, 4, 16)), ("layernorm", (1, 1, 16)),
             ("layernorm", (2, 7, 8))]
    for seed, (norm, shape) in enumerate(specs):
        torch.manual_seed(100 + seed)  # Block's own Linear layers draw from the global seed
        C = shape[-1]
        config = ModelConfig(vocab_size=1, context_length=8, d_model=C, n_heads=2,
                             norm=norm, norm_position=position)
        block = Block(config).eval()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n in (block.norm1, block.norm2):
                n.weight.copy_(1 + 0.5 * torch.randn(C, generator=g))
                if getattr(n, "bias", None) is not None:
                    n.bias.copy_(0.5 * torch.randn(C, generator=g))
        x = torch.randn(*shape, generator=g) * 2 + 0.5
        cases.append((f"a {norm} block, x of shape {shape}", block, x))
    return cases


_BLOCK_SHAPE_HINT = ("A block maps (B, T, C) to (B, T, C): attention and the MLP each return "
                     "a (B, T, C) tensor that is added to x.")


def _sub(block: Block):
    return block.attn, block.mlp, block.norm1, block.norm2


def _pre(x, a, m, n1, n2):
    x = x + a(n1(x))
    return x + m(n2(x))


def _post(x, a, m, n1, n2):
    x = n1(x + a(x))
    return n2(x + m(x))


def _check_block(fn, name: str, position: str, mistakes_for) -> None:
    cases = _block_cases(position)
    for case, block, x in cases:
        with torch.no_grad():
            got = call_tensors(fn, x.clone(), *_sub(block), name=name,
                               shape_hint=_BLOCK_SHAPE_HINT)
            if isinstance(got, tuple):
                fail(f"{name} on {case} returned a tuple: {MISTAKES[name]['shape'].hint}"
                     if "shape" in MISTAKES[name] else f"{name} on {case} returned a tuple")
            want = block(x)
            mistakes = mistakes_for(x, *_sub(block))
        compare(name, case, got, want, mistakes, _BLOCK_SHAPE_HINT, nan_hint=_NAN_HINT)
    passed(name, len(cases))


def _pre_norm_mistakes(x, a, m, n1, n2) -> list[tuple[Tensor, str]]:
    H = MISTAKES["pre_norm_block"]
    h = n1(x) + a(n1(x))
    h2 = x + a(n1(x))
    return [
        (n2(h) + m(n2(h)), H["normed_stream"].hint),
        (h + m(n2(h)), H["normed_stream"].hint),
        (n2(h2) + m(n2(h2)), H["normed_stream"].hint),
        (_post(x, a, m, n1, n2), H["post"].hint),
        (x + a(n1(x)) + m(n2(x)), H["stale_x"].hint),
        (_pre(x, a, m, n2, n1), H["swapped"].hint),
        ((lambda y: y + n2(m(y)))(x + n1(a(x))), H["norm_output"].hint),
        (m(n2(a(n1(x)))), H["no_residual"].hint),
        ((lambda y: m(n2(y)))(x + a(n1(x))), H["no_residual"].hint),
        ((lambda y: y + m(n2(y)))(a(n1(x))), H["no_residual"].hint),
        (x + m(n2(a(n1(x)))), H["chained"].hint),
    ]


@checker
def check_pre_norm_block(fn) -> None:
    """Exercise 3: fn(x, attn, mlp, norm1, norm2) -> a pre-norm block's output."""
    _check_block(fn, "pre_norm_block", "pre", _pre_norm_mistakes)


def _post_norm_mistakes(x, a, m, n1, n2) -> list[tuple[Tensor, str]]:
    H = MISTAKES["post_norm_block"]
    return [
        (_pre(x, a, m, n1, n2), H["pre"].hint),
        ((lambda y: y + n2(m(y)))(x + n1(a(x))), H["norm_output"].hint),
        (n2(m(n1(a(x)))), H["no_residual"].hint),
        ((lambda y: n2(m(y)))(n1(x + a(x))), H["no_residual"].hint),
        ((lambda y: n2(y + m(y)))(n1(a(x))), H["no_residual"].hint),
        (_post(x, a, m, n2, n1), H["swapped"].hint),
        (n2(n1(x + a(x)) + m(x)), H["stale_x"].hint),
        ((lambda y: n2(y + m(y)))(x + a(x)), H["missing_norm"].hint),
        ((lambda y: y + m(y))(n1(x + a(x))), H["missing_norm"].hint),
    ]


@checker
def check_post_norm_block(fn) -> None:
    """Exercise 4: fn(x, attn, mlp, norm1, norm2) -> a post-norm block's output."""
    _check_block(fn, "post_norm_block", "post", _post_norm_mistakes)


# ----------------------------------------------------------------------------- exercise 5


_BUILDERS = ["lmkit.model.TransformerLM.__init__", "lmkit.model.Block.__init__",
             "lmkit.norm.LayerNorm.__init__", "lmkit.norm.RMSNorm.__init__"]


def _norm_params(config: ModelConfig) -> tuple[int, int, int]:
    """(norm parameters in the model, number of norms, parameters per norm), counted on a real
    TransformerLM built on the meta device (shapes only, no memory)."""
    # norm parameters depend on d_model, n_layers, norm, bias and norm_position only: shrink
    # the rest so building GPT-2 or Llama sizes stays instant
    small = dataclasses.replace(config, vocab_size=1, context_length=1, n_heads=1,
                                n_kv_heads=None, d_ff=1, positional="none")
    with torch.device("meta"):
        model = TransformerLM(small)
    norms = [mod for mod in model.modules() if isinstance(mod, (LayerNorm, RMSNorm))]
    total = sum(p.numel() for mod in norms for p in mod.parameters())
    return total, len(norms), total // max(len(norms), 1)


def _describe(c: ModelConfig) -> str:
    return (f"ModelConfig(d_model={c.d_model}, n_layers={c.n_layers}, norm={c.norm!r}, "
            f"norm_position={c.norm_position!r}, bias={c.bias})")


@checker
def check_count_norm_params(fn) -> None:
    """Exercise 5: fn(config) -> the number of parameters in all the norms of TransformerLM."""
    H = MISTAKES["count_norm_params"]
    cases = [
        ModelConfig.gpt2(),
        ModelConfig.llama(),
        ModelConfig.gpt2(norm_position="post"),
        ModelConfig.gpt2(bias=False),
        ModelConfig.llama(norm="layernorm", n_layers=4),
        ModelConfig(vocab_size=10, context_length=4, d_model=8, n_layers=1, n_heads=2,
                    norm="rmsnorm", norm_position="post"),
        ModelConfig.gpt2(n_layers=48, d_model=1600, n_heads=25),
    ]
    for config in cases:
        with forbid(_BUILDERS, "count_norm_params", H["build"]):
            got = call(fn, config, name="count_norm_params")
        case = _describe(config)
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            fail(f"count_norm_params on {case} returned {got!r} ({type(got).__name__}): "
                 f"{H['type'].hint}")
        want, n_norms, per_norm = _norm_params(config)
        if got == want:
            continue
        d, L = config.d_model, config.n_layers
        head = f"count_norm_params on {case} should be {want:,}, got {got:,}"
        pre = config.norm_position == "pre"
        if pre and got == 2 * L * per_norm:
            fail(f"{head}: {H['no_final'].hint}")
        if not pre and got == (2 * L + 1) * per_norm:
            fail(f"{head}: {H['post_final'].hint}")
        if got in (L * per_norm, (L + 1) * per_norm):
            fail(f"{head}: {H['one_per_block'].hint}")
        if got == 2 * want and config.norm == "rmsnorm":
            fail(f"{head}: {H['rms_bias'].hint}")
        if got == 2 * want and not config.bias:
            fail(f"{head}: {H['bias_false'].hint}")
        if 2 * got == want and config.norm == "layernorm" and config.bias:
            fail(f"{head}: {H['no_bias'].hint}")
        fail(f"{head} ({n_norms} norms of {per_norm:,} parameters each; d_model={d}, "
             f"n_layers={L}). Count the norms: two per block, plus a final one for pre-norm; "
             "then the parameters of one norm: d_model for the weight, plus d_model for a "
             "LayerNorm's bias when bias=True")
    passed("count_norm_params", len(cases))


# ----------------------------------------------------------------------------- exercise 6


def _lnb_variant(x: Tensor, w: Tensor, go: Tensor, eps: float, *, use_w: bool = True,
                 mean_term: bool = True, xhat_term: bool = True,
                 unbiased: bool = False) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    sigma = (x.var(-1, keepdim=True, unbiased=unbiased) + eps).sqrt()
    xhat = (x - mean) / sigma
    g = go * w if use_w else go
    out = g
    if mean_term:
        out = out - g.mean(-1, keepdim=True)
    if xhat_term:
        out = out - xhat * (g * xhat).mean(-1, keepdim=True)
    return out / sigma


@checker
def check_layer_norm_backward(fn) -> None:
    """Exercise 6: fn(x, weight, grad_out, eps) -> dL/dx of LayerNorm, checked with autograd."""
    H = MISTAKES["layer_norm_backward"]
    g = torch.Generator().manual_seed(6)
    cases = [("x of shape (2, 3, 8)", torch.randn(2, 3, 8, generator=g) * 3 + 2, 1e-5),
             ("x of shape (4, 5)", torch.randn(4, 5, generator=g), 1e-5),
             ("x of shape (3, 6) with eps = 0.5", torch.randn(3, 6, generator=g), 0.5),
             ("a 1-d x of shape (16,)", torch.randn(16, generator=g) * 0.1, 1e-5),
             ("x of shape (1, 2, 64)", torch.randn(1, 2, 64, generator=g) + 4, 1e-5),
             ("x with a constant row (variance exactly 0)",
              torch.cat([torch.full((1, 6), 2.0), torch.randn(2, 6, generator=g)]), 1e-2)]
    for k, (case, x, eps) in enumerate(cases):
        C = x.shape[-1]
        w = torch.ones(C) if k == 0 else 1 + 0.5 * torch.randn(C, generator=g)
        go = torch.randn(x.shape, generator=g)
        with forbid(AUTOGRAD_OPS, "layer_norm_backward", H["autograd"]):
            got = call_tensors(fn, x.clone(), w.clone(), go.clone(), eps,
                               name="layer_norm_backward", shape_hint=_NORM_SHAPE_HINT)
        xr = x.clone().requires_grad_()
        F.layer_norm(xr, (C,), w, None, eps).backward(go)
        want = xr.grad
        mistakes = [
            (_lnb_variant(x, w, go, eps, mean_term=False, xhat_term=False), H["constants"].hint),
            (_lnb_variant(x, w, go, eps, xhat_term=False), H["no_var_term"].hint),
            (_lnb_variant(x, w, go, eps, mean_term=False), H["no_mean_term"].hint),
            (_lnb_variant(x, w, go, eps, use_w=False), H["no_weight"].hint),
            (_lnb_variant(x, w, go, eps, unbiased=True), H["unbiased"].hint),
            (_lnb_variant(x, w, go, 0.0), H["no_eps"].hint),
        ]
        compare("layer_norm_backward", case, got, want, mistakes,
                _NORM_SHAPE_HINT, nan_hint=_NAN_HINT)
    passed("layer_norm_backward", len(cases))
