"""Helpers shared by the chapter checkers."""

from __future__ import annotations


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


def _short(x, limit: int = 60) -> str:
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."
