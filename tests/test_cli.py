"""`python -m lmkit train` and `generate`: they work on tiny sizes and explain bad input."""

import subprocess
import sys

import pytest

from lmkit.__main__ import main
from lmkit.train import COURSE_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 60)
    return path


def run(argv, capsys):
    main([str(a) for a in argv])
    return capsys.readouterr()


def error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 2
    return capsys.readouterr().err


def test_help_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "lmkit", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--steps" in out and "--out" in out and "Example" in out


def test_train_then_generate_with_a_char_model(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    res = run(["train", "--corpus", corpus, "--size", "tiny", "--steps", 4, "--batch-size", 4,
               "--out", out, "--no-progress"], capsys)
    assert "validation loss" in res.out
    assert (out / "model.safetensors").is_file() and (out / "chars.json").is_file()
    res = run(["generate", "--model", out, "--prompt", "ROMEO:", "--max-new-tokens", 20], capsys)
    assert res.out.startswith("ROMEO:") and len(res.out.rstrip("\n")) >= len("ROMEO:")
    again = run(["generate", "--model", out, "--prompt", "ROMEO:", "--max-new-tokens", 20],
                capsys)
    assert again.out == res.out  # seeded
    longer = run(["generate", "--model", out, "--prompt", "ROMEO:", "--max-new-tokens", 100],
                 capsys)  # past the 64-token window: the sliding-window loop
    assert longer.out.startswith("ROMEO:") and len(longer.out) > len(res.out)

    res = run(["train", "--corpus", corpus, "--size", "tiny", "--steps", 6, "--batch-size", 4,
               "--out", out, "--no-progress", "--resume"], capsys)
    assert "step 6:" in res.out


def test_train_with_bpe(tmp_path, corpus, capsys):
    out = tmp_path / "bpe"
    run(["train", "--corpus", corpus, "--tokenizer", "bpe", "--vocab-size", 270, "--steps", 2,
         "--batch-size", 2, "--out", out, "--no-progress"], capsys)
    assert (out / "vocab.json").is_file() and (out / "merges.txt").is_file()
    res = run(["generate", "--model", out, "--prompt", "But", "--max-new-tokens", 5,
               "--temperature", 0], capsys)
    assert res.out.startswith("But")


@pytest.mark.skipif(not (COURSE_MODEL / "model.safetensors").is_file(),
                    reason="no course model (tests/test_course_model.py fails instead)")
def test_generate_with_the_course_model_by_default(capsys):
    res = run(["generate", "--prompt", "ROMEO:", "--max-new-tokens", 5, "--top-k", 5], capsys)
    assert res.out.startswith("ROMEO:")


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "no/such/folder"], "no such folder"),
    (["generate", "--max-new-tokens", "0"], "must be at least 1"),
    (["generate", "--temperature", "-1"], "must be 0 or more"),
    (["generate", "--temperature", "hot"], "expected a number"),
    (["generate", "--device", "gpu"], "unknown device"),
    (["train", "--steps", "10"], "--out"),
    (["train", "--size", "huge", "--out", "x"], "invalid choice"),
    (["train", "--corpus", "no-such-play", "--out", "x"], "neither 'shakespeare'"),
    (["train", "--out", "no/such/run", "--resume"], "no checkpoint to resume"),
    ([], "required"),
])
def test_bad_input_is_a_clear_error_with_exit_code_2(argv, message, capsys):
    assert message in error(argv, capsys)


def test_generate_rejects_a_folder_that_is_not_a_model(tmp_path, capsys):
    assert "not a model folder" in error(["generate", "--model", tmp_path], capsys)


def test_generate_rejects_characters_the_char_model_never_saw(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    run(["train", "--corpus", corpus, "--steps", 1, "--batch-size", 2, "--out", out,
         "--no-progress"], capsys)
    assert "--prompt" in error(["generate", "--model", out, "--prompt", "Zebra"], capsys)
