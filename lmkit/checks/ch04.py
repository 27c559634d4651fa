"""Checkers for the chapter 04 exercises (the feed-forward network).

Each checker compares the student's function with `lmkit.ffn` (weights copied into a
`FeedForward`) or with autograd, and recognises the typical mistakes by recomputing them:
a result that equals "the activation after the down-projection" gets that hint.
"""

from __future__ import annotations

import itertools
import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ffn import FeedForward
from .common import (
    AUTOGRAD_OPS,
    INPLACE,
    Mistake,
    call,
    call_tensors,
    checker,
    compare,
    fail,
    forbid,
    forbidden,
    passed,
    shape_of,
)

__all__ = ["check_gelu_tanh", "check_ffn_param_count", "check_ffn_forward", "check_swiglu",
           "check_swiglu_hidden_size", "check_ffn_backward", "MISTAKES"]

M = Mistake
_TYPE_INT = M("returning a float (`/` instead of `//`) or a bool", "return an int: use "
                                                                 "integer arithmetic (//, int())")
_SHAPE = M("an output whose shape is not the input's", "the output has the input's shape")
_TRANSPOSE = ("weights are in nn.Linear's layout (out_features, in_features): every product "
              "needs the transpose, x @ W.T")
MISTAKES: dict[str, dict[str, Mistake]] = {
    "gelu_tanh": {
        "forbidden": forbidden("F.gelu", "build it from torch.tanh, math.sqrt and math.pi"),
        "exact": M("the exact GELU (with erf) instead of the tanh approximation",
                   "this is the exact GELU, x * Phi(x) with erf; the exercise asks for the tanh "
                   "approximation 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))"),
        "no_cubic": M("leaving out the 0.044715 x³ term",
                      "the 0.044715 * x**3 term inside the tanh is missing"),
        "no_sqrt": M("leaving out the factor sqrt(2/π)",
                     "the factor sqrt(2 / math.pi) (about 0.7979) in front of (x + 0.044715 * "
                     "x**3) is missing"),
        "constant": M("2/π or sqrt(2π) instead of sqrt(2/π)", "use sqrt(2 / pi) = 0.7979: not "
                                                             "2 / pi, not sqrt(2 * pi)"),
        "no_half": M("leaving out the leading 0.5", "the leading factor 0.5 is missing"),
        "silu": M("x · sigmoid(x) (SiLU) instead of GELU", "this is SiLU, x * sigmoid(x), not "
                                                           "GELU"),
        "brackets": M("sqrt(2/π) multiplying x only (brackets)",
                      "check the brackets: sqrt(2 / pi) multiplies the whole sum, sqrt(2 / pi) * "
                      "(x + 0.044715 * x**3)"),
        "square": M("x² instead of x³", "the cubic term is 0.044715 * x**3 (x cubed), not x**2"),
        "inplace": INPLACE,
        "shape": _SHAPE,
    },
    "ffn_param_count": {
        "no_bias": M("forgetting the biases", "you forgot the biases. Each nn.Linear has one "
                                              "bias per output: d_ff for up_proj (and "
                                              "gate_proj), d_model for down_proj"),
        "bias_anyway": M("counting biases when bias=False",
                         "with bias=False the layers have no bias vectors, only weight matrices"),
        "down_bias": M("giving down_proj d_ff biases instead of d_model",
                       "down_proj's bias has d_model entries (one per output of the layer), "
                       "not d_ff"),
        "no_gate": M("forgetting gate_proj in the gated FFN",
                     "a gated FFN (SwiGLU) has a third matrix, gate_proj (d_model -> d_ff), with "
                     "its own bias when bias=True"),
        "gate_bias": M("forgetting gate_proj's bias", "gate_proj has a bias too (d_ff numbers)"),
        "one_matrix": M("counting one matrix only", "the FFN has two matrices (three when "
                                                    "gated): up_proj and down_proj (and "
                                                    "gate_proj), d_model * d_ff weights each"),
        "type": _TYPE_INT,
    },
    "ffn_forward": {
        "act_after": M("the activation after the down-projection",
                       "the activation goes between the two layers, gelu(x @ W_up.T + b_up), "
                       "not after the down-projection"),
        "no_act": M("no activation", "no activation: without GELU between them the two layers "
                                     "collapse into one linear map"),
        "tanh": M("the tanh approximation instead of the exact GELU",
                  "this uses the tanh approximation; use the exact GELU, F.gelu(h)"),
        "relu": M("ReLU instead of GELU", "this uses ReLU; the exercise asks for GELU (F.gelu)"),
        "no_b_up": M("forgetting b_up", "b_up is missing"),
        "no_b_down": M("forgetting b_down", "b_down is missing"),
        "b_up_after": M("adding b_up after the activation",
                        "b_up goes before the activation: gelu(x @ W_up.T + b_up)"),
        "transpose": M("multiplying by W instead of W.T",
                       _TRANSPOSE + " (you multiplied by W, not W.T)"),
        "inplace": INPLACE,
        "shape": _SHAPE,
    },
    "swiglu": {
        "silu_up": M("SiLU on the up branch instead of the gate",
                     "SiLU is applied to the wrong branch: it goes on the gate, silu(x @ "
                     "W_gate.T), and the up branch x @ W_up.T stays linear"),
        "sigmoid": M("sigmoid instead of SiLU (the original GLU)",
                     "this uses sigmoid(gate) (the original GLU); SwiGLU uses SiLU, gate * "
                     "sigmoid(gate), i.e. F.silu(gate)"),
        "gelu": M("GELU instead of SiLU (GEGLU)", "this uses GELU (that is GEGLU); SwiGLU uses "
                                                  "SiLU: F.silu"),
        "no_up": M("forgetting the up branch", "the up branch is missing: multiply silu(gate) by "
                                               "x @ W_up.T, number by number, before going down"),
        "silu_product": M("SiLU of the product", "SiLU goes on the gate only, before the "
                                                 "product: silu(gate) * up, not silu(gate * up)"),
        "added": M("adding the branches instead of multiplying",
                   "the gate multiplies the up branch (*), it is not added"),
        "no_down": M("forgetting the down-projection",
                     "the down-projection is missing: finish with @ W_down.T"),
        "transpose": M("a missing transpose", _TRANSPOSE),
        "inplace": INPLACE,
    },
    "swiglu_hidden_size": {
        "round_down": M("rounding down (or to the nearest) instead of up",
                        "round *up* to a multiple (math.ceil), so the SwiGLU FFN has at least as "
                        "many parameters as the GELU one"),
        "not_rounded": M("not rounding to the multiple at all",
                         "that is right before rounding; now round up to the next multiple"),
        "no_floor": M("rounding up without dropping the fraction first",
                      "drop the fraction first, int(8 * d_model / 3), as Llama does, then round "
                      "up to the multiple"),
        "always_up": M("`(h // m + 1) * m`, which moves a size that already is a multiple",
                       "when the size already is a multiple, keep it (math.ceil(h / m) * m, "
                       "not (h // m + 1) * m)"),
        "of_d_model": M("2/3 of d_model instead of 2/3 of 4 d_model",
                        "take 2/3 of the GELU FFN's hidden size 4 * d_model, not of d_model"),
        "too_big": M("a hidden size of 4 d_model or more",
                     "SwiGLU has three matrices instead of two, so its hidden size must be "
                     "*smaller* than 4 * d_model: solve 3 * d_model * h = 2 * d_model * (4 * "
                     "d_model)"),
        "type": _TYPE_INT,
    },
    "ffn_backward": {
        "autograd": forbidden("autograd (.backward, torch.autograd.grad)",
                              "chain the matrix products by hand; autograd is what the check "
                              "compares with"),
        "pre_act": M("grad_W_down from the pre-activations h instead of relu(h)",
                     "grad_W_down = grad_out.T @ relu(h): W_down multiplies the activations "
                     "after ReLU, not the pre-activations h"),
        "no_mask": M("skipping ReLU's derivative (the mask h > 0)",
                     "the gradient must pass through ReLU's derivative: multiply grad_out @ "
                     "W_down by (h > 0) before going back through W_up (a unit that did not "
                     "fire gets no gradient)"),
        "transposed": M("a weight gradient transposed",
                        "a gradient has the shape of what it is the gradient of: grad_W_up is "
                        "(d_ff, C) = grad_h.T @ x and grad_W_down is (C, d_ff) = grad_out.T @ a"),
        "grad_x": M("grad_x through W_up.T instead of W_up",
                    "grad_x = grad_h @ W_up (no transpose: the forward pass used W_up.T)"),
        "average": M("averaging the weight gradients over the N positions instead of summing",
                     "the weight gradients SUM the contributions of the N positions (no "
                     "division by N): the loss is not averaged here, grad_out already holds "
                     "dL/dy"),
        "shape": M("a product in the wrong order (wrong shape)",
                   "a gradient always has the shape of what it is the gradient of; check the "
                   "order (and transposes) of your product"),
        "type": M("returning a list of two, or a single tensor",
                  "return a tuple (grad_x, grad_W_up, grad_W_down)"),
        "inplace": INPLACE,
    },
}


_LINEAR_HINT = ("Weights use nn.Linear's layout (out_features, in_features), so a layer "
                "computes x @ W.T, not x @ W")


# ----------------------------------------------------------------------------- exercise 1


def _gelu_tanh_variant(x: Tensor, c: float = math.sqrt(2 / math.pi), cubic: float = 0.044715,
                       half: float = 0.5) -> Tensor:
    return half * x * (1 + torch.tanh(c * (x + cubic * x**3)))


@checker
def check_gelu_tanh(fn) -> None:
    """Exercise 1: fn(x) -> 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise."""
    H = MISTAKES["gelu_tanh"]
    g = torch.Generator().manual_seed(0)
    cases = [
        ("x = linspace(-6, 6, 121)", torch.linspace(-6, 6, 121)),
        ("x = 0 (a 0-d tensor)", torch.tensor(0.0)),
        ("x of shape (3, 4)", torch.randn(3, 4, generator=g) * 3),
        ("x of shape (2, 3, 5)", torch.randn(2, 3, 5, generator=g)),
        ("large |x|", torch.tensor([-30.0, -10.0, -5.0, 5.0, 10.0, 30.0])),
    ]
    for case, x in cases:
        with forbid(["torch.nn.functional.gelu"], "gelu_tanh", H["forbidden"]):
            got = call_tensors(fn, x.clone(), name="gelu_tanh", shape_hint=_LINEAR_HINT)
        mistakes = [
            (F.gelu(x), H["exact"].hint),
            (_gelu_tanh_variant(x, cubic=0.0), H["no_cubic"].hint),
            (_gelu_tanh_variant(x, c=1.0), H["no_sqrt"].hint),
            (_gelu_tanh_variant(x, c=2 / math.pi), H["constant"].hint),
            (_gelu_tanh_variant(x, c=math.sqrt(2 * math.pi)), H["constant"].hint),
            (_gelu_tanh_variant(x, half=1.0), H["no_half"].hint),
            (x * torch.sigmoid(x), H["silu"].hint),
            (0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * x + 0.044715 * x**3)),
             H["brackets"].hint),
            (0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**2))),
             H["square"].hint),
        ]
        compare("gelu_tanh", case, got, F.gelu(x, approximate="tanh"), mistakes,
                f"An activation works number by number: {H['shape'].hint}.", x=x)
    passed("gelu_tanh", len(cases))


# ----------------------------------------------------------------------------- exercise 2


def _count(d_model: int, d_ff: int, bias: bool, gated: bool) -> int:
    with torch.device("meta"):  # shapes only, no memory, so Llama sizes are free
        ffn = FeedForward(d_model, d_ff, activation="swiglu" if gated else "gelu", bias=bias)
    return sum(p.numel() for p in ffn.parameters())


@checker
def check_ffn_param_count(fn) -> None:
    """Exercise 2: fn(d_model, d_ff, bias, gated) -> the number of parameters of the FFN."""
    H = MISTAKES["ffn_param_count"]
    cases = [(768, 3072, True, False), (768, 3072, False, False), (6, 24, True, False),
             (1, 1, True, False), (768, 2048, False, True), (6, 16, True, True),
             (4096, 11008, False, True), (5, 7, True, True)]
    for d, h, bias, gated in cases:
        got = call(fn, d, h, bias, gated, name="ffn_param_count")
        case = f"ffn_param_count({d}, {h}, bias={bias}, gated={gated})"
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            fail(f"{case} returned {got!r} ({type(got).__name__}): {H['type'].hint}")
        want = _count(d, h, bias, gated)
        if got == want:
            continue
        n_mat = 3 if gated else 2
        weights = n_mat * d * h
        head = f"{case} should be {want:,}, got {got:,}"
        if bias and got == weights:
            fail(f"{head}: {H['no_bias'].hint}")
        if not bias and got == _count(d, h, True, gated):
            fail(f"{head}: {H['bias_anyway'].hint}")
        if bias and got == weights + n_mat * h:
            fail(f"{head}: {H['down_bias'].hint}")
        if gated and got == _count(d, h, bias, False):
            fail(f"{head}: {H['no_gate'].hint}")
        if gated and bias and got == want - h:
            fail(f"{head}: {H['gate_bias'].hint}")
        if got in (d * h, d * h + h, d * h + d):
            fail(f"{head}: {H['one_matrix'].hint}")
        fail(f"{head}. Count each nn.Linear(n_in, n_out): n_in * n_out weights, plus n_out "
             "biases when bias=True")
    passed("ffn_param_count", len(cases))


# ----------------------------------------------------------------------------- exercise 3

# (shape of x, d_ff); the square case comes first so a missing transpose gives wrong numbers
# (and its own hint) rather than a shape error
_FFN_CASES = [((2, 3, 4), 4), ((2, 5, 6), 24), ((7, 8), 32), ((8,), 16), ((1, 1, 3), 1)]


def _ffn_case(shape: tuple[int, ...], d_ff: int, seed: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = torch.randn(*shape, generator=g)
    W_up = torch.randn(d_ff, d, generator=g) / math.sqrt(d)
    b_up = torch.randn(d_ff, generator=g) * 0.5
    W_down = torch.randn(d, d_ff, generator=g) / math.sqrt(d_ff)
    b_down = torch.randn(d, generator=g) * 0.5
    return x, W_up, b_up, W_down, b_down


@checker
def check_ffn_forward(fn) -> None:
    """Exercise 3: fn(x, W_up, b_up, W_down, b_down) -> GELU FFN output, nn.Linear layout."""
    H = MISTAKES["ffn_forward"]
    for seed, (shape, d_ff) in enumerate(_FFN_CASES):
        x, W_up, b_up, W_down, b_down = args = _ffn_case(shape, d_ff, seed)
        got = call_tensors(fn, *(t.clone() for t in args), name="ffn_forward",
                           shape_hint=_LINEAR_HINT)
        ffn = FeedForward(shape[-1], d_ff, activation="gelu")
        with torch.no_grad():
            for layer, W, b in [(ffn.up_proj, W_up, b_up), (ffn.down_proj, W_down, b_down)]:
                layer.weight.copy_(W)
                layer.bias.copy_(b)
            want = ffn(x)
        h = x @ W_up.T + b_up
        mistakes = [
            (F.gelu(h @ W_down.T + b_down), H["act_after"].hint),
            (h @ W_down.T + b_down, H["no_act"].hint),
            (F.gelu(h, approximate="tanh") @ W_down.T + b_down, H["tanh"].hint),
            (F.relu(h) @ W_down.T + b_down, H["relu"].hint),
            (F.gelu(x @ W_up.T) @ W_down.T + b_down, H["no_b_up"].hint),
            (F.gelu(h) @ W_down.T, H["no_b_down"].hint),
            ((F.gelu(x @ W_up.T) + b_up) @ W_down.T + b_down, H["b_up_after"].hint),
        ]
        if shape[-1] == d_ff:  # square weights: a missing transpose runs, with wrong numbers
            for Wu, Wd in [(W_up, W_down), (W_up.T, W_down), (W_up, W_down.T)]:
                mistakes.append((F.gelu(x @ Wu + b_up) @ Wd + b_down, H["transpose"].hint))
        case = f"x of shape {shape}, d_ff = {d_ff}"
        compare("ffn_forward", case, got, want, mistakes,
                f"{H['shape'].hint} (..., d_model): up to d_ff, then back down.")
    passed("ffn_forward", len(_FFN_CASES))


# ----------------------------------------------------------------------------- exercise 4

_SWIGLU_CASES = [((2, 3, 4), 4), ((2, 5, 6), 16), ((7, 8), 12), ((4,), 3), ((1, 2, 5), 1)]


@checker
def check_swiglu(fn) -> None:
    """Exercise 4: fn(x, W_gate, W_up, W_down) -> (silu(x W_gate^T) * x W_up^T) W_down^T."""
    H = MISTAKES["swiglu"]
    for seed, (shape, d_ff) in enumerate(_SWIGLU_CASES):
        g = torch.Generator().manual_seed(100 + seed)
        d = shape[-1]
        x = torch.randn(*shape, generator=g)
        W_gate = torch.randn(d_ff, d, generator=g) / math.sqrt(d)
        W_up = torch.randn(d_ff, d, generator=g) / math.sqrt(d)
        W_down = torch.randn(d, d_ff, generator=g) / math.sqrt(d_ff)
        args = (x, W_gate, W_up, W_down)
        got = call_tensors(fn, *(t.clone() for t in args), name="swiglu",
                           shape_hint=_LINEAR_HINT)
        ffn = FeedForward(d, d_ff, activation="swiglu", bias=False)
        with torch.no_grad():
            ffn.gate_proj.weight.copy_(W_gate)
            ffn.up_proj.weight.copy_(W_up)
            ffn.down_proj.weight.copy_(W_down)
            want = ffn(x)
        gate, up = x @ W_gate.T, x @ W_up.T
        mistakes = [
            ((F.silu(up) * gate) @ W_down.T, H["silu_up"].hint),
            ((torch.sigmoid(gate) * up) @ W_down.T, H["sigmoid"].hint),
            ((F.gelu(gate) * up) @ W_down.T, H["gelu"].hint),
            (F.silu(gate) @ W_down.T, H["no_up"].hint),
            (F.silu(gate * up) @ W_down.T, H["silu_product"].hint),
            ((F.silu(gate) + up) @ W_down.T, H["added"].hint),
            ((F.silu(gate) * up), H["no_down"].hint),
        ]
        if d == d_ff:  # square weights: any missing transpose runs, with wrong numbers
            for t_gate, t_up, t_down in itertools.product([False, True], repeat=3):
                if t_gate and t_up and t_down:
                    continue  # all three transposed: the right answer
                Wg, Wu, Wd = (W.T if t else W for W, t in [(W_gate, t_gate), (W_up, t_up),
                                                           (W_down, t_down)])
                missing = [n for n, t in [("x @ W_gate.T", t_gate), ("x @ W_up.T", t_up),
                                          ("h @ W_down.T", t_down)] if not t]
                mistakes.append(((F.silu(x @ Wg) * (x @ Wu)) @ Wd,
                                 f"{H['transpose'].hint}; you are missing it in "
                                 + " and ".join(missing)))
        case = f"x of shape {shape}, d_ff = {d_ff}"
        compare("swiglu", case, got, want, mistakes,
                 "The output must have x's shape (..., d_model).")
    passed("swiglu", len(_SWIGLU_CASES))


# ----------------------------------------------------------------------------- exercise 5


def _hidden(d_model: int, multiple_of: int) -> int:
    h = int(2 * 4 * d_model / 3)  # as many weights as a GELU FFN of width 4 * d_model
    return multiple_of * math.ceil(h / multiple_of)


@checker
def check_swiglu_hidden_size(fn) -> None:
    """Exercise 5: fn(d_model, multiple_of) -> Llama's SwiGLU hidden size."""
    H = MISTAKES["swiglu_hidden_size"]
    cases = [(768, 256), (4096, 256), (5120, 256), (6, 1), (8, 1), (8, 8), (3, 4), (100, 64),
             (1, 1)]
    for d, m in cases:
        got = call(fn, d, m, name="swiglu_hidden_size")
        case = f"swiglu_hidden_size({d}, {m})"
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            fail(f"{case} returned {got!r} ({type(got).__name__}): {H['type'].hint}")
        want = _hidden(d, m)
        if got == want:
            continue
        head = f"{case} should be {want}, got {got}"
        exact = 8 * d / 3
        if got == m * math.floor(int(exact) / m) or got == m * round(int(exact) / m):
            fail(f"{head}: {H['round_down'].hint} of {m}")
        if got == int(exact) and m > 1:
            fail(f"{head}: {H['not_rounded'].hint} of {m}")
        if got == m * math.ceil(exact / m):
            fail(f"{head}: {H['no_floor'].hint}")
        if got == _hidden(d, 1) + m or got == m * (int(exact) // m + 1):
            fail(f"{head}: {H['always_up'].hint}")
        if got == m * math.ceil(int(2 * d / 3) / m):
            fail(f"{head}: {H['of_d_model'].hint}")
        if got >= 4 * d and d > 1:
            fail(f"{head}: {H['too_big'].hint}")
        fail(f"{head}: 3 * d_model * h weights must match "
             f"2 * d_model * 4 * d_model = {8 * d * d:,}, so h = 2/3 * 4 * d_model = {exact:.2f}; "
             f"drop the fraction, then round up to a multiple of {m}")
    passed("swiglu_hidden_size", len(cases))


# ----------------------------------------------------------------------------- exercise 6


def _backward_case(N: int, C: int, d_ff: int, seed: int, dead: bool = False):
    g = torch.Generator().manual_seed(200 + seed)
    x = torch.randn(N, C, generator=g)
    W_up = torch.randn(d_ff, C, generator=g) / math.sqrt(C)
    W_down = torch.randn(C, d_ff, generator=g) / math.sqrt(d_ff)
    grad_out = torch.randn(N, C, generator=g)
    if dead:  # unit 0 never fires: positive inputs, negative weights
        x = x.abs()
        W_up[0] = -W_up[0].abs()
    return x, W_up, W_down, grad_out


def _reference_backward(x, W_up, W_down, grad_out):
    x, W_up, W_down = (t.clone().requires_grad_(True) for t in (x, W_up, W_down))
    y = F.relu(x @ W_up.T) @ W_down.T  # (N, C)
    y.backward(grad_out)
    return x.grad, W_up.grad, W_down.grad


@checker
def check_ffn_backward(fn) -> None:
    """Exercise 6: fn(x, W_up, W_down, grad_out) -> (grad_x, grad_W_up, grad_W_down)."""
    H = MISTAKES["ffn_backward"]
    cases = [(5, 6, 6, False), (5, 4, 8, False), (1, 3, 5, False), (9, 4, 12, True)]  # square first
    names = ["grad_x", "grad_W_up", "grad_W_down"]
    for seed, (N, C, d_ff, dead) in enumerate(cases):
        args = _backward_case(N, C, d_ff, seed, dead)
        x, W_up, W_down, grad_out = args
        with forbid(AUTOGRAD_OPS, "ffn_backward", H["autograd"]):
            got = call_tensors(fn, *(t.clone() for t in args), name="ffn_backward", shape_hint=(
                "Write each tensor's shape next to its line: x (N, C), W_up (d_ff, C), W_down "
                "(C, d_ff), grad_out (N, C); (a, b) @ (b, c) needs the inner sizes to match, and "
                "every gradient has the shape of its tensor"))
        case = f"x of shape ({N}, {C}), d_ff = {d_ff}" + (" with a dead hidden unit" if dead
                                                          else "")
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            fail(f"ffn_backward on {case} returned {type(got).__name__}"
                 + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
                 + f": {H['type'].hint}")
        want = _reference_backward(*args)
        h = x @ W_up.T  # (N, d_ff) pre-activation
        a = F.relu(h)
        grad_a = grad_out @ W_down  # (N, d_ff)
        grad_h = grad_a * (h > 0)
        no_mask = grad_a  # gradient through ReLU taken as 1 everywhere
        shapes_in_backward_order = list(zip(names, got, want, ["x", "W_up", "W_down"],
                                            strict=True))[::-1]
        for name, gt, wt, of in shapes_in_backward_order:
            if isinstance(gt, Tensor) and gt.shape != wt.shape:
                key = "transposed" if gt.shape == wt.shape[::-1] and name != "grad_x" else "shape"
                fail(f"ffn_backward on {case}: {name} should have the shape of {of}, "
                     f"{shape_of(wt)}, got {shape_of(gt)}: {H[key].hint}")
        hints = {
            "grad_W_down": [(grad_out.T @ h, "pre_act"), (want[2] / N, "average"),
                            (a.T @ grad_out if d_ff == C else None, "transposed")],
            "grad_W_up": [(no_mask.T @ x, "no_mask"), (want[1] / N, "average"),
                          (x.T @ grad_h if d_ff == C else None, "transposed")],
            "grad_x": [(no_mask @ W_up, "no_mask"),
                       (grad_h @ W_up.T if d_ff == C else None, "grad_x")],
        }
        # check from the output backwards, the order backpropagation computes them
        for i in (2, 1, 0):
            mistakes = [(w, H[k].hint) for w, k in hints[names[i]] if w is not None and N > 1
                        or k != "average" and w is not None]
            compare(f"ffn_backward's {names[i]}", case, got[i], want[i], mistakes)
    passed("ffn_backward", len(cases))
