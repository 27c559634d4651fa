"""`make bench`'s table runs end to end (tiny sizes): every contender gets a row."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "1", "--layers", "1", "--d-model", "32", "--heads", "2", "--context", "32",
        "--vocab", "64", "--batch", "2", "--new-tokens", "4", "--repeats", "1", "--threads", "1"]


@pytest.mark.slow
def test_throughput_table_has_training_and_decoding_for_each_contender(tmp_path):
    env = {**os.environ, "LMKIT_BENCH_NANOGPT": str(tmp_path)}  # no model.py there
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *TINY],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = {line[:32].strip(): line[32:].split() for line in res.stdout.splitlines()}
    for name in ("Hugging Face GPT2LMHeadModel", "lmkit fast=True", "lmkit fast=False (as taught)"):
        train, cpu, decode = rows[name]
        assert float(train.replace(",", "")) > 0 and float(decode.replace(",", "")) > 0
    assert "lmkit fast=True / Hugging Face: training" in res.stdout
    assert f"skipped ({tmp_path}/model.py not found)" in res.stdout
