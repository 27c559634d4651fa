"""exercises/ is exactly what tools/make_exercises.py makes from solutions/, and the generator works.

Whether each check fails on its stub is verified when nbval runs exercises/: a check cell stores
the NotImplementedError the stub raises, so a check that passed (or failed differently) on the
stub would not match. Whether it passes on the solution is verified when nbval runs solutions/.
"""

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import make_exercises  # noqa: E402


def test_exercises_are_in_sync_with_solutions():
    expected = make_exercises.expected_files()
    assert expected, "no solutions/*.ipynb found"
    for path, text in expected.items():
        assert path.exists(), f"{path.name} is missing from exercises/: run `make exercises`"
        assert path.read_text(encoding="utf-8") == text, (
            f"exercises/{path.name} is stale: run `make exercises`"
        )
    extra = {p.name for p in (ROOT / "exercises").glob("*.ipynb")} - {p.name for p in expected}
    assert not extra, f"exercises without a solutions notebook: {sorted(extra)}"


def test_every_solutions_notebook_has_checked_exercises():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        solved = [c for c in nb.cells if c.cell_type == "code" and make_exercises.BEGIN in c.source]
        checks = [c for c in nb.cells if "check" in c.metadata.get("tags", [])]
        assert len(solved) >= 4, f"{path.name}: fewer than four exercises"
        assert len(checks) >= len(solved), f"{path.name}: an exercise without a check cell"
        for c in checks:  # nbval re-runs these and compares, so this is the live result
            shown = "".join(o.get("text", "") for o in c.outputs)
            assert "✓" in shown, f"{path.name}: check cell {c.source!r} does not pass"


def _code(source, tags=()):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = list(tags)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="old\n")]
    cell.execution_count = 3
    return cell


def test_stub_replaces_region_keeping_indentation():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n"
    new, top = make_exercises.stub_source(src)
    assert new == f'def f(x):\n    raise NotImplementedError("{make_exercises.STUB_MESSAGE}")\n'
    assert not top


def test_top_level_stub_and_check_cells_store_the_expected_error():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        _code("print('setup')"),
        _code("### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION"),
        _code("check(answer)", tags=["check"]),
        nbformat.v4.new_markdown_cell("solution notes"),
    ]
    nb.cells[3].metadata["tags"] = ["solutions-only"]
    ex = make_exercises.make_exercises(nb)
    assert len(ex.cells) == 3
    assert ex.cells[0].outputs == nb.cells[0].outputs  # untouched cells keep their outputs
    for cell in ex.cells[1:]:
        assert "raises-exception" in cell.metadata["tags"]
        assert cell.execution_count == 3  # a run cell, so nbval compares its stored error
        (out,) = cell.outputs
        assert out.ename == "NotImplementedError"
    assert "answer = 42" not in ex.cells[1].source


def test_unbalanced_markers_are_an_error():
    with pytest.raises(ValueError, match="unbalanced"):
        make_exercises.stub_source("### BEGIN SOLUTION\nx = 1\n")
