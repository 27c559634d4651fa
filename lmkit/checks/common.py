"""Helpers shared by the chapter checkers: calling the student's code, comparing tensors, hints.

Every checker module keeps its hints in one table, ``MISTAKES`` (exercise -> {key: Mistake}).
The checks quote ``Mistake.hint`` when they recognise a mistake, ``tools/mistakes.py`` writes
the "Common mistakes" list under each exercise from ``Mistake.what``, and the catalogue in
``tests/test_checks_chNN.py`` proves that a wrong answer of each kind gets its hint.
"""

from __future__ import annotations

import copy
import functools
import inspect
import linecache
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

ATOL, RTOL = 1e-5, 1e-4  # float32 arithmetic done in a different order stays well within these
_HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Mistake:
    """One typical mistake: `what` the student did (the notebook lists it), and the `hint` the
    check gives when it sees it (what to change)."""

    what: str
    hint: str


# Mistakes any exercise can make; a chapter's table includes those its checks can report.
INPLACE = Mistake(
    "changing an input in place (`x += ...`, `q /= ...`, `masked_fill_`, `W /= ...`)",
    "your function must not modify its inputs (the caller still needs them): write "
    "`x = x + y` rather than `x += y`, `masked_fill` rather than `masked_fill_`, and compute "
    "new tensors rather than changing the arguments or a module's parameters")
NO_RETURN = Mistake("forgetting `return` (the function returns None)",
                    "the function returned None: did you forget `return`?")
NO_GRAD = Mistake(
    "computing under `torch.no_grad()` or with `.detach()`/`.item()` (no gradient flows back)",
    "no gradient flows back through your output: do not use torch.no_grad(), .detach(), "
    ".item(), .numpy() or .data; build the result from the input tensors with torch operations")
OVERFLOW = Mistake(
    "taking `exp` of large logits without subtracting the maximum first (overflow to inf/NaN)",
    "exp overflows for large logits (exp(1000) = inf, inf / inf = NaN): subtract each row's "
    "maximum (`x - x.max(dim=-1, keepdim=True).values`) before exp; it does not change the "
    "softmax")


def forbidden(op: str, why: str = "") -> Mistake:
    """The mistake of calling `op`, which the exercise asks the student to write by hand."""
    return Mistake(f"calling `{op}` instead of writing it out",
                   f"this exercise asks you to write it out yourself, without `{op}`" +
                   (f": {why}" if why else ""))


def passed(name: str, n_cases: int) -> None:
    """Tell the student the check passed (the one place lmkit prints on purpose)."""
    print(f"✓ {name}: all {n_cases} cases passed")


def fail(hint: str) -> None:
    raise AssertionError(hint)


# --------------------------------------------------------------------------- clean tracebacks


def _student_tb(tb):
    """`tb` without its leading frames inside lmkit/checks (the student's frames first)."""
    t = tb
    while t is not None and os.path.dirname(os.path.abspath(t.tb_frame.f_code.co_filename)) == _HERE:
        t = t.tb_next
    return t if t is not None else tb


def checker(check: Callable) -> Callable:
    """Decorate every `check_*` function: a failed check raises a fresh AssertionError carrying
    only the hint (plus, when the student's code crashed, that crash with the student's own
    frames), so the traceback shows the student's code and the hint, not the checker's source."""

    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        __tracebackhide__ = True  # IPython and pytest hide this frame
        try:
            return check(*args, **kwargs)
        except AssertionError as e:
            cause = e.__cause__
            if cause is not None and cause.__traceback__ is not None:
                cause = cause.with_traceback(_student_tb(cause.__traceback__))
            err = AssertionError(str(e))
        except NotImplementedError as e:  # the stub: show the student's line that raised it
            raise e.with_traceback(_student_tb(e.__traceback__)) from None
        # raised from a one-line code object without a source file, so that the last frame
        # the student sees is the check's verdict, not the checker's code
        exec(_VERDICT, {"hint": err, "cause": cause})

    return wrapper


_VERDICT_FILE = "<lmkit check>"
_VERDICT_SRC = "raise hint from cause  # your answer was rejected: read the hint below\n"
_VERDICT = compile(_VERDICT_SRC, _VERDICT_FILE, "exec")
linecache.cache[_VERDICT_FILE] = (len(_VERDICT_SRC), None, [_VERDICT_SRC], _VERDICT_FILE)


# --------------------------------------------------------------------------- calling the student


class _Forbidden(Exception):
    """Raised by an operation the exercise forbids, while the student's function runs."""


def _arg_names(fn, n: int) -> list[str]:
    try:
        params = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"argument {i + 1}" for i in range(n)]


def _tensors_in(obj, path: str) -> Iterator[tuple[str, Tensor]]:
    """Every tensor reachable from an argument: tensors, a module's parameters and buffers,
    and the items of lists, tuples and dicts."""
    if isinstance(obj, Tensor):
        yield path, obj
    elif isinstance(obj, nn.Module):
        for n, p in obj.named_parameters():
            yield f"{path}.{n}", p
        for n, b in obj.named_buffers():
            yield f"{path}.{n}", b
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _tensors_in(item, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, item in obj.items():
            yield from _tensors_in(item, f"{path}[{k!r}]")


def _snapshot(args, skip: Sequence[int]) -> list[tuple[int, str, Tensor, Tensor]]:
    """(argument position, path inside it, the tensor, a copy of its values) for every input."""
    out = []
    for i, a in enumerate(args):
        if i in skip:
            continue
        for path, t in _tensors_in(a, ""):
            out.append((i, path, t, t.detach().clone()))
        if isinstance(a, (list, dict, set)) and not any(True for _ in _tensors_in(a, "")):
            out.append((i, "", a, copy.deepcopy(a)))  # a plain list of ids, a dict of merges
    return out


def _same(a, b) -> bool:
    if not isinstance(a, Tensor):
        return a == b
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def call(fn, *args, name: str, may_change: Sequence[int] = ()):
    """Call the student's function and check it left its tensor inputs (and the parameters of
    module inputs) as they were, except the arguments at positions `may_change`.

    A NotImplementedError from the stub passes through; any other crash becomes an
    AssertionError naming the call, with the crash as its cause."""
    __tracebackhide__ = True
    before = _snapshot(args, may_change)
    names = _arg_names(fn, len(args))
    try:
        out = fn(*args)
    except (NotImplementedError, _Forbidden):
        raise
    except Exception as e:  # show what crashed, with the input that made it crash
        if "in-place operation" in str(e) or "inplace operation" in str(e):
            raise AssertionError(f"{name} raised {type(e).__name__}: {e}\n{INPLACE.hint}") from e
        if "GuardedTensor" in str(e):  # a module built around a guarded tensor (nn.Embedding)
            raise _Forbidden("a module or Parameter built from the guarded tensor") from None
        shown = ", ".join(_short(a) for a in args)
        raise AssertionError(f"{name}({shown}) raised {type(e).__name__}: {e}") from e
    for i, path, t, saved in before:
        if not _same(t.detach() if isinstance(t, Tensor) else t, saved):
            fail(f"{name} changed one of its input tensors in place, `{names[i]}{path}`: "
                 f"{INPLACE.hint}")
    return out


def call_tensors(fn, *args, name: str, shape_hint: str = "", may_change: Sequence[int] = ()):
    """`call`, reporting a crash with the shapes of the tensor inputs rather than their values,
    plus `shape_hint` when the crash is a shape mismatch."""
    try:
        return call(fn, *args, name=name, may_change=may_change)
    except AssertionError as e:
        err = e.__cause__
        if err is None or INPLACE.hint in str(e):
            raise
        shapes = ", ".join(str(shape_of(a)) for a in args)
        msg = f"{name} raised {type(err).__name__}: {err}\nThe inputs had shapes {shapes}."
        mismatch = ("cannot be multiplied", "size of tensor", "must match the size", "mismatch")
        if shape_hint and any(s in str(err) for s in mismatch):
            msg += " " + shape_hint
        raise AssertionError(msg) from err


def _resolve(dotted: str):
    """'torch.nn.functional.gelu' -> (torch.nn.functional, 'gelu')."""
    parts = dotted.split(".")
    obj = __import__(parts[0])
    for p in parts[1:-1]:
        obj = getattr(obj, p)
    return obj, parts[-1]


@contextmanager
def forbid(ops: Sequence[str], name: str, mistake: Mistake):
    """While the block runs, each operation in `ops` (dotted names such as
    'torch.nn.functional.gelu' or 'torch.Tensor.backward') raises, and the check fails with
    `mistake.hint` naming the operation the student called."""
    saved = []
    for dotted in ops:
        owner, attr = _resolve(dotted)

        def raiser(*args, _op=dotted, **kwargs):
            raise _Forbidden(_op)

        saved.append((owner, attr, owner.__dict__.get(attr, getattr(owner, attr))))
        setattr(owner, attr, raiser)
    try:
        yield
    except _Forbidden as e:
        fail(f"{name} calls `{e}`: {mistake.hint}")
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


AUTOGRAD_OPS = ("torch.Tensor.backward", "torch.autograd.backward", "torch.autograd.grad",
                "torch.func.grad", "torch.func.vjp")


class _Guarded(Tensor):
    """A tensor on which some torch functions raise (see `guard`)."""

    _forbidden: frozenset = frozenset()

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls._forbidden:
            raise _Forbidden(getattr(func, "__name__", str(func)))
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        if func in _KEEP_GUARD and isinstance(out, Tensor):  # W.detach()[ids] is indexing too
            out = out.as_subclass(cls)
        return out


_KEEP_GUARD = {Tensor.detach, Tensor.clone, Tensor.contiguous, Tensor.to, Tensor.float,
               Tensor.double, Tensor.cpu, Tensor.view, Tensor.reshape, Tensor.t, Tensor.transpose,
               Tensor.permute, Tensor.T.__get__, Tensor.mT.__get__, Tensor.data.__get__,
               Tensor.flatten, Tensor.squeeze, Tensor.unsqueeze, Tensor.expand,
               Tensor.requires_grad_}


def guard(t: Tensor, funcs: Sequence) -> Tensor:
    """`t` as a tensor on which each of `funcs` (e.g. Tensor.__getitem__, F.embedding) raises;
    run the call inside `forbid([], ...)` to turn that into the exercise's hint."""
    cls = type("GuardedTensor", (_Guarded,), {"_forbidden": frozenset(funcs)})
    return t.as_subclass(cls)


# --------------------------------------------------------------------------- comparing


def perturbed(module: torch.nn.Module, seed: int, scale: float) -> torch.nn.Module:
    """`module` in eval mode with N(0, scale^2) noise added to every parameter (norm weights
    and biases too, which start as ones and zeros): mixing up two of them then shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def sentence(hint: str) -> str:
    """A table hint as a sentence of its own: capitalised, with a full stop."""
    return hint[0].upper() + hint[1:] + ("" if hint.endswith(".") else ".")


def shape_of(t) -> tuple[int, ...] | str:
    """A tensor's shape as a tuple; for anything else, its type name."""
    return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__


def close(a, b, atol: float = ATOL, rtol: float = RTOL, equal_nan: bool = False) -> bool:
    """Both tensors, same shape, equal within tolerance (compared in float64)."""
    return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape
            and torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol,
                               equal_nan=equal_nan))


def compare(name: str, case: str, got, want: Tensor, mistakes: list[tuple[Tensor, str]],
            shape_hint: str = "", x: Tensor | None = None, nan_hint: str = "",
            dtype_hint: str = "") -> None:
    """Fail with the most useful hint unless `got` is a tensor close to `want`, of its dtype.

    `mistakes` pairs the output of a typical mistake with its hint; it is named whatever its
    shape or dtype (a mistake may change the shape). `shape_hint` and `dtype_hint` explain a
    wrong shape or dtype otherwise; `x`, for an elementwise function, lets the message name the
    input where the error is largest; `nan_hint` explains a NaN in the output. (Input purity is
    checked by `call`, which every check uses.)
    """
    if not isinstance(got, Tensor):
        fail(f"{name} on {case} should return a torch.Tensor, got {type(got).__name__}"
             + (f" ({NO_RETURN.hint})" if got is None else ""))
    right_values = close(got, want)  # (same shape, compared in float64)
    if right_values and got.dtype == want.dtype:
        return
    if not right_values:
        for wrong, hint in mistakes:
            if close(got, wrong, equal_nan=True):
                fail(f"{name} on {case}: {hint}")
    if got.shape != want.shape:
        fail(f"{name} on {case}: expected shape {shape_of(want)}, got {shape_of(got)}. {shape_hint}")
    if got.dtype != want.dtype:
        fail(f"{name} on {case}: expected dtype {want.dtype}, got {got.dtype}"
             + (f": {dtype_hint}" if dtype_hint else ""))
    if nan_hint and not torch.isfinite(got).all() and torch.isfinite(want).all():
        fail(f"{name} on {case}: your output contains NaN or inf. {nan_hint}")
    g, w = got.detach().double(), want.detach().double()  # also bool and integer tensors
    err = (g - w).abs()
    i = int(err.nan_to_num(math.inf).argmax())
    if x is not None:  # elementwise: say at which input
        where = f"x = {x.flatten()[i]:.4f}"
    else:
        where = f"index {tuple(int(j) for j in torch.unravel_index(torch.tensor(i), want.shape))}"
    if want.dtype == torch.bool:  # a mask: True/False, not 1.000000/0.000000
        values = f"expected {bool(w.flatten()[i])}, got {bool(g.flatten()[i])}"
    elif not want.dtype.is_floating_point:  # indices, token ids: 6, not 6.000000
        values = f"expected {int(w.flatten()[i])}, got {int(g.flatten()[i])}"
    else:
        values = f"expected {w.flatten()[i]:.6f}, got {g.flatten()[i]:.6f}"
    fail(f"{name} on {case}: wrong values, largest error {err.max():.3g} at {where} ({values})")


def grads_flow(name: str, case: str, got: Tensor, want: Tensor, wrt: dict[str, Tensor]) -> None:
    """Fail unless gradients flow from `got` back to every tensor in `wrt` and equal those of
    `want` (both computed from the same `wrt` leaves, which must require grad)."""
    if not got.requires_grad:
        fail(f"{name} on {case}: {NO_GRAD.hint}")
    r = torch.randn(want.shape, generator=torch.Generator().manual_seed(0), dtype=want.dtype)
    leaves = list(wrt.values())
    g_got = torch.autograd.grad((got * r).sum(), leaves, allow_unused=True, retain_graph=True)
    g_want = torch.autograd.grad((want * r).sum(), leaves, allow_unused=True, retain_graph=True)
    for n, gg, gw in zip(wrt, g_got, g_want):
        if gg is None and gw is not None:
            fail(f"{name} on {case}: no gradient reaches `{n}`. {NO_GRAD.hint}")
        if gw is not None and not close(gg, gw, atol=1e-4, rtol=1e-3):
            fail(f"{name} on {case}: the gradient with respect to `{n}` is wrong, though the "
                 "output is right: build the output from the inputs with torch operations only")


def unchanged(name: str, before: list[Tensor], after: list[Tensor], example: str) -> None:
    """Fail if the student's function changed an input tensor in place (`call` already checks
    this for every argument; kept for checks that compare copies themselves)."""
    if any(not _same(a, b) for a, b in zip(before, after)):
        fail(f"{name} changed one of its input tensors in place (e.g. {example}): {INPLACE.hint}")


def _short(x, limit: int = 60) -> str:
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."
