"""INSTRUCTORS.md covers every chapter, and its generated parts match the course (one source)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "INSTRUCTORS.md").read_text(encoding="utf-8")
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
HAND_WRITTEN = ["Prerequisites", "50-minute lecture", "90-minute lecture", "In-class questions",
                "Exercise picks", "Short session"]


def chapter_part(nn: str) -> str:
    m = re.search(rf"^## Chapter {nn} .*?(?=^## Chapter |\Z)", GUIDE, re.S | re.M)
    assert m, f"INSTRUCTORS.md has no '## Chapter {nn} ...' section"
    return m.group(0)


def test_generated_parts_are_up_to_date():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "instructors.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_chapter_has_a_lecture_plan_questions_and_picks():
    for nb in CHAPTERS:
        part = chapter_part(nb.stem[:2])
        missing = [h for h in HAND_WRITTEN if f"### {h}" not in part]
        assert not missing, f"chapter {nb.stem[:2]} lacks {missing}"
        questions = part.split("### In-class questions", 1)[1].split("###", 1)[0]
        assert len(re.findall(r"^\d+\.\s", questions, re.M)) >= 3, nb.stem
        assert questions.count("Answer") >= 3, f"{nb.stem}: every question needs its answer"


def test_room_setup_names_the_commands():
    for needed in ["make wheels", "make setup WHEELS=", "make lab", "python -m lmkit doctor",
                   "make slides", "make site"]:
        assert needed in GUIDE, needed


def test_every_chapter_has_speaker_notes():
    import nbformat

    for path in CHAPTERS:
        nb = nbformat.read(path, as_version=4)
        notes = [c for c in nb.cells
                 if c.metadata.get("slideshow", {}).get("slide_type") == "notes"]
        assert notes, f"{path.name} has no speaker notes (cells of slide type 'notes')"


def test_interactive_demos_have_a_static_figure_beside_them():
    """A live ipywidgets cell stores nothing; the code cell before it stores the same plot."""
    import nbformat

    demos = 0
    for path in CHAPTERS:
        cells = nbformat.read(path, as_version=4).cells
        for i, cell in enumerate(cells):
            if "widget" not in cell.metadata.get("tags", []):
                continue
            demos += 1
            assert "ipywidgets" in cell.source and cell.outputs == [], (path.name, i)
            before = cells[i - 1]
            assert any("image/png" in o.get("data", {}) for o in before.get("outputs", [])), (
                f"{path.name} cell {i - 1} should store the static figure of the widget after it")
    assert demos >= 2, "chapters 08 (temperature, top-p) and 09 (RoPE angle) have sliders"
