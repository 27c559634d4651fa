"""Reading and writing lmkit's files: one atomic writer, one safetensors reader (chapters 01, 07).

- `write_atomic`: write a file beside its destination, then rename it over the destination,
  so a reader never sees a half-written file (tokenizer files, model files, checkpoints).
- `read_text`: a UTF-8 text file, or a ValueError naming the file if it is not UTF-8.
- `read_safetensors`: tensors and metadata of a `.safetensors` file, or a ValueError naming
  the file and the likely cause (a renamed pickle, an empty or truncated file).

Every file gets the permissions of a normal file (0644): model and tokenizer folders are meant
to be shared. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

__all__ = ["write_atomic", "read_text", "read_safetensors", "FILE_MODE"]

FILE_MODE = 0o644  # what a normal file gets (rw-r--r--); mkstemp alone would give 0600


def write_atomic(path: str | os.PathLike, data: str | bytes | Callable[[str], None]) -> None:
    """Write `data` to `path` all at once: text (UTF-8, "\\n" line ends), bytes, or a function
    `write(tmp_path)` that writes the file itself (e.g. safetensors' `save_file`).

    The data goes to a temporary file in the same folder, flushed to the disk (fsync), which
    is then renamed over `path`, and the rename itself flushed (fsync of the folder, where the
    system allows it): an interrupted write, even a power cut, leaves the old file (or none),
    never a half-written one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
            fd = os.open(tmp, os.O_RDWR)  # the writer's file, reopened to flush it
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif isinstance(data, str):
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file; a ValueError naming the file if it is not valid UTF-8."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not valid UTF-8 text (byte {e.object[e.start]:#04x} at offset "
            f"{e.start}); save it as UTF-8"
        ) from None


def read_json(path: str | os.PathLike, fix: str = "restore the file") -> object:
    """The JSON value in a UTF-8 file; a ValueError naming the file (and `fix`) if it is not
    valid JSON. Callers check that the value has the type they need."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {fix}") from None


def _likely_cause(path: Path) -> str:
    """A guess, from the first bytes, at what a file that is not safetensors is."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (an interrupted download or save?)"
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return ("it looks like a PyTorch pickle (torch.save / pytorch_model.bin) renamed to "
                ".safetensors; lmkit never unpickles files: convert it to safetensors")
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the file itself: run `git lfs pull`"
    if size < 8:
        return f"it has only {size} bytes (a truncated download or save?)"
    return "its header is not a safetensors header (a truncated or different kind of file?)"


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors by name, metadata) of a safetensors file, on the CPU.

    A file that is not safetensors is a ValueError naming the file and the likely cause.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except SafetensorError as e:  # a bad header or layout; MemoryError, OSError, ... propagate
        raise ValueError(
            f"{path} is not a valid safetensors file: {_likely_cause(path)} "
            f"[{type(e).__name__}: {e}]"
        ) from None
    return tensors, meta
