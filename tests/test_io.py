"""lmkit.io: the atomic writer flushes to the disk; the safetensors reader names bad files only."""

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from lmkit import io


@pytest.mark.parametrize("kind", ["str", "bytes", "function"])
def test_write_atomic_fsyncs_the_file_before_the_rename_and_the_folder_after(
    tmp_path, monkeypatch, kind
):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        events.append(("fsync folder" if is_dir else "fsync file", os.fstat(fd).st_size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", os.path.getsize(src)))
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    target = tmp_path / "f.bin"

    def writer(p):
        with open(p, "wb") as f:
            f.write(b"h\xc3\xa9llo\n")

    data = {"str": "héllo\n", "bytes": b"h\xc3\xa9llo\n", "function": writer}[kind]
    io.write_atomic(target, data)
    assert target.read_bytes() == b"h\xc3\xa9llo\n"
    assert [e[0] for e in events] == ["fsync file", "rename", "fsync folder"]
    assert events[0][1] == 7  # the whole file was on disk before the rename


def test_write_atomic_leaves_nothing_behind_when_the_writer_fails(tmp_path):
    def broken(p):
        with open(p, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    (tmp_path / "f").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        io.write_atomic(tmp_path / "f", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    assert (tmp_path / "f").read_text() == "old"


@pytest.mark.parametrize("error", [MemoryError(), PermissionError(13, "Permission denied")])
def test_read_safetensors_does_not_call_a_memory_or_permission_problem_an_invalid_file(
    tmp_path, monkeypatch, error
):
    import safetensors

    save_file({"w": torch.zeros(3)}, tmp_path / "m.safetensors")

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(safetensors, "safe_open", failing)
    with pytest.raises(type(error)):
        io.read_safetensors(tmp_path / "m.safetensors")


def test_read_safetensors_names_a_file_that_is_not_safetensors(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(ValueError, match=r"m.safetensors is not a valid safetensors file: it "
                                         r"looks like a PyTorch pickle.*SafetensorError"):
        io.read_safetensors(tmp_path / "m.safetensors")
    save_file({"w": torch.arange(3.0)}, tmp_path / "ok.safetensors", metadata={"step": "2"})
    tensors, meta = io.read_safetensors(tmp_path / "ok.safetensors")
    assert torch.equal(tensors["w"], torch.arange(3.0)) and meta == {"step": "2"}
