"""`python -m lmkit chat` and `generate --model smollm2` (chapter 09), stdin piped in."""

import io
import subprocess
import sys

import pytest
import torch

import lmkit.chat
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


# ----------------------------------------------------------------------------- --device


def test_generate_with_smollm2_runs_on_the_device_asked_for(smollm2, monkeypatch, capsys):
    """--device was ignored: the model stayed where load_smollm2 put it and the prompt was
    built on the CPU. Here the model records where it is moved, and generate_stream sees the
    model and the prompt on that device."""
    import lmkit.generation

    model = smollm2[0]
    moved, seen = [], []
    real_to, real_stream = model.to, lmkit.generation.generate_stream

    def to(*args, **kwargs):
        moved.append(torch.device(*args) if args and isinstance(args[0], str) else args[0])
        return real_to(*args, **kwargs)

    def stream(m, ids, *args, **kwargs):
        seen.append((next(m.parameters()).device, ids.device, kwargs["generator"].device))
        return real_stream(m, ids, *args, **kwargs)

    monkeypatch.setattr(model, "to", to)
    monkeypatch.setattr(lmkit.generation, "generate_stream", stream)
    main(["generate", "--model", "smollm2", "--prompt", "The capital of France is",
          "--max-new-tokens", "2", "--temperature", "0", "--device", "cpu"])
    assert moved == [torch.device("cpu")]
    assert seen == [(torch.device("cpu"),) * 3]
    assert capsys.readouterr().out.startswith("The capital of France is Paris")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_generate_with_smollm2_on_cuda(smollm2, capsys):
    model = smollm2[0]
    try:
        main(["generate", "--model", "smollm2", "--prompt", "The capital of France is",
              "--max-new-tokens", "2", "--temperature", "0", "--device", "cuda"])
        assert next(model.parameters()).device.type == "cuda"
    finally:
        model.to("cpu")  # the session's copy, shared with other tests
    assert capsys.readouterr().out.startswith("The capital of France is Paris")


def test_device_must_be_one_the_command_can_run_on():
    r = subprocess.run([sys.executable, "-m", "lmkit", "generate", "--device", "meta"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "use cpu, cuda or mps" in r.stderr, r.stderr


# ----------------------------------------------------------------------------- the context window


def _first_turn_tokens(smollm2, message):
    tok = smollm2[1]
    return len(tok.encode(tok.apply_chat_template([{"role": "user", "content": message}])))


def test_chat_never_cuts_a_reply_short_it_ends_with_a_message(smollm2, monkeypatch, capsys):
    """A turn is started only if the conversation plus --max-new-tokens fits in the context
    window; before, the reply was silently cut to whatever room was left."""
    question = "What is the capital of France?"
    T = _first_turn_tokens(smollm2, question)  # 37 with SmolLM2's default system message
    monkeypatch.setattr(smollm2[0].config, "context_length", T + 15)  # room for 15, not 20
    monkeypatch.setattr(sys, "stdin", io.StringIO(question + "\n"))
    main(["chat", "--max-new-tokens", "20"])
    out = capsys.readouterr().out
    assert "assistant: " not in out  # no reply cut to 15 tokens
    assert (f"the conversation is {T} tokens, and a reply of up to 20 more would outgrow the "
            f"model's context window of {T + 15} tokens") in out
    assert "--max-new-tokens" in out and "new chat" in out  # what to do about it


def test_chat_turn_that_fits_gets_the_whole_budget(smollm2, monkeypatch, capsys):
    question = "What is the capital of France?"
    T = _first_turn_tokens(smollm2, question)
    monkeypatch.setattr(smollm2[0].config, "context_length", T + 20)  # exactly fits
    monkeypatch.setattr(sys, "stdin", io.StringIO(question + "\nAnd of Italy?\n"))
    budgets, real = [], lmkit.chat.stream_reply
    monkeypatch.setattr(lmkit.chat, "stream_reply",
                        lambda model, tok, ids, n, *a: budgets.append(n) or real(model, tok, ids, n, *a))
    main(["chat", "--max-new-tokens", "20"])
    out = capsys.readouterr().out
    assert budgets == [20]  # the whole budget, not cut to what is left of the window
    assert out.count("assistant: ") == 1 and "Paris" in out  # the second turn does not fit
    assert "outgrow the model's context window" in out


def test_chat_refuses_max_new_tokens_that_leave_no_room_for_the_conversation(smollm2,
                                                                             monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\n"))
    with pytest.raises(SystemExit) as e:
        main(["chat", "--max-new-tokens", "8192"])
    assert e.value.code == 2
    assert ("--max-new-tokens 8192 leaves no room for the conversation in the model's context "
            "window of 8192 tokens") in capsys.readouterr().err


def test_chat_help_says_what_happens_at_the_end_of_the_context_window(capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "never cut short" in help_text and "context window" in help_text


def test_generate_with_smollm2_refuses_output_beyond_the_context(smollm2, monkeypatch, capsys):
    """As for the course model: explicit --max-new-tokens that do not fit are an error, the
    default shrinks to the room left."""
    T = len(smollm2[1].encode("The capital of France is"))
    monkeypatch.setattr(smollm2[0].config, "context_length", T + 3)
    with pytest.raises(SystemExit):
        main(["generate", "--model", "smollm2", "--prompt", "The capital of France is",
              "--max-new-tokens", "4", "--temperature", "0"])
    assert "ask for at most 3 new tokens" in capsys.readouterr().err
    main(["generate", "--model", "smollm2", "--prompt", "The capital of France is",
          "--temperature", "0"])
    assert capsys.readouterr().out.startswith("The capital of France is Paris")
