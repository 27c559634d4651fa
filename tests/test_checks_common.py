"""The shared checking machinery (lmkit/checks/common.py) and the generated mistakes lists."""

import sys
import traceback
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

from lmkit.checks import ch01, common
from lmkit.checks.common import INPLACE, Mistake, call, checker, forbid, grads_flow, guard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import mistakes  # noqa: E402


def test_call_rejects_in_place_changes_of_any_tensor_argument():
    def scale_(q, k):
        q /= 2
        return q @ k

    with pytest.raises(AssertionError, match=r"changed one of its input tensors in place, `q`") as e:
        call(scale_, torch.ones(2, 2), torch.ones(2, 2), name="f")
    assert INPLACE.hint in str(e.value)


def test_call_sees_module_parameters_lists_and_dicts():
    lin = torch.nn.Linear(2, 2)

    def shrink(x, m):
        with torch.no_grad():
            m.weight /= 2
        return m(x)

    with pytest.raises(AssertionError, match=r"in place, `m.weight`"):
        call(shrink, torch.ones(2), lin, name="f")
    with pytest.raises(AssertionError, match=r"in place, `ws\[1\]`"):
        call(lambda ws: ws[1].add_(1), [torch.zeros(1), torch.zeros(1)], name="f")
    with pytest.raises(AssertionError, match=r"in place, `ids`"):
        call(lambda ids: ids.pop(), [1, 2], name="f")
    with pytest.raises(AssertionError, match=r"in place, `d`"):
        call(lambda d: d.pop("a"), {"a": 1}, name="f")
    # allowed when the exercise is about changing an argument (an optimizer step)
    call(lambda p: p.data.mul_(2), torch.ones(1), name="f", may_change=(0,))
    # NaN inputs left alone are unchanged
    call(lambda x: x + 1, torch.tensor([float("nan")]), name="f")


def test_call_reports_crashes_with_the_cause():
    with pytest.raises(AssertionError, match=r"f\(1\) raised ZeroDivisionError") as e:
        call(lambda x: x / 0, 1, name="f")
    assert isinstance(e.value.__cause__, ZeroDivisionError)


def test_forbid_raises_the_hint_and_restores():
    gelu, backward = F.gelu, torch.Tensor.backward
    m = Mistake("calling F.gelu", "write GELU yourself")
    with pytest.raises(AssertionError, match=r"f calls `torch.nn.functional.gelu`: write GELU"):
        with forbid(["torch.nn.functional.gelu"], "f", m):
            call(lambda x: F.gelu(x), torch.ones(2), name="f")
    with pytest.raises(AssertionError, match="torch.Tensor.backward"):
        with forbid(common.AUTOGRAD_OPS, "f", m):
            x = torch.ones(2, requires_grad=True)
            call(lambda x: (x * 2).sum().backward(), x, name="f")
    with pytest.raises(AssertionError, match="nn.GELU goes through F.gelu"):
        with forbid(["torch.nn.functional.gelu"], "f", Mistake("", "nn.GELU goes through F.gelu")):
            call(lambda x: torch.nn.GELU()(x), torch.ones(2), name="f")
    assert F.gelu is gelu and torch.Tensor.backward is backward
    with forbid(["torch.nn.functional.gelu"], "f", m):  # other ops still work
        assert torch.equal(call(lambda x: torch.tanh(x), torch.zeros(2), name="f"), torch.zeros(2))


def test_guard_forbids_indexing_but_allows_matmul():
    W = guard(torch.eye(3), [torch.Tensor.__getitem__, F.embedding])
    m = Mistake("indexing W", "use one_hot @ W")
    with pytest.raises(AssertionError, match="use one_hot @ W"):
        with forbid([], "f", m):
            call(lambda ids, W: W[ids], torch.tensor([0, 2]), W, name="f")
    with pytest.raises(AssertionError, match="use one_hot @ W"):
        with forbid([], "f", m):
            call(lambda ids, W: F.embedding(ids, W), torch.tensor([0, 2]), W, name="f")
    out = F.one_hot(torch.tensor([0, 2]), 3).float() @ W
    assert torch.equal(out, torch.eye(3)[[0, 2]])


def test_grads_flow_catches_no_grad_and_detach():
    x = torch.randn(3, requires_grad=True)
    want = x * 2
    with pytest.raises(AssertionError, match=r"no gradient flows back"):
        with torch.no_grad():
            got = x * 2
        grads_flow("f", "case", got, want, {"x": x})
    w = torch.randn(3, requires_grad=True)
    with pytest.raises(AssertionError, match=r"no gradient reaches `w`"):
        grads_flow("f", "case", x * w.detach(), x * w, {"x": x, "w": w})
    grads_flow("f", "case", 2 * x, want, {"x": x})


@checker
def _a_check(fn):
    call(fn, 1, name="f")
    common.fail("the hint")


def test_checker_hides_its_own_frames():
    def student(x):
        return x / 0

    with pytest.raises(AssertionError) as e:
        _a_check(student)
    assert str(e.value).startswith("f(1) raised ZeroDivisionError")
    assert e.value.__cause__ is not None  # the student's crash stays visible ...
    frames = traceback.extract_tb(e.value.__cause__.__traceback__)
    assert frames[0].name == "student"  # ... starting at the student's code
    with pytest.raises(AssertionError) as e:
        _a_check(lambda x: x)
    assert str(e.value) == "the hint" and e.value.__cause__ is None
    assert e.value.__suppress_context__  # no "During handling of ..." chain of our internals
    frames = traceback.extract_tb(e.value.__traceback__)
    assert "fail" not in [f.name for f in frames] and "call" not in [f.name for f in frames]
    assert frames[-1].filename == "<lmkit check>"  # the last frame a student sees: the verdict
    assert "read the hint below" in frames[-1].line

    def stub(x):
        raise NotImplementedError("exercise not solved yet")

    with pytest.raises(NotImplementedError) as e:
        ch01.check_utf8_lengths(stub)
    names = [f.name for f in traceback.extract_tb(e.value.__traceback__)]
    assert names[-2:] == ["wrapper", "stub"]  # the checker's own frames are gone


def test_mistakes_lists_are_fresh():
    """Every solutions notebook shows the list its checker's table gives (run
    `python tools/mistakes.py`, or `make exercises`, after changing a table)."""
    for path, text in mistakes.expected_files().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name}: a Common mistakes list is stale: run python tools/mistakes.py")


def test_mistakes_tool_is_idempotent_and_replaces_its_cell():
    nb = nbformat.v4.new_notebook()
    check = nbformat.v4.new_code_cell("ch01.check_utf8_lengths(utf8_lengths)")
    check.metadata["tags"] = ["check"]
    nb.cells = [nbformat.v4.new_markdown_cell("## Exercise 1"), check]
    once = mistakes.with_mistakes(nb)
    assert [c.cell_type for c in once.cells] == ["markdown", "code", "markdown"]
    assert "UTF-16" in once.cells[2].source
    once.cells[2].source = "stale"
    twice = mistakes.with_mistakes(once)
    assert nbformat.writes(twice) == nbformat.writes(mistakes.with_mistakes(nb))
    once.cells[1].source = "print('no check any more')"
    assert len(mistakes.with_mistakes(once).cells) == 2  # a list without its check goes


def test_compare_names_the_wrong_value_of_a_bool_tensor():
    # subtracting bool tensors is an error in torch: the generic message must not crash
    with pytest.raises(AssertionError, match=r"wrong values, largest error 1 at index \(1,\)"):
        common.compare("mask", "a case", torch.tensor([True, False]), torch.tensor([True, True]), [])


def test_compare_names_a_mistake_whatever_its_shape_and_checks_dtype_last():
    """A known mistake that changes the shape gets its own hint, not the generic shape message
    (checkers had special cases for this); right values in another dtype get the dtype hint;
    a mistake that happens to equal the right answer never fails a right answer."""
    want = torch.arange(6.0).view(2, 3)
    short = want[1:]  # e.g. one row left out
    with pytest.raises(AssertionError, match="a case: you left out the first row$"):
        common.compare("f", "a case", short.clone(), want, [(short, "you left out the first row")])
    with pytest.raises(AssertionError, match=r"expected shape \(2, 3\), got \(3,\)\. one per row"):
        common.compare("f", "a case", torch.zeros(3), want, [(short, "no")],
                       shape_hint="one per row")
    with pytest.raises(AssertionError, match="expected dtype torch.float32, got torch.float64: "
                                             "keep float32"):
        common.compare("f", "a case", want.double(), want, [(want.double(), "no")],
                       dtype_hint="keep float32")
    common.compare("f", "a case", want.clone(), want, [(want, "coincides with the right one")])
