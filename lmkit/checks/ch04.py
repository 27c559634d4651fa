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
from .common import call, call_tensors, compare, fail, passed, shape_of, unchanged

__all__ = ["check_gelu_tanh", "check_ffn_param_count", "check_ffn_forward", "check_swiglu",
           "check_swiglu_hidden_size", "check_ffn_backward"]



_LINEAR_HINT = ("Weights use nn.Linear's layout (out_features, in_features), so a layer "
                "computes x @ W.T, not x @ W")


# ----------------------------------------------------------------------------- exercise 1


def _gelu_tanh_variant(x: Tensor, c: float = math.sqrt(2 / math.pi), cubic: float = 0.044715,
                       half: float = 0.5) -> Tensor:
    return half * x * (1 + torch.tanh(c * (x + cubic * x**3)))


def check_gelu_tanh(fn) -> None:
    """Exercise 1: fn(x) -> 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise."""
    g = torch.Generator().manual_seed(0)
    cases = [
        ("x = linspace(-6, 6, 121)", torch.linspace(-6, 6, 121)),
        ("x = 0 (a 0-d tensor)", torch.tensor(0.0)),
        ("x of shape (3, 4)", torch.randn(3, 4, generator=g) * 3),
        ("x of shape (2, 3, 5)", torch.randn(2, 3, 5, generator=g)),
        ("large |x|", torch.tensor([-30.0, -10.0, -5.0, 5.0, 10.0, 30.0])),
    ]
    for case, x in cases:
        arg = x.clone()
        got = call_tensors(fn, arg, name="gelu_tanh", shape_hint=_LINEAR_HINT)
        unchanged("gelu_tanh", [x], [arg], "`x += ...` or `relu_()`")
        mistakes = [
            (F.gelu(x), "this is the exact GELU, x * Phi(x) with erf; the exercise asks for "
                        "the tanh approximation 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 "
                        "* x**3)))"),
            (_gelu_tanh_variant(x, cubic=0.0), "the 0.044715 * x**3 term inside the tanh is "
                                               "missing"),
            (_gelu_tanh_variant(x, c=1.0), "the factor sqrt(2 / math.pi) (about 0.7979) in "
                                           "front of (x + 0.044715 * x**3) is missing"),
            (_gelu_tanh_variant(x, c=2 / math.pi), "use sqrt(2 / pi), not 2 / pi"),
            (_gelu_tanh_variant(x, c=math.sqrt(2 * math.pi)), "use sqrt(2 / pi), not "
                                                              "sqrt(2 * pi)"),
            (_gelu_tanh_variant(x, half=1.0), "the leading factor 0.5 is missing"),
            (x * torch.sigmoid(x), "this is SiLU, x * sigmoid(x), not GELU"),
            (0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * x + 0.044715 * x**3)),
             "check the brackets: sqrt(2 / pi) multiplies the whole sum, "
             "sqrt(2 / pi) * (x + 0.044715 * x**3)"),
            (0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**2))),
             "the cubic term is 0.044715 * x**3 (x cubed), not x**2"),
        ]
        compare("gelu_tanh", case, got, F.gelu(x, approximate="tanh"), mistakes,
                 "An activation works number by number: the output has the input's shape.", x=x)
    passed("gelu_tanh", len(cases))


# ----------------------------------------------------------------------------- exercise 2


def _count(d_model: int, d_ff: int, bias: bool, gated: bool) -> int:
    with torch.device("meta"):  # shapes only, no memory, so Llama sizes are free
        ffn = FeedForward(d_model, d_ff, activation="swiglu" if gated else "gelu", bias=bias)
    return sum(p.numel() for p in ffn.parameters())


def check_ffn_param_count(fn) -> None:
    """Exercise 2: fn(d_model, d_ff, bias, gated) -> the number of parameters of the FFN."""
    cases = [(768, 3072, True, False), (768, 3072, False, False), (6, 24, True, False),
             (1, 1, True, False), (768, 2048, False, True), (6, 16, True, True),
             (4096, 11008, False, True), (5, 7, True, True)]
    for d, h, bias, gated in cases:
        got = call(fn, d, h, bias, gated, name="ffn_param_count")
        case = f"ffn_param_count({d}, {h}, bias={bias}, gated={gated})"
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            fail(f"{case} should return an int, got {got!r} ({type(got).__name__})")
        want = _count(d, h, bias, gated)
        if got == want:
            continue
        n_mat = 3 if gated else 2
        weights = n_mat * d * h
        if bias and got == weights:
            fail(f"{case} should be {want:,}, got {got:,}: you forgot the biases. Each nn.Linear "
                 "has one bias per output: d_ff for up_proj (and gate_proj), d_model for "
                 "down_proj")
        if not bias and got == _count(d, h, True, gated):
            fail(f"{case} should be {want:,}, got {got:,}: with bias=False the layers have no "
                 "bias vectors, only weight matrices")
        if bias and got == weights + n_mat * h:
            fail(f"{case} should be {want:,}, got {got:,}: down_proj's bias has d_model entries "
                 "(one per output of the layer), not d_ff")
        if gated and got == _count(d, h, bias, False):
            fail(f"{case} should be {want:,}, got {got:,}: a gated FFN (SwiGLU) has a third "
                 "matrix, gate_proj (d_model -> d_ff)" + (", with its own bias" if bias else ""))
        if gated and bias and got == want - h:
            fail(f"{case} should be {want:,}, got {got:,}: gate_proj has a bias too (d_ff "
                 "numbers)")
        fail(f"{case} should be {want:,}, got {got:,}. Count each nn.Linear(n_in, n_out): "
             "n_in * n_out weights, plus n_out biases when bias=True")
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


def check_ffn_forward(fn) -> None:
    """Exercise 3: fn(x, W_up, b_up, W_down, b_down) -> GELU FFN output, nn.Linear layout."""
    for seed, (shape, d_ff) in enumerate(_FFN_CASES):
        x, W_up, b_up, W_down, b_down = args = _ffn_case(shape, d_ff, seed)
        copies = [t.clone() for t in args]
        got = call_tensors(fn, *copies, name="ffn_forward", shape_hint=_LINEAR_HINT)
        unchanged("ffn_forward", list(args), copies, "`x += ...` or `relu_()`")
        ffn = FeedForward(shape[-1], d_ff, activation="gelu")
        with torch.no_grad():
            for layer, W, b in [(ffn.up_proj, W_up, b_up), (ffn.down_proj, W_down, b_down)]:
                layer.weight.copy_(W)
                layer.bias.copy_(b)
            want = ffn(x)
        h = x @ W_up.T + b_up
        mistakes = [
            (F.gelu(h @ W_down.T + b_down), "the activation goes between the two layers, "
                                            "gelu(x @ W_up.T + b_up), not after the "
                                            "down-projection"),
            (h @ W_down.T + b_down, "no activation: without GELU between them the two layers "
                                    "collapse into one linear map"),
            (F.gelu(h, approximate="tanh") @ W_down.T + b_down,
             "this uses the tanh approximation; use the exact GELU, F.gelu(h)"),
            (F.relu(h) @ W_down.T + b_down, "this uses ReLU; the exercise asks for GELU "
                                            "(F.gelu)"),
            (F.gelu(x @ W_up.T) @ W_down.T + b_down, "b_up is missing"),
            (F.gelu(h) @ W_down.T, "b_down is missing"),
            ((F.gelu(x @ W_up.T) + b_up) @ W_down.T + b_down, "b_up goes before the "
                                                             "activation: gelu(x @ W_up.T + b_up)"),
        ]
        if shape[-1] == d_ff:  # square weights: a missing transpose runs, with wrong numbers
            mistakes.append((F.gelu(x @ W_up + b_up) @ W_down + b_down,
                             "weights are in nn.Linear's layout (out_features, in_features): "
                             "compute x @ W_up.T and a @ W_down.T (you multiplied by W, not "
                             "W.T)"))
            mistakes.append((F.gelu(x @ W_up.T + b_up) @ W_down + b_down,
                             "the down-projection needs the transpose too: a @ W_down.T"))
            mistakes.append((F.gelu(x @ W_up + b_up) @ W_down.T + b_down,
                             "the up-projection needs the transpose: x @ W_up.T"))
        case = f"x of shape {shape}, d_ff = {d_ff}"
        compare("ffn_forward", case, got, want, mistakes,
                 "The output must have x's shape (..., d_model): up to d_ff, then back down.")
    passed("ffn_forward", len(_FFN_CASES))


# ----------------------------------------------------------------------------- exercise 4

_SWIGLU_CASES = [((2, 3, 4), 4), ((2, 5, 6), 16), ((7, 8), 12), ((4,), 3), ((1, 2, 5), 1)]


def check_swiglu(fn) -> None:
    """Exercise 4: fn(x, W_gate, W_up, W_down) -> (silu(x W_gate^T) * x W_up^T) W_down^T."""
    for seed, (shape, d_ff) in enumerate(_SWIGLU_CASES):
        g = torch.Generator().manual_seed(100 + seed)
        d = shape[-1]
        x = torch.randn(*shape, generator=g)
        W_gate = torch.randn(d_ff, d, generator=g) / math.sqrt(d)
        W_up = torch.randn(d_ff, d, generator=g) / math.sqrt(d)
        W_down = torch.randn(d, d_ff, generator=g) / math.sqrt(d_ff)
        args = (x, W_gate, W_up, W_down)
        copies = [t.clone() for t in args]
        got = call_tensors(fn, *copies, name="swiglu", shape_hint=_LINEAR_HINT)
        unchanged("swiglu", list(args), copies, "`x += ...` or `relu_()`")
        ffn = FeedForward(d, d_ff, activation="swiglu", bias=False)
        with torch.no_grad():
            ffn.gate_proj.weight.copy_(W_gate)
            ffn.up_proj.weight.copy_(W_up)
            ffn.down_proj.weight.copy_(W_down)
            want = ffn(x)
        gate, up = x @ W_gate.T, x @ W_up.T
        mistakes = [
            ((F.silu(up) * gate) @ W_down.T, "SiLU is applied to the wrong branch: it goes on "
                                             "the gate, silu(x @ W_gate.T), and the up branch "
                                             "x @ W_up.T stays linear"),
            ((torch.sigmoid(gate) * up) @ W_down.T, "this uses sigmoid(gate) (the original "
                                                    "GLU); SwiGLU uses SiLU, gate * "
                                                    "sigmoid(gate), i.e. F.silu(gate)"),
            ((F.gelu(gate) * up) @ W_down.T, "this uses GELU (that is GEGLU); SwiGLU uses "
                                             "SiLU: F.silu"),
            (F.silu(gate) @ W_down.T, "the up branch is missing: multiply silu(gate) by "
                                      "x @ W_up.T, number by number, before going down"),
            (F.silu(gate * up) @ W_down.T, "SiLU goes on the gate only, before the product: "
                                           "silu(gate) * up, not silu(gate * up)"),
            ((F.silu(gate) + up) @ W_down.T, "the gate multiplies the up branch (*), it is "
                                             "not added"),
            ((F.silu(gate) * up), "the down-projection is missing: finish with @ W_down.T"),
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
                                 "weights are in nn.Linear's layout (out_features, in_features):"
                                 " every product needs the transpose; you are missing it in "
                                 + " and ".join(missing)))
        case = f"x of shape {shape}, d_ff = {d_ff}"
        compare("swiglu", case, got, want, mistakes,
                 "The output must have x's shape (..., d_model).")
    passed("swiglu", len(_SWIGLU_CASES))


# ----------------------------------------------------------------------------- exercise 5


def _hidden(d_model: int, multiple_of: int) -> int:
    h = int(2 * 4 * d_model / 3)  # as many weights as a GELU FFN of width 4 * d_model
    return multiple_of * math.ceil(h / multiple_of)


def check_swiglu_hidden_size(fn) -> None:
    """Exercise 5: fn(d_model, multiple_of) -> Llama's SwiGLU hidden size."""
    cases = [(768, 256), (4096, 256), (5120, 256), (6, 1), (8, 1), (8, 8), (3, 4), (100, 64),
             (1, 1)]
    for d, m in cases:
        got = call(fn, d, m, name="swiglu_hidden_size")
        case = f"swiglu_hidden_size({d}, {m})"
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            fail(f"{case} should return an int, got {got!r} ({type(got).__name__}); "
                 "use int(...) and integer arithmetic")
        want = _hidden(d, m)
        if got == want:
            continue
        exact = 8 * d / 3
        if got == m * math.floor(int(exact) / m) or got == m * round(int(exact) / m):
            fail(f"{case} should be {want}, got {got}: round *up* to a multiple of {m} "
                 "(math.ceil), so the SwiGLU FFN has at least as many parameters as the GELU one")
        if got == int(exact) and m > 1:
            fail(f"{case} should be {want}, got {got}: {got} is right before rounding; now round "
                 f"up to the next multiple of {m}")
        if got == m * math.ceil(exact / m):
            fail(f"{case} should be {want}, got {got}: drop the fraction first, "
                 "int(8 * d_model / 3), as Llama does, then round up to the multiple")
        if got == _hidden(d, 1) + m or got == m * (int(exact) // m + 1):
            fail(f"{case} should be {want}, got {got}: when the size already is a multiple of "
                 f"{m}, keep it (math.ceil(h / {m}) * {m}, not (h // {m} + 1) * {m})")
        if got == m * math.ceil(int(2 * d / 3) / m):
            fail(f"{case} should be {want}, got {got}: take 2/3 of the GELU FFN's hidden size "
                 "4 * d_model, not of d_model")
        if got >= 4 * d and d > 1:
            fail(f"{case} should be {want}, got {got}: SwiGLU has three matrices instead of two, "
                 "so its hidden size must be *smaller* than 4 * d_model: solve "
                 "3 * d_model * h = 2 * d_model * (4 * d_model)")
        fail(f"{case} should be {want}, got {got}: 3 * d_model * h weights must match "
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


def check_ffn_backward(fn) -> None:
    """Exercise 6: fn(x, W_up, W_down, grad_out) -> (grad_x, grad_W_up, grad_W_down)."""
    cases = [(5, 4, 8, False), (1, 3, 5, False), (6, 6, 6, False), (9, 4, 12, True)]
    names = ["grad_x", "grad_W_up", "grad_W_down"]
    for seed, (N, C, d_ff, dead) in enumerate(cases):
        args = _backward_case(N, C, d_ff, seed, dead)
        x, W_up, W_down, grad_out = args
        copies = [t.clone() for t in args]
        got = call_tensors(fn, *copies, name="ffn_backward", shape_hint=(
            "Write each tensor's shape next to its line: x (N, C), W_up (d_ff, C), W_down "
            "(C, d_ff), grad_out (N, C); (a, b) @ (b, c) needs the inner sizes to match, and "
            "every gradient has the shape of its tensor"))
        unchanged("ffn_backward", list(args), copies, "`x += ...` or `relu_()`")
        case = f"x of shape ({N}, {C}), d_ff = {d_ff}" + (" with a dead hidden unit" if dead
                                                          else "")
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            fail(f"ffn_backward on {case} should return a tuple (grad_x, grad_W_up, "
                 f"grad_W_down), got {type(got).__name__}"
                 + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""))
        want = _reference_backward(*args)
        shapes_in_backward_order = list(zip(names, got, want, ["x", "W_up", "W_down"],
                                            strict=True))[::-1]
        for name, gt, wt, of in shapes_in_backward_order:
            if isinstance(gt, Tensor) and gt.shape != wt.shape:
                fail(f"ffn_backward on {case}: {name} should have the shape of {of}, "
                     f"{shape_of(wt)}, got {shape_of(gt)}. A gradient always has the shape of what "
                     "it is the gradient of; check the order (and transposes) of your product")
        h = x @ W_up.T  # (N, d_ff) pre-activation
        a = F.relu(h)
        grad_a = grad_out @ W_down  # (N, d_ff)
        no_mask = grad_a  # gradient through ReLU taken as 1 everywhere
        hints = {
            "grad_W_down": [
                (grad_out.T @ h, "grad_W_down = grad_out.T @ relu(h): W_down multiplies the "
                                 "activations after ReLU, not the pre-activations h"),
                (a.T @ grad_out if d_ff == C else None, "grad_W_down = grad_out.T @ a, shape "
                                                        "(C, d_ff): you have its transpose"),
            ],
            "grad_W_up": [
                (no_mask.T @ x, "the gradient must pass through ReLU's derivative: multiply "
                                "grad_out @ W_down by (h > 0) before going back through W_up "
                                "(a unit that did not fire gets no gradient)"),
                (x.T @ (grad_a * (h > 0)) if d_ff == C else None,
                 "grad_W_up = grad_h.T @ x, shape (d_ff, C): you have its transpose"),
            ],
            "grad_x": [
                (no_mask @ W_up, "the gradient must pass through ReLU's derivative: multiply "
                                 "grad_out @ W_down by (h > 0) before going back through W_up"),
                ((grad_a * (h > 0)) @ W_up.T if d_ff == C else None,
                 "grad_x = grad_h @ W_up (no transpose: the forward pass used W_up.T)"),
            ],
        }
        # check from the output backwards, the order backpropagation computes them
        for i in (2, 1, 0):
            mistakes = [(w, hint) for w, hint in hints[names[i]] if w is not None]
            compare(f"ffn_backward's {names[i]}", case, got[i], want[i], mistakes)
    passed("ffn_backward", len(cases))
