"""Generate exercises/NN_topic.ipynb from solutions/NN_topic.ipynb (the single source).

In a solutions notebook:
- code between `### BEGIN SOLUTION` and `### END SOLUTION` becomes a stub that raises
  `NotImplementedError(STUB_MESSAGE)`, indented like the code it replaces;
- a cell tagged `check` runs a checker; in the exercises it keeps its source and stores the
  error the stub raises, and is tagged `raises-exception`, so nbval verifies that the check
  really fails until the exercise is solved (a check that passed on the stub would differ);
- a cell tagged `solutions-only` is left out of the exercises.
Every other cell is copied with its stored outputs.

First it runs tools/mistakes.py, which writes the "Common mistakes" list under each exercise
of solutions/ from the checkers' tables.

Usage: python tools/make_exercises.py [--check]   (--check: exit 1 if exercises/ or a mistakes
list in solutions/ is stale)
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB_MESSAGE = "exercise not solved yet: replace this line with your code"
_REGION = re.compile(
    rf"^(?P<indent>[ \t]*){re.escape(BEGIN)}[^\n]*\n(?P<body>.*?)^[ \t]*{re.escape(END)}[^\n]*(\n|$)",
    re.S | re.M,
)


def stub_source(source: str) -> tuple[str, bool]:
    """Replace each solution region; return the new source and whether a stub sits at top level."""
    top_level = False

    def replace(m: re.Match) -> str:
        nonlocal top_level
        indent = m.group("indent")
        top_level |= indent == ""
        end = "\n" if m.group(0).endswith("\n") else ""
        return f'{indent}raise NotImplementedError("{STUB_MESSAGE}"){end}'

    new = _REGION.sub(replace, source)
    if BEGIN in new or END in new:
        raise ValueError(f"unbalanced solution markers in cell:\n{source}")
    return new, top_level


def _error_output() -> dict:
    return nbformat.v4.new_output(
        "error",
        ename="NotImplementedError",
        evalue=STUB_MESSAGE,
        traceback=[f"NotImplementedError: {STUB_MESSAGE}"],
    )


def make_exercises(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student version of one solutions notebook."""
    nb = copy.deepcopy(solution)
    cells = []
    for cell in nb.cells:
        tags = list(cell.metadata.get("tags", []))
        if "solutions-only" in tags:
            continue
        if cell.cell_type == "code":
            source, raises = stub_source(cell.source)
            is_check = "check" in tags
            if source != cell.source or is_check:
                cell.source = source
                if raises or is_check:  # nbval compares a stored output only on a run cell
                    cell.outputs = [_error_output()]
                else:
                    cell.outputs, cell.execution_count = [], None
                if (raises or is_check) and "raises-exception" not in tags:
                    tags.append("raises-exception")
                cell.metadata["tags"] = tags
        cells.append(cell)
    nb.cells = cells
    return nb


def expected_files() -> dict[Path, str]:
    """exercises/ path -> the text the generator writes there."""
    out = {}
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        out[ROOT / "exercises" / path.name] = nbformat.writes(make_exercises(nb)) + "\n"
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    sys.path.insert(0, str(ROOT / "tools"))
    import mistakes

    if mistakes.main(argv):
        return 1
    stale = []
    for path, text in expected_files().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if check and stale:
        print("stale: " + ", ".join(str(p.relative_to(ROOT)) for p in stale) + "; run make exercises")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
