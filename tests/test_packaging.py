"""lmkit as a normal (non-editable) install: the wheel carries the course model.

The wheel is built from a copy of the package (pip, no build isolation: offline), installed
with `pip install --target` into a temporary folder, and used from a fresh interpreter whose
path holds that folder but not the repository (nor the editable install's finder).
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = {"config.json", "model.safetensors", "vocab.json", "merges.txt", "training.json",
               "README.md"}

# Run in the fresh interpreter: forget the repository and the editable install, then use lmkit.
PROBE = """
import json, sys
repo, target = sys.argv[1], sys.argv[2]
sys.path = [p for p in sys.path if p not in ("", ".", repo)]
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__name__", "").lower()]
sys.path_hooks = [h for h in sys.path_hooks if "editable" not in repr(h).lower()]
sys.path_importer_cache.clear()
import torch
import lmkit
from lmkit.train import COURSE_MODEL, load_course_model
model, tok = load_course_model()
ids = torch.tensor([tok.encode("ROMEO:")])
out = lmkit.generate(model, ids, 8)
print(json.dumps({"lmkit": lmkit.__file__, "model": str(COURSE_MODEL),
                  "text": tok.decode(out[0].tolist()), "ctx": model.config.context_length}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A folder holding lmkit installed from its wheel (dependencies: the test's venv)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "lmkit", src / "lmkit",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    env = {**os.environ, "PIP_NO_INDEX": "1"}  # offline: nothing may be downloaded
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
                    str(src)], check=True, env=env, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("lmkit-*.whl")
    target = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, env=env, cwd=tmp)
    return wheel, target


def test_the_wheel_contains_the_course_model(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"lmkit/models/shakespeare/{f}" for f in MODEL_FILES} <= names
    assert not any(n.startswith(("tests/", "chapters/", "models/")) for n in names)


def test_the_installed_copy_loads_the_course_model_without_the_repository(installed, tmp_path):
    _, target = installed
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), str(target)], env=env,
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(got["lmkit"]).is_relative_to(target), got
    assert Path(got["model"]) == target / "lmkit" / "models" / "shakespeare"
    assert got["text"].startswith("ROMEO:") and got["ctx"] == 128


# The oldest version of each dependency lmkit works with, and why (see pyproject.toml).
FLOORS = {
    "torch": ("2.4", "torch.nn.functional.rms_norm (lmkit.norm.RMSNorm, fast=True)"),
    "safetensors": ("0.4", "checked: checkpoints with metadata written and read with 0.4.0"),
    "tqdm": ("4.66", "checked: progress bars with 4.66.0"),
    "regex": ("2023.6", "checked: BPE training and encoding with 2023.6.3"),
}


def test_dependency_floors_are_the_versions_lmkit_needs():
    import tomllib

    import torch
    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
    floors = {}
    for dep in deps:
        req = Requirement(dep)
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lows, f"{dep}: give a floor (>=)"
        floors[req.name] = lows[0]
    for name, (version, why) in FLOORS.items():
        assert floors[name] == Version(version), f"{name} needs >={version}: {why}"
    assert hasattr(torch.nn.functional, "rms_norm")  # the reason for torch's floor is real
