"""Helpers shared by the chapter checkers: calling the student's code, comparing tensors, hints."""

from __future__ import annotations

import torch
from torch import Tensor

ATOL, RTOL = 1e-5, 1e-4  # float32 arithmetic done in a different order stays well within these


def passed(name: str, n_cases: int) -> None:
    """Tell the student the check passed (the one place lmkit prints on purpose)."""
    print(f"✓ {name}: all {n_cases} cases passed")


def fail(hint: str) -> None:
    raise AssertionError(hint)


def call(fn, *args, name: str):
    """Call the student's function; a NotImplementedError from the stub passes through as is."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as e:  # show what crashed, with the input that made it crash
        shown = ", ".join(_short(a) for a in args)
        raise AssertionError(f"{name}({shown}) raised {type(e).__name__}: {e}") from e


def call_tensors(fn, *args, name: str, shape_hint: str = ""):
    """`call`, reporting a crash with the shapes of the tensor inputs rather than their values,
    plus `shape_hint` when the crash is a shape mismatch."""
    try:
        return call(fn, *args, name=name)
    except AssertionError as e:
        err = e.__cause__
        if err is None:
            raise
        shapes = ", ".join(str(shape_of(a)) for a in args)
        msg = f"{name} raised {type(err).__name__}: {err}\nThe inputs had shapes {shapes}."
        mismatch = ("cannot be multiplied", "size of tensor", "must match the size", "mismatch")
        if shape_hint and any(s in str(err) for s in mismatch):
            msg += " " + shape_hint
        raise AssertionError(msg) from err


def shape_of(t) -> tuple[int, ...] | str:
    """A tensor's shape as a tuple; for anything else, its type name."""
    return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__


def close(a, b, atol: float = ATOL, rtol: float = RTOL, equal_nan: bool = False) -> bool:
    """Both tensors, same shape, equal within tolerance (compared in float64)."""
    return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape
            and torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=equal_nan))


def compare(name: str, case: str, got, want: Tensor, mistakes: list[tuple[Tensor, str]],
            shape_hint: str = "", x: Tensor | None = None, nan_hint: str = "") -> None:
    """Fail with the most useful hint unless `got` is a tensor close to `want`.

    `mistakes` pairs the output of a typical mistake with its hint; `x`, for an elementwise
    function, lets the message name the input where the error is largest; `nan_hint` explains
    a NaN in the output.
    """
    if not isinstance(got, Tensor):
        fail(f"{name} on {case} should return a torch.Tensor, got {type(got).__name__}"
             + (" (did you forget `return`?)" if got is None else ""))
    if got.shape != want.shape:
        fail(f"{name} on {case}: expected shape {shape_of(want)}, got {shape_of(got)}. {shape_hint}")
    if got.dtype != want.dtype:
        fail(f"{name} on {case}: expected dtype {want.dtype}, got {got.dtype}")
    if close(got, want):
        return
    if nan_hint and got.isnan().any():
        fail(f"{name} on {case}: your output contains NaN. {nan_hint}")
    for wrong, hint in mistakes:
        if close(got, wrong, equal_nan=True):
            fail(f"{name} on {case}: {hint}")
    err = (got - want).abs()
    i = int(err.argmax())
    if x is not None:  # elementwise: say at which input
        where = f"x = {x.flatten()[i]:.4f}"
    else:
        where = f"index {tuple(int(j) for j in torch.unravel_index(torch.tensor(i), want.shape))}"
    fail(f"{name} on {case}: wrong values, largest error {err.max():.3g} at {where} "
         f"(expected {want.flatten()[i]:.6f}, got {got.flatten()[i]:.6f})")


def unchanged(name: str, before: list[Tensor], after: list[Tensor], example: str) -> None:
    """Fail if the student's function changed an input tensor in place."""
    if any(not torch.equal(a, b) for a, b in zip(before, after)):
        fail(f"{name} changed one of its input tensors in place (e.g. {example}); compute new "
             "tensors instead")


def _short(x, limit: int = 60) -> str:
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."
