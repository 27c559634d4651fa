"""`python -m lmkit chat` and `generate --model smollm2` (chapter 09), stdin piped in."""

import io
import subprocess
import sys

import pytest

from lmkit.__main__ import main

pytest.importorskip("gguf")


@pytest.fixture(autouse=True)
def loaded_once(monkeypatch, smollm2):
    """The commands load SmolLM2; here they get the session's copy (float32)."""
    import lmkit.pretrained

    monkeypatch.setattr(lmkit.pretrained, "load_smollm2", lambda dtype=None: smollm2)


def test_chat_loop_streams_replies_and_ends_on_empty_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of France?\n\nignored\n"))
    main(["chat", "--max-new-tokens", "20"])
    out = capsys.readouterr().out
    assert out.count("assistant: ") == 1  # the empty line ended the chat
    assert "Paris" in out.split("assistant: ")[1]


def test_chat_ends_on_ctrl_d_and_remembers_the_conversation(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of France?\nAnd of Italy?\n"))
    main(["chat", "--max-new-tokens", "16", "--temperature", "0.2", "--top-p", "0.9"])
    replies = capsys.readouterr().out.split("assistant: ")[1:]
    assert len(replies) == 2 and "Rome" in replies[1]


def test_chat_option_errors():  # in a subprocess: argparse errors exit with status 2
    for argv, message in [(["--top-p", "0.9"], "greedy"), (["--max-new-tokens", "0"], "at least 1"),
                          (["--temperature", "-1"], ">= 0")]:
        r = subprocess.run([sys.executable, "-m", "lmkit", "chat", *argv], capture_output=True,
                           text=True, input="", timeout=120)
        assert r.returncode == 2 and message in r.stderr, r.stderr


def test_generate_with_smollm2(capsys):
    main(["generate", "--model", "smollm2", "--prompt", "The capital of France is",
          "--max-new-tokens", "4", "--temperature", "0"])
    out = capsys.readouterr().out
    assert out.startswith("The capital of France is Paris")
