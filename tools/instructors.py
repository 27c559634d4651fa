"""Keep the generated parts of INSTRUCTORS.md in step with the course.

For every chapter, the block between `<!-- BEGIN GENERATED NN -->` and `<!-- END GENERATED NN -->`
is written from the sources it summarises, so it cannot drift from them:
- the learning goals and `##` sections, from chapters/NN_*.ipynb;
- the measured run time of each section, from tools/lecture_timings.json (written by
  tools/run_notebooks.py each time it executes a chapter, i.e. by `make notebooks`);
- the exercises (difficulty, time), from solutions/NN_*.ipynb;
- the common mistakes, from the checkers' table `lmkit.checks.chNN.MISTAKES` (the same table
  whose hints the checks print and whose list stands under each exercise).
Everything outside the blocks (lecture plans, questions, what to cut) is written by hand.

Usage:
    python tools/instructors.py            # rewrite the generated blocks
    python tools/instructors.py --check    # exit 1 if a block is stale (the tests run this)
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "INSTRUCTORS.md"
TIMINGS = ROOT / "tools" / "lecture_timings.json"
_EXERCISE = re.compile(r"^## Exercise (\d+) · (.+?)\s+([★☆]+)\s+\((\d+) min\)", re.M)
_CHECK = re.compile(r"\bch\d\d\.check_(\w+)\(")


def chapters() -> list[Path]:
    return sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


def sections(nb) -> list[tuple[str, list]]:
    """(heading, cells) for the chapter's opening and each `##` section, in order."""
    out: list[tuple[str, list]] = [("Opening", [])]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for heading in re.findall(r"^## (.+)$", cell.source, re.M):
                out.append((heading.strip(), []))
        out[-1][1].append(cell)
    return out


def goals(nb) -> list[str]:
    """The numbered learning goals of the chapter's first cell."""
    text = nb.cells[0].source
    part = text.split("Learning goals", 1)[1] if "Learning goals" in text else ""
    items: list[str] = []
    for line in part.splitlines():
        m = re.match(r"^\s*\d+\.\s+(.+)$", line)
        if m:
            items.append(m.group(1).strip())
        elif items and line.startswith((" ", "\t")) and line.strip():
            items[-1] += " " + line.strip()  # a goal continued on the next line
        elif items and line.strip():
            break
    return [g.rstrip(";.") for g in items]


def section_seconds(nb) -> dict[str, float]:
    """Seconds spent in each section of an executed notebook (nbclient's per-cell timestamps)."""
    from datetime import datetime

    def ts(stamp: str) -> float:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    per = {}
    for heading, cells in sections(nb):
        seconds = 0.0
        for c in cells:
            t = c.metadata.get("execution", {})
            if "iopub.execute_input" in t and "shell.execute_reply" in t:
                seconds += ts(t["shell.execute_reply"]) - ts(t["iopub.execute_input"])
        per[heading] = round(seconds, 1)
    return per


def mistakes(chapter: str) -> dict[str, list[str]]:
    try:
        module = importlib.import_module(f"lmkit.checks.ch{chapter}")
    except ModuleNotFoundError:
        return {}
    table = getattr(module, "MISTAKES", {})
    out = {}
    for exercise, entries in table.items():
        seen = []
        for m in entries.values():
            if m.what not in seen:
                seen.append(m.what)
        out[exercise] = seen
    return out


def block(path: Path, timings: dict) -> str:
    """The generated Markdown for one chapter."""
    nn = path.stem[:2]
    nb = nbformat.read(path, as_version=4)
    lines = []
    g = goals(nb)
    if g:
        lines += ["**Learning goals** (from the chapter):", ""]
        lines += [f"{i}. {goal}" for i, goal in enumerate(g, 1)] + [""]
    t = timings.get(nn, {})
    per = t.get("sections_s", {})
    lines += ["**Sections and measured run time** (all cells of the section, on the 2-core "
              "reference machine; a live demo costs about this plus your talking):", "",
              "| section | run time |", "|---|---|"]
    for heading, _ in sections(nb):
        shown = f"{per[heading]:.1f} s" if heading in per else "not measured"
        lines.append(f"| {heading} | {shown} |")
    if t:
        lines += ["", f"Whole chapter: {t['total_s']:.0f} s top to bottom."]
    sol = next(iter(sorted((ROOT / "solutions").glob(f"{nn}_*.ipynb"))), None)
    table = mistakes(nn)
    if sol is not None:
        snb = nbformat.read(sol, as_version=4)
        found = _EXERCISE.findall("\n".join(c.source for c in snb.cells if c.cell_type == "markdown"))
        checks = [m.group(1) for c in snb.cells if c.cell_type == "code"
                  for m in [_CHECK.search(c.source)] if m and "check" in c.metadata.get("tags", [])]
        lines += ["", f"**Exercises** (`solutions/{sol.name}`, student version in `exercises/`):",
                  "", "| # | exercise | difficulty | time |", "|---|---|---|---|"]
        lines += [f"| {n} | {title} | {stars} | {mins} min |" for n, title, stars, mins in found]
        listed = [(name, table[name]) for name in dict.fromkeys(checks) if name in table]
        if listed:
            lines += ["", "**Common mistakes** (the checks recognise each and give a hint):", ""]
            for name, whats in listed:
                lines.append(f"- `{name}`: " + "; ".join(whats) + ".")
    return "\n".join(lines)


def render(text: str, timings: dict) -> str:
    """`text` with every chapter's generated block refreshed (appended when missing)."""
    for path in chapters():
        nn = path.stem[:2]
        new = f"<!-- BEGIN GENERATED {nn} -->\n{block(path, timings)}\n<!-- END GENERATED {nn} -->"
        pattern = re.compile(rf"<!-- BEGIN GENERATED {nn} -->.*?<!-- END GENERATED {nn} -->", re.S)
        m = pattern.search(text)
        if m:
            text = text[:m.start()] + new + text[m.end():]
        else:
            title = nbformat.read(path, as_version=4).cells[0].source.split("\n", 1)[0].lstrip("# ")
            text = text.rstrip("\n") + f"\n\n## {title}\n\n{new}\n"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if INSTRUCTORS.md is stale")
    args = parser.parse_args(argv)
    timings = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    old = GUIDE.read_text(encoding="utf-8")
    new = render(old, timings)
    if args.check:
        if new != old:
            print("INSTRUCTORS.md is stale: run `python tools/instructors.py`", file=sys.stderr)
            return 1
        return 0
    GUIDE.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
