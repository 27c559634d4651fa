"""`python -m lmkit train` and `generate`: they work on tiny sizes and explain bad input.

The reference for `generate` is `lmkit.generate` called directly with the same options and
seed: the CLI must print exactly its text, streamed token by token.
"""

import subprocess
import sys

import pytest
import torch

import lmkit.__main__ as cli
from lmkit.__main__ import load_tokenizer, main
from lmkit.generation import generate
from lmkit.train import COURSE_MODEL, load_model

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


def expected(folder, prompt, n, seed=0, **options):
    """What lmkit.generate gives for the CLI's options, decoded, as the CLI prints it."""
    model, tok = load_model(folder, device="cpu").eval(), load_tokenizer(folder)
    x = torch.tensor([tok.encode(prompt)])
    if options.get("num_beams", 1) == 1:
        options.setdefault("do_sample", True)
        if options["do_sample"]:
            options.setdefault("temperature", 0.8)
        options["generator"] = torch.Generator().manual_seed(seed)
    out = generate(model, x, n, **options)
    assert out.shape[1] == x.shape[1] + n or options.get("num_beams", 1) > 1
    return tok.decode(out[0].tolist()) + "\n"


@pytest.fixture(scope="module")
def char_model(tmp_path_factory):
    """A tiny character-level model (context window 64) trained for a few steps by the CLI."""
    folder = tmp_path_factory.mktemp("cli") / "run"
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 60
    corpus = folder.parent / "corpus.txt"
    corpus.write_text(text)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["train", "--corpus", str(corpus), "--size", "tiny", "--steps", "4",
              "--batch-size", "4", "--out", str(folder), "--no-progress"])
    finally:
        torch.set_num_threads(n)
    return folder


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
    assert res.out == expected(out, "ROMEO:", 20)
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
    assert res.out == expected(out, "But", 5, do_sample=False)
    res = run(["generate", "--model", out, "--prompt", "But", "--max-new-tokens", 30,
               "--seed", 3, "--temperature", 2.0], capsys)  # byte tokens: UTF-8 held back
    assert res.out == expected(out, "But", 30, seed=3, temperature=2.0)


@pytest.mark.skipif(not (COURSE_MODEL / "model.safetensors").is_file(),
                    reason="no course model (tests/test_course_model.py fails instead)")
def test_generate_with_the_course_model_by_default(capsys):
    res = run(["generate", "--prompt", "ROMEO:", "--max-new-tokens", 5, "--top-k", 5], capsys)
    assert res.out == expected(COURSE_MODEL, "ROMEO:", 5, top_k=5)


@pytest.mark.skipif(not (COURSE_MODEL / "model.safetensors").is_file(),
                    reason="no course model (tests/test_course_model.py fails instead)")
def test_the_default_length_fits_the_course_model_window_so_the_cache_serves_every_step(
        capsys, monkeypatch):
    calls = []
    real = cli.generate_stream
    monkeypatch.setattr(cli, "generate_stream",
                        lambda *a, **kw: calls.append((a, kw)) or real(*a, **kw))
    res = run(["generate", "--prompt", "ROMEO:", "--seed", 1], capsys)
    (model, x, n), kw = calls[0]
    assert n == 100 and x.shape[1] + n <= model.config.context_length == 128
    assert kw["slide"] is False and "use_cache" not in kw  # generate's default: the KV cache
    assert res.out == expected(COURSE_MODEL, "ROMEO:", 100, seed=1)


def test_sampling_options_give_what_lmkit_generate_gives(char_model, capsys):
    for argv, options in [
        (["--top-p", 0.9], dict(top_p=0.9)),
        (["--top-k", 3, "--temperature", 1.5], dict(top_k=3, temperature=1.5)),
        (["--top-k", 5, "--top-p", 0.5, "--seed", 7], dict(top_k=5, top_p=0.5)),
        (["--temperature", 0], dict(do_sample=False)),
        (["--num-beams", 3], dict(num_beams=3)),
    ]:
        res = run(["generate", "--model", char_model, "--prompt", "ROMEO:",
                   "--max-new-tokens", 25, *argv], capsys)
        seed = argv[argv.index("--seed") + 1] if "--seed" in argv else 0
        assert res.out == expected(char_model, "ROMEO:", 25, seed=seed, **options), argv


def test_generate_fills_the_window_by_default_and_refuses_more_without_slide(char_model,
                                                                            capsys):
    res = run(["generate", "--model", char_model, "--prompt", "ROMEO:"], capsys)
    assert res.out == expected(char_model, "ROMEO:", 64 - 6)  # 100 does not fit in 64
    message = error(["generate", "--model", char_model, "--prompt", "ROMEO:",
                     "--max-new-tokens", 100], capsys)
    assert "context window is 64" in message and "--slide" in message
    message = error(["generate", "--model", char_model, "--prompt", "R" * 64], capsys)
    assert "fill the model's context window" in message
    res = run(["generate", "--model", char_model, "--prompt", "ROMEO:", "--max-new-tokens", 100,
               "--slide"], capsys)
    assert res.out == expected(char_model, "ROMEO:", 100, slide=True)


def test_generate_streams_each_token_as_it_is_produced(char_model, capsys, monkeypatch):
    seen = []  # what had been printed when the next token was asked for
    real = cli.generate_stream

    def spy(*args, **kwargs):
        for step in real(*args, **kwargs):
            seen.append(capsys.readouterr().out)
            yield step

    monkeypatch.setattr(cli, "generate_stream", spy)
    main(["generate", "--model", str(char_model), "--prompt", "ROMEO:", "--max-new-tokens", "8"])
    rest = capsys.readouterr().out
    assert seen[0] == "ROMEO:"  # the prompt is shown before the first token is computed
    assert all(len(piece) == 1 for piece in seen[1:])  # then one character per token
    assert "".join(seen) + rest == expected(char_model, "ROMEO:", 8)


def test_train_refuses_to_overwrite_a_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    argv = ["train", "--corpus", corpus, "--steps", 1, "--batch-size", 2, "--out", out,
            "--no-progress"]
    run(argv, capsys)
    before = (out / "model.safetensors").read_bytes()
    message = error([*argv, "--seed", 1], capsys)
    assert "already holds a checkpoint" in message and "--overwrite" in message
    assert (out / "model.safetensors").read_bytes() == before  # untouched
    assert "choose one" in error([*argv, "--resume", "--overwrite"], capsys)
    run([*argv, "--seed", 1, "--overwrite", "--tokenizer", "bpe", "--vocab-size", 260], capsys)
    assert (out / "model.safetensors").read_bytes() != before
    assert not (out / "chars.json").exists()  # the old tokenizer must not shadow the new one
    assert (out / "vocab.json").is_file()


def test_running_without_torch_says_which_python_to_use():
    code = "import sys; sys.modules['torch'] = None; import lmkit"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode != 0 and ".venv/bin/python -m lmkit" in res.stderr


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "no/such/folder"], "no such folder"),
    (["generate", "--max-new-tokens", "0"], "must be at least 1"),
    (["generate", "--temperature", "-1"], "must be 0 or more"),
    (["generate", "--temperature", "hot"], "expected a number"),
    (["generate", "--device", "gpu"], "unknown device"),
    (["generate", "--top-p", "0"], "must be in (0, 1]"),
    (["generate", "--top-p", "1.5"], "must be in (0, 1]"),
    (["generate", "--num-beams", "0"], "must be at least 1"),
    (["generate", "--num-beams", "2", "--temperature", "0.5"], "does not sample"),
    (["generate", "--num-beams", "2", "--top-p", "0.5"], "does not sample"),
    (["generate", "--temperature", "0", "--top-k", "3"], "greedy decoding"),
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


def test_every_command_line_example_says_which_python_runs_it():
    """`python -m lmkit` outside the venv fails: examples use .venv/bin/python (or activate)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for name in ("README.md", "lmkit/__main__.py", "lmkit/models/shakespeare/README.md"):
        text = (root / name).read_text("utf-8")
        uses = [(m.start(), text[max(0, m.start() - 11) : m.start()])
                for m in re.finditer(r"python -m lmkit", text)]
        assert uses, name
        for pos, before in uses:
            line = text[text.rfind("\n", 0, pos) + 1 : text.find("\n", pos)]
            if "prog=" not in line:  # argparse's usage line names the module only
                assert before.endswith(".venv/bin/") or "activate" in line, (name, line)


def test_a_corpus_that_is_not_utf8_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("ROMEO: café\n".encode("latin-1") * 200)
    message = error(["train", "--corpus", bad, "--out", tmp_path / "run"], capsys)
    assert "--corpus" in message and str(bad) in message and "UTF-8" in message


def test_the_char_tokenizer_file_is_written_atomically(tmp_path, corpus, capsys, monkeypatch):
    import lmkit.io

    out = tmp_path / "run"
    argv = ["train", "--corpus", corpus, "--steps", 1, "--batch-size", 2, "--out", out,
            "--no-progress"]
    run(argv, capsys)
    before = (out / "chars.json").read_bytes()
    other = tmp_path / "other.txt"
    other.write_text("xyz QRS, tuv!\n" * 400)

    def interrupted(src, dst):
        if str(dst).endswith("chars.json"):
            raise KeyboardInterrupt  # the save stops just before the new file replaces the old
        return real(src, dst)

    real = lmkit.io.os.replace
    monkeypatch.setattr(lmkit.io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([str(a) for a in ["train", "--corpus", other, "--steps", 1, "--batch-size", 2,
                               "--out", out, "--no-progress", "--overwrite"]])
    assert (out / "chars.json").read_bytes() == before  # the old file, whole
    assert not list(out.glob(".chars.json*"))  # no temporary file left behind


def test_a_broken_chars_file_is_a_clear_error(char_model, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(char_model, copy)
    (copy / "chars.json").write_text("[not json")
    message = error(["generate", "--model", copy], capsys)
    assert "chars.json is not valid JSON" in message


def test_an_interrupted_train_never_pairs_new_weights_with_the_old_tokenizer(
    tmp_path, corpus, capsys, monkeypatch
):
    out = tmp_path / "run"
    argv = ["train", "--corpus", corpus, "--steps", 1, "--batch-size", 2, "--out", out,
            "--no-progress"]
    run(argv, capsys)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = cli._save_tokenizer

    def dies_after_writing_the_tokenizer(tok, folder):
        real(tok, folder)
        raise KeyboardInterrupt  # the process stops before the new checkpoint is in place

    monkeypatch.setattr(cli, "_save_tokenizer", dies_after_writing_the_tokenizer)
    with pytest.raises(KeyboardInterrupt):
        main([str(a) for a in [*argv, "--overwrite", "--tokenizer", "bpe", "--vocab-size",
                               260, "--seed", 1]])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old weights, old chars
    monkeypatch.undo()
    run([*argv, "--overwrite", "--tokenizer", "bpe", "--vocab-size", 260, "--seed", 1], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "run"]
    assert load_tokenizer(out).vocab_size == load_model(out, device="cpu").config.vocab_size


def test_train_refuses_the_working_directory_or_a_folder_of_other_files(
    tmp_path, corpus, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--corpus", corpus, "--steps", 1, "--batch-size", 2, "--no-progress"]
    message = error([*argv, "--out", "."], capsys)
    assert "working directory" in message and "dedicated to the checkpoint" in message
    message = error([*argv, "--out", tmp_path], capsys)
    assert "working directory" in message
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    message = error([*argv, "--out", tmp_path / "mine"], capsys)
    assert "holds other files (notes.txt)" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "mine"]
