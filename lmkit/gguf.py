"""GGUF, llama.cpp's file format for pretrained models, read and dequantised (chapter 09).

A GGUF file is four parts, in this order (all integers little-endian):

    header     b"GGUF", version (uint32), number of tensors (uint64), number of metadata (uint64)
    metadata   key (string) -> typed value: the architecture, its sizes, the tokenizer, ...
    tensors    name, shape (innermost dimension first), block type, offset into the data
    data       the tensor bytes, each tensor starting at a multiple of `general.alignment`

Weights are stored in blocks of 32 numbers that share a scale (`Q8_0`: 8-bit integers times
a float16 scale) or a scale and a minimum (`Q4_1`: 4-bit integers, x = d * q + m). `read_gguf`
parses the file without copying the data (a memory map); `dequantize` turns a tensor's bytes
back into float32 (a torch tensor), one readable function per block type.

`gguf` (the format's own Python package, maintained with llama.cpp) is the reference the
tests compare with; lmkit does not need it at run time.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["GGUFFile", "GGUFTensor", "read_gguf", "dequantize", "quantize_q4_1",
           "dequantize_q4_1", "dequantize_q8_0", "BLOCK_TYPES"]

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)

# metadata value types: id -> (name, struct format); 8 = string and 9 = array are special
_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFTensor:
    """One tensor's entry: `shape` in PyTorch order (outermost first), its block type, its bytes."""

    name: str
    shape: tuple[int, ...]
    type_name: str  # "F32", "F16", "Q8_0", "Q4_1", ...
    data: np.ndarray  # uint8, the raw bytes (a view of the memory-mapped file)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict
    tensors: dict[str, GGUFTensor]

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path.name!r}, version={self.version}, "
                f"{len(self.metadata)} metadata keys, {len(self.tensors)} tensors)")


# block type id -> (name, numbers per block, bytes per block)
BLOCK_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    8: ("Q8_0", 32, 34),
    30: ("BF16", 1, 2),
}


class _Reader:
    """Reads little-endian values one after another from a buffer, checking for the end."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def _need(self, n: int, what: str) -> None:
        if self.pos + n > len(self.buf) or self.pos > len(self.buf):
            raise ValueError(
                f"{self.path}: the file ends at byte {len(self.buf)} while reading {what} at byte "
                f"{self.pos} ({n} bytes needed): the file is truncated or not a GGUF file"
            )

    def scalar(self, fmt: str, what: str = "a number"):
        n = struct.calcsize(fmt)
        self._need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str = "a string") -> str:
        n = self.scalar("<Q", what)
        self._need(n, what)
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def _strings(self, count: int, what: str) -> list[str]:
        buf, pos, out = self.buf, self.pos, []
        try:
            for _ in range(count):
                (n,) = struct.unpack_from("<Q", buf, pos)
                out.append(str(buf[pos + 8 : pos + 8 + n], "utf-8", "replace"))
                pos += 8 + n
        except struct.error:
            pos = len(buf) + 1
        self.pos = pos
        self._need(0, what)  # past the end: truncated
        return out

    def value(self, vtype: int, what: str):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype, count = self.scalar("<I", what), self.scalar("<Q", what)
            if etype in _SCALARS and etype != 7:  # numbers: one numpy view, no loop
                dtype = np.dtype(_SCALARS[etype])
                self._need(count * dtype.itemsize, what)
                arr = np.frombuffer(self.buf, dtype, count, self.pos)
                self.pos += count * dtype.itemsize
                return arr.tolist()
            if etype == _STRING:  # the vocabulary: 49,152 strings, so a tight loop
                return self._strings(count, what)
            return [self.value(etype, what) for _ in range(count)]
        raise ValueError(f"{self.path}: unknown metadata value type {vtype} in {what}")


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file: its metadata as a dict and its tensors as raw bytes (chapter 09)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is a folder, not a GGUF file" if path.is_dir()
                                else f"{path} does not exist")
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
    r = _Reader(buf, path)
    r._need(4, "the magic number")
    if bytes(buf[:4]) != MAGIC:
        raise ValueError(f"{path} is not a GGUF file: it starts with {bytes(buf[:4])!r}, "
                         f"not {MAGIC!r}")
    r.pos = 4
    version = r.scalar("<I", "the version")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{path}: GGUF version {version} is not supported; lmkit reads "
                         f"versions {list(SUPPORTED_VERSIONS)}")
    n_tensors = r.scalar("<Q", "the tensor count")
    n_metadata = r.scalar("<Q", "the metadata count")

    metadata = {}
    for _ in range(n_metadata):
        key = r.string("a metadata key")
        metadata[key] = r.value(r.scalar("<I", f"the type of {key!r}"), f"metadata {key!r}")

    infos = []
    for _ in range(n_tensors):
        name = r.string("a tensor name")
        n_dims = r.scalar("<I", f"the rank of {name!r}")
        dims = [r.scalar("<Q", f"the shape of {name!r}") for _ in range(n_dims)]
        type_id = r.scalar("<I", f"the type of {name!r}")
        offset = r.scalar("<Q", f"the offset of {name!r}")
        infos.append((name, tuple(reversed(dims)), type_id, offset))  # PyTorch order

    alignment = metadata.get("general.alignment", 32)
    start = -(-r.pos // alignment) * alignment  # the data begins at the next aligned byte
    tensors = {}
    for name, shape, type_id, offset in infos:
        if type_id not in BLOCK_TYPES:
            raise ValueError(f"{path}: tensor {name!r} has block type {type_id}, which lmkit "
                             f"cannot read; supported: {[n for n, _, _ in BLOCK_TYPES.values()]}")
        type_name, block, block_bytes = BLOCK_TYPES[type_id]
        n = int(np.prod(shape))
        if n % block:
            raise ValueError(f"{path}: tensor {name!r} has {n} numbers, not a multiple of the "
                             f"{type_name} block size {block}")
        nbytes = n // block * block_bytes
        if start + offset + nbytes > len(buf):
            raise ValueError(
                f"{path}: tensor {name!r} needs bytes {start + offset}..{start + offset + nbytes}"
                f" but the file has {len(buf)} bytes: the file is truncated"
            )
        data = np.frombuffer(buf, np.uint8, nbytes, start + offset)
        tensors[name] = GGUFTensor(name, shape, type_name, data)
    return GGUFFile(path, version, metadata, tensors)


# ----------------------------------------------------------------------------- block formats
# Each function takes a tensor's raw bytes (uint8, numpy) and returns its float32 numbers.
# numpy runs them on one core, so loading stays fast on a machine busy with other work.


def _f16(two_bytes: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 -> (n, 1) float32: the float16 stored in each row's two bytes."""
    return np.ascontiguousarray(two_bytes).view(np.float16).astype(np.float32)


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q8_0: blocks of 34 bytes = a float16 scale d, then 32 int8 q; x = q * d."""
    blocks = raw.reshape(-1, 34)  # (n_blocks, 34)
    d = _f16(blocks[:, :2])  # (n_blocks, 1)
    q = blocks[:, 2:].view(np.int8).astype(np.float32)  # (n_blocks, 32)
    return (q * d).reshape(-1)


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """Q4_1: blocks of 20 bytes = float16 scale d, float16 minimum m, 16 bytes of 4-bit q.

    Byte j holds weight j in its low 4 bits and weight j + 16 in its high 4 bits;
    x = d * q + m, so the 16 levels q = 0..15 span [m, m + 15 d].
    """
    blocks = raw.reshape(-1, 20)  # (n_blocks, 20)
    d, m = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])  # (n_blocks, 1) each
    packed = blocks[:, 4:]  # (n_blocks, 16)
    q = np.concatenate((packed & 0x0F, packed >> 4), axis=1).astype(np.float32)  # (n_blocks, 32)
    return (d * q + m).reshape(-1)


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0: blocks of 18 bytes = float16 scale d, 16 bytes of 4-bit q; x = (q - 8) * d."""
    blocks = raw.reshape(-1, 18)
    d = _f16(blocks[:, 0:2])
    packed = blocks[:, 2:]
    q = np.concatenate((packed & 0x0F, packed >> 4), axis=1).astype(np.float32) - 8
    return (q * d).reshape(-1)


def _bf16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift its 16 bits up."""
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


_DEQUANTIZE = {
    "F32": lambda raw: raw.view(np.float32),
    "F16": lambda raw: raw.view(np.float16).astype(np.float32),
    "BF16": _bf16,
    "Q4_0": dequantize_q4_0,
    "Q4_1": dequantize_q4_1,
    "Q8_0": dequantize_q8_0,
}


def dequantize(tensor: GGUFTensor) -> Tensor:
    """A tensor's numbers as a float32 torch tensor in its PyTorch shape (chapter 09)."""
    numbers = _DEQUANTIZE[tensor.type_name](tensor.data).reshape(tensor.shape)
    out = torch.empty(tensor.shape, dtype=torch.float32)  # PyTorch's own, aligned memory
    out.numpy()[...] = numbers
    return out


def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    """float32 numbers (a multiple of 32) -> Q4_1 bytes, rounding to the nearest level.

    Each block of 32 keeps its minimum m and the step d = (max - min) / 15 as float16.
    """
    blocks = np.asarray(x, np.float32).reshape(-1, 32)  # (n_blocks, 32)
    lo, hi = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
    d = (hi - lo) / 15
    inv_d = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.clip(np.trunc((blocks - lo) * inv_d + np.float32(0.5)), 0, 15).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)  # (n_blocks, 16)
    head = np.concatenate((d.astype(np.float16).view(np.uint8),
                           lo.astype(np.float16).view(np.uint8)), axis=1)  # (n_blocks, 4)
    return np.concatenate((head, packed), axis=1).reshape(-1)
