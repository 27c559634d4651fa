"""Execute notebooks top to bottom in place, so their stored outputs are what students see.

Also normalises metadata: the `lmkit` kernel, and slide types for presenting a chapter
(`# ` or `## ` headings start a slide, `### ` a sub-slide, everything else continues it)
unless a cell sets its own `slideshow` metadata.

Chapters' per-section run times go to tools/lecture_timings.json (read by tools/instructors.py
for the lecture plans in INSTRUCTORS.md).

Usage: python tools/run_notebooks.py chapters/01_tokenization.ipynb [...]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

KERNELSPEC = {"name": "lmkit", "display_name": "Python (lmkit)", "language": "python"}
# Live slides (jupyterlab-rise): a 1280x720 stage, and a tall slide scrolls rather than being cut.
RISE = {"width": 1280, "height": 720, "scroll": True, "transition": "slide"}


def normalise(nb: nbformat.NotebookNode) -> None:
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["rise"] = dict(RISE)
    for cell in nb.cells:
        for key in ("execution", "lines_to_next_cell"):  # timings; jupytext's layout hints
            cell.metadata.pop(key, None)
        if "widget" in cell.metadata.get("tags", []):
            cell.outputs = []  # a live ipywidgets control works only with a kernel; a static
            # figure stands in the cell before it, so the stored notebook reads without one
        if "slideshow" in cell.metadata:
            continue
        slide = "-"
        if cell.cell_type == "markdown":
            first = cell.source.lstrip().split("\n", 1)[0]
            if first.startswith(("# ", "## ")):
                slide = "slide"
            elif first.startswith("### "):
                slide = "subslide"
        cell.metadata["slideshow"] = {"slide_type": slide}


TIMINGS = Path(__file__).resolve().parent / "lecture_timings.json"


def run(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    normalise(nb)
    start = time.perf_counter()
    NotebookClient(
        nb,
        timeout=600,
        kernel_name=KERNELSPEC["name"],
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=True,
    ).execute()
    seconds = time.perf_counter() - start
    if path.parent.name == "chapters":
        record_timings(path, nb, seconds)
    normalise(nb)  # drops the per-cell timestamps again: stored notebooks stay deterministic
    nbformat.write(nb, path)
    return seconds


def record_timings(path: Path, nb: nbformat.NotebookNode, total: float) -> None:
    """Store the run time of each `##` section of a chapter in tools/lecture_timings.json."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from instructors import section_seconds

    table = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    table[path.stem[:2]] = {"total_s": round(total, 1), "sections_s": section_seconds(nb)}
    TIMINGS.write_text(json.dumps(table, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{arg}: ran in {run(Path(arg)):.1f} s", flush=True)
