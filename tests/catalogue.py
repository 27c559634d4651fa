"""The catalogue of wrong answers: shared by tests/test_checks_chNN.py (see CONTRIBUTING.md).

Each chapter's test module lists `CATALOGUE = [Wrong(exercise, mistake, fn), ...]`, wrong
implementations written as a student would, and `SOLUTIONS = {exercise: fn}`. The tests prove
that the check `check_<exercise>` rejects each wrong answer with the hint of
`MISTAKES[exercise][mistake]`, passes the solution without a warning, and that every exercise
has at least eight wrong answers and every mistake in the table is shown to be caught.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

MIN_WRONG = 8


@dataclass(frozen=True)
class Wrong:
    exercise: str  # the key of MISTAKES, also the checker's name without "check_"
    mistake: str  # the key of MISTAKES[exercise] whose hint the check must give
    fn: Callable | tuple  # a tuple when the check takes several functions

    @property
    def id(self) -> str:
        return f"{self.exercise}-{self.mistake}"


def _fns(f) -> tuple:
    return f if isinstance(f, tuple) else (f,)


def stub(*args, **kwargs):
    raise NotImplementedError("exercise not solved yet")


def assert_rejected(module, wrong: Wrong) -> None:
    check = getattr(module, "check_" + wrong.exercise)
    hint = module.MISTAKES[wrong.exercise][wrong.mistake].hint
    with pytest.raises(AssertionError, match=re.compile(re.escape(hint), re.IGNORECASE)):
        check(*_fns(wrong.fn))


def assert_passes(module, exercise: str, fn, capsys) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a check must not leak warnings into the notebook
        getattr(module, "check_" + exercise)(*_fns(fn))
    assert "✓" in capsys.readouterr().out


def assert_stub_raises(module, exercise: str, n_fns: int = 1) -> None:
    with pytest.raises(NotImplementedError):
        getattr(module, "check_" + exercise)(*([stub] * n_fns))


def assert_complete(module, catalogue: list[Wrong], solutions: dict) -> None:
    """At least MIN_WRONG wrong answers per exercise; every table entry exercised; no typo."""
    assert set(solutions) == set(module.MISTAKES), "SOLUTIONS and MISTAKES name other exercises"
    per_exercise = Counter(w.exercise for w in catalogue)
    for ex in module.MISTAKES:
        assert per_exercise[ex] >= MIN_WRONG, f"{ex}: only {per_exercise[ex]} wrong answers"
        used = {w.mistake for w in catalogue if w.exercise == ex}
        missing = set(module.MISTAKES[ex]) - used
        assert not missing, f"{ex}: no wrong answer shows that {sorted(missing)} is caught"
    for w in catalogue:
        assert w.mistake in module.MISTAKES[w.exercise], f"unknown mistake {w.id}"
