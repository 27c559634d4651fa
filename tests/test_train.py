"""lmkit.train: loss, schedule, optimizer groups, clipping, the loop, checkpoints, exact resume."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lmkit import train as T
from lmkit.model import ModelConfig, TransformerLM

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kw):
    base = dict(vocab_size=32, context_length=16, d_model=32, n_layers=2, n_heads=4)
    return ModelConfig.gpt2(**{**base, **kw})


def tiny_data(n=2000, vocab=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a learnable stream: mostly "next id = id + 1 (mod vocab)", some noise
    ids = torch.empty(n, dtype=torch.long)
    ids[0] = 0
    noise = torch.rand(n, generator=g) < 0.1
    jumps = torch.randint(vocab, (n,), generator=g)
    for i in range(1, n):
        ids[i] = jumps[i] if noise[i] else (ids[i - 1] + 1) % vocab
    return ids[: int(0.9 * n)], ids[int(0.9 * n):]


def tcfg(**kw):
    base = dict(steps=12, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=3, eval_interval=4,
                eval_batches=2, device="cpu")
    return T.TrainConfig(**{**base, **kw})


def trainer_after_two_of_four_steps():
    """A Trainer (seeded) that has run 2 of its 4 steps, with its data: for checkpoint tests."""
    train, val = tiny_data()
    torch.manual_seed(0)
    t = T.Trainer(TransformerLM(tiny_config()), train, val, tcfg(steps=4))
    t.run(steps=2, progress=False)
    return t, train, val


def test_lm_loss_is_minus_log_prob_of_the_right_next_token():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[1, 0, 4], [2, 2, 3]])
    logp = torch.log_softmax(logits, -1)
    by_hand = -logp.gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(T.lm_loss(logits, targets), by_hand)
    torch.testing.assert_close(T.lm_loss(logits, targets),
                               F.cross_entropy(logits.transpose(1, 2), targets))


def test_untrained_model_loss_is_about_log_vocab():
    torch.manual_seed(0)
    model = TransformerLM(tiny_config())
    train, _ = tiny_data()
    loss = T.evaluate(model, train, 8, 16, batches=4)
    assert abs(loss - math.log(32)) < 0.2


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    lrs = [T.lr_at(s, 1.0, 0.1, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[99] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then decays
    assert lrs[(10 + 99) // 2] == pytest.approx(0.55, abs=0.01)  # half-way: half-way down
    assert T.lr_at(150, 1.0, 0.1, 10, 100) == 0.1
    assert T.lr_at(0, 1.0, 0.1, 0, 5) == 1.0  # no warm-up: start at the top


def test_weight_decay_on_matrices_only():
    model = TransformerLM(tiny_config())
    opt = T.configure_optimizer(model, 1e-3, 0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert any(p is model.tok_emb.weight for p in decay["params"])


def grads_pair(seed=0):
    """Two identical sets of parameters with gradients: one for lmkit, one for torch."""
    torch.manual_seed(seed)
    a = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5)),
         torch.nn.Parameter(torch.randn(2))]  # the last has no gradient
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a[:2], b[:2]):
        p.grad = torch.randn_like(p) * 3
        q.grad = p.grad.clone()
    return a, b


@pytest.mark.parametrize("form", ["list", "generator", "tuple", "single tensor"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_matches_torch(form, norm_type):
    a, b = grads_pair()
    wrap = {"list": list, "generator": lambda ps: (p for p in ps), "tuple": tuple,
            "single tensor": lambda ps: ps[0]}[form]
    n1 = T.clip_grad_norm(wrap(a), 1.0, norm_type=norm_type)
    n2 = torch.nn.utils.clip_grad_norm_(wrap(b), 1.0, norm_type=norm_type)
    torch.testing.assert_close(n1, n2)
    assert n1 > 1.0  # the gradients were really clipped
    for p, q in zip(a, b):
        if p.grad is None:
            assert q.grad is None
        else:
            torch.testing.assert_close(p.grad, q.grad)


def test_clip_grad_norm_of_a_model_and_nonfinite_gradients():
    torch.manual_seed(0)
    m1 = TransformerLM(tiny_config())
    m2 = TransformerLM(tiny_config())
    m2.load_state_dict(m1.state_dict())
    x = torch.randint(32, (2, 8))
    for m in (m1, m2):
        (m(x) ** 2).mean().mul(100).backward()
    torch.testing.assert_close(T.clip_grad_norm(m1.parameters(), 0.5),
                               torch.nn.utils.clip_grad_norm_(m2.parameters(), 0.5))
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, float("inf"), 0.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        T.clip_grad_norm(p, 1.0, error_if_nonfinite=True)


@pytest.mark.parametrize("max_norm", [-1.0, 0.0, float("nan"), float("inf"), "1.0", True, None])
def test_clip_grad_norm_refuses_a_max_norm_that_is_not_finite_and_positive(max_norm):
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    with pytest.raises(ValueError, match=r"max_norm must be a finite number > 0, got "):
        T.clip_grad_norm([p], max_norm)
    torch.testing.assert_close(p.grad, torch.tensor([3.0, 4.0, 0.0]))  # the sign never flips


CUDA = torch.cuda.is_available()
MPS = torch.backends.mps.is_available()


def test_pick_device_honours_the_override():
    assert T.pick_device("cpu") == torch.device("cpu")
    assert T.pick_device("meta") == torch.device("meta")  # whatever the machine has


@pytest.mark.skipif(CUDA or MPS, reason="this machine has an accelerator: the tests below "
                                        "check that pick_device chooses it")
def test_pick_device_falls_back_to_cpu_without_an_accelerator():
    assert T.pick_device() == torch.device("cpu")


@pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")
def test_on_a_cuda_machine_training_runs_on_the_gpu_and_resumes(tmp_path):
    assert T.pick_device() == torch.device("cuda")
    train, val = tiny_data()
    torch.manual_seed(0)
    t = T.Trainer(TransformerLM(tiny_config()), train, val, tcfg(steps=4, device=None))
    assert all(p.device.type == "cuda" for p in t.model.parameters())
    t.run(steps=2, progress=False)
    assert all(math.isfinite(x) for x in t.history["loss"])
    t.save(tmp_path / "ckpt")
    assert "rng.cuda" in load_file(tmp_path / "ckpt" / "optimizer.safetensors")
    resumed = T.Trainer.load(tmp_path / "ckpt", train, val)
    assert resumed.step == 2 and next(resumed.model.parameters()).device.type == "cuda"
    t.run(progress=False)
    resumed.run(progress=False)
    for (k, a), b in zip(t.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


@pytest.mark.skipif(CUDA or not MPS, reason="no MPS device (or CUDA, which comes first)")
def test_on_an_mps_machine_training_runs_on_mps():
    assert T.pick_device() == torch.device("mps")
    train, val = tiny_data()
    t = T.Trainer(TransformerLM(tiny_config()), train, val, tcfg(steps=2, device=None))
    assert all(p.device.type == "mps" for p in t.model.parameters())
    t.run(progress=False)
    assert all(math.isfinite(x) for x in t.history["loss"])


def test_training_lowers_the_loss_and_records_history():
    torch.manual_seed(0)
    model = TransformerLM(tiny_config())
    train, val = tiny_data()
    hist = T.train(model, train, val, tcfg(steps=40, eval_interval=10), progress=False)
    assert hist["step"] == list(range(1, 41)) and len(hist["loss"]) == len(hist["lr"]) == 40
    assert hist["eval_step"] == [10, 20, 30, 40]
    assert hist["val_loss"][-1] < hist["val_loss"][0] < math.log(32) + 0.2
    assert hist["val_loss"][-1] < 2.5


def test_progress_bar_shows_loss_and_tokens_per_second(capsys):
    torch.manual_seed(0)
    train, val = tiny_data()
    T.train(TransformerLM(tiny_config()), train, val, tcfg(steps=3), progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "tok/s=" in err


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_is_exact(tmp_path):
    train, val = tiny_data()
    cfg = tiny_config(dropout=0.1)  # dropout: the global RNG state must be restored too
    torch.manual_seed(0)
    a = T.Trainer(TransformerLM(cfg), train, val, tcfg())
    a.run(progress=False)

    torch.manual_seed(0)
    b = T.Trainer(TransformerLM(cfg), train, val, tcfg())
    b.run(steps=5, progress=False)
    b.save(tmp_path / "ckpt")
    torch.manual_seed(123)  # anything in between must not matter
    c = T.Trainer.load(tmp_path / "ckpt", train, val)
    assert c.step == 5
    c.run(progress=False)

    wa, wc = weights(a.model), weights(c.model)
    for k in wa:
        torch.testing.assert_close(wc[k], wa[k], rtol=0, atol=0, msg=k)
    assert c.history == a.history


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    train, val = tiny_data()
    torch.manual_seed(0)
    t = T.Trainer(TransformerLM(tiny_config()), train, val, tcfg(steps=2))
    t.run(progress=False)
    t.save(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", "model.safetensors", "optimizer.safetensors",
                     "trainer_state.json"]
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["train_config"]["steps"] == 2
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")  # tied: stored once
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in tmp_path.iterdir())  # as tokenizer files


def test_save_and_load_model_round_trip_and_float16(tmp_path):
    torch.manual_seed(0)
    model = TransformerLM(tiny_config())
    T.save_model(model, tmp_path / "a")
    again = T.load_model(tmp_path / "a", device="cpu")
    ids = torch.randint(32, (2, 10))
    torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)
    assert again.lm_head.weight is again.tok_emb.weight  # the tie survives
    T.save_model(model, tmp_path / "h", dtype=torch.float16)
    half = T.load_model(tmp_path / "h", device="cpu")
    assert next(half.parameters()).dtype == torch.float32
    torch.testing.assert_close(half(ids), model(ids), rtol=0, atol=2e-3)
    small = (tmp_path / "h" / "model.safetensors").stat().st_size
    assert small < 0.6 * (tmp_path / "a" / "model.safetensors").stat().st_size


def test_mismatched_checkpoint_names_the_key_and_both_shapes(tmp_path):
    T.save_model(TransformerLM(tiny_config()), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["blocks.0.attn.q_proj.weight"] = torch.zeros(16, 32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"'blocks.0.attn.q_proj.weight' has shape \(16, 32\) "
                                         r"but config.json implies \(32, 32\)"):
        T.load_model(tmp_path)
    del tensors["blocks.0.attn.q_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="has no tensor 'blocks.0.attn.q_proj.weight'"):
        T.load_model(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.load_model(tmp_path / "nope")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="model.safetensors is a file, not a folder"):
        T.load_model(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        T.Trainer.load(tmp_path, torch.arange(100), torch.arange(100))


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    t, train, val = trainer_after_two_of_four_steps()
    t.save(tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    t.run(progress=False)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "save_file", crash)  # dies while writing the weights
    with pytest.raises(KeyboardInterrupt):
        t.save(tmp_path / "ckpt")
    after = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    assert after == before  # old files intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing left beside it
    assert T.Trainer.load(tmp_path / "ckpt", train, val).step == 2


# The file-system steps of one save: 4 files written (each ends in an os.replace), then the
# old folder is parked (os.replace), the new one renamed in (os.replace), the old one deleted.
SAVE_STEPS = ["model.safetensors", "config.json", "optimizer.safetensors",
              "trainer_state.json", "park the old folder", "rename the new one in",
              "delete the old one"]


@pytest.mark.parametrize("crash_at", range(len(SAVE_STEPS)), ids=SAVE_STEPS)
def test_save_interrupted_at_any_step_resumes_at_the_old_or_the_new_step(
    tmp_path, monkeypatch, crash_at
):
    import os
    import shutil

    t, train, val = trainer_after_two_of_four_steps()
    folder = tmp_path / "ckpt"
    t.save(folder)
    (folder / "vocab.json").write_text("{}")  # a tokenizer saved beside the checkpoint
    t.run(progress=False)

    calls = []
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def step(real):
        def patched(*args, **kwargs):
            calls.append(args)
            if len(calls) - 1 == crash_at:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return patched

    monkeypatch.setattr(os, "replace", step(real_replace))
    monkeypatch.setattr(shutil, "rmtree", lambda p, *a, **kw: (
        step(real_rmtree)(p, *a, **kw) if str(p).endswith(".old") else real_rmtree(p, *a, **kw)))
    with pytest.raises(KeyboardInterrupt):
        t.save(folder)
    monkeypatch.undo()
    assert len(calls) == crash_at + 1

    leftovers = sorted(p.name for p in tmp_path.iterdir())
    resumed = T.Trainer.load(folder, train, val)
    assert resumed.step == (2 if crash_at < 5 else 4)  # the old step until the new folder is in
    assert sorted(p.name for p in tmp_path.iterdir()) == leftovers  # loading deletes nothing
    t.save(folder)  # saving works again, and tidies up what the interrupted save left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert (folder / "vocab.json").read_text() == "{}"
    assert T.Trainer.load(folder, train, val).step == 4


def test_stale_leftovers_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    t, train, val = trainer_after_two_of_four_steps()
    t.save(tmp_path / "ckpt")
    (tmp_path / ".ckpt.saving").mkdir()  # a save killed (SIGKILL, power cut) while writing
    (tmp_path / ".ckpt.saving" / "model.safetensors").write_bytes(b"half")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".ckpt.lock").write_text(str(dead.pid))  # its lock: a pid no longer running
    assert T.load_model(tmp_path / "ckpt", device="cpu") is not None
    assert (tmp_path / ".ckpt.saving" / "model.safetensors").read_bytes() == b"half"  # reader
    t.run(progress=False)
    t.save(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert T.Trainer.load(tmp_path / "ckpt", train, val).step == 4


def test_a_reader_loading_during_a_save_does_not_break_it(tmp_path, monkeypatch):
    t, train, val = trainer_after_two_of_four_steps()
    folder = tmp_path / "ckpt"
    t.save(folder)
    t.run(progress=False)
    seen = []
    real_write = T.write_atomic

    def write_and_let_a_reader_in(path, data):
        real_write(path, data)
        if path.name == "optimizer.safetensors":  # mid-save: another process loads
            seen.append(T.Trainer.load(folder, train, val).step)
            seen.append(T.load_model(folder, device="cpu").config.d_model)

    monkeypatch.setattr(T, "write_atomic", write_and_let_a_reader_in)
    t.save(folder)
    assert seen == [2, 32]  # the reader saw the previous checkpoint
    assert T.Trainer.load(folder, train, val).step == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_second_writer_is_refused_while_a_save_holds_the_lock(tmp_path):
    train, val = tiny_data()
    torch.manual_seed(0)
    t = T.Trainer(TransformerLM(tiny_config()), train, val, tcfg(steps=2))
    t.save(tmp_path / "ckpt")
    (tmp_path / ".ckpt.saving").mkdir()  # the other writer's half-written folder
    (tmp_path / ".ckpt.lock").write_text(str(os.getpid()))  # a live pid
    with pytest.raises(RuntimeError, match=r"being saved by another writer \(process \d+"):
        t.save(tmp_path / "ckpt")
    assert (tmp_path / ".ckpt.saving").is_dir()  # its work was not deleted


def test_save_refuses_the_working_directory_and_folders_holding_other_files(
    tmp_path, monkeypatch
):
    train, val = tiny_data()
    t = T.Trainer(TransformerLM(tiny_config()), train, val, tcfg(steps=2))
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "notes.txt").write_text("mine")
    monkeypatch.chdir(project / "src")
    for folder in (".", "..", project / "src"):
        with pytest.raises(ValueError, match="working directory or a folder above it.*"
                                             "dedicated to the checkpoint"):
            t.save(folder)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"project: it holds other files \(notes.txt, src\).*"
                                         "dedicated to the checkpoint"):
        t.save(project)
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt", "src"]  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]
    t.save(project / "ckpt")  # a dedicated folder works; saving into it again too
    (project / "ckpt" / "vocab.json").write_text("{}")  # a checkpoint's extra files are kept
    t.save(project / "ckpt")
    assert (project / "ckpt" / "vocab.json").read_text() == "{}"
    (tmp_path / "empty").mkdir()
    t.save(tmp_path / "empty")  # an empty folder is fine
    assert Path.cwd() == tmp_path


def test_extra_files_are_written_into_the_new_folder_before_the_swap(tmp_path):
    t, train, val = trainer_after_two_of_four_steps()
    folder = tmp_path / "ckpt"
    t.save(folder, extra=lambda new: (new / "vocab.json").write_text("old"))
    t.run(progress=False)
    where = []

    def broken_tokenizer(new):
        where.append(new)
        (new / "vocab.json").write_text("new")
        raise KeyboardInterrupt  # dies while writing the tokenizer

    with pytest.raises(KeyboardInterrupt):
        t.save(folder, extra=broken_tokenizer)
    assert where == [tmp_path / ".ckpt.saving"]
    assert (folder / "vocab.json").read_text() == "old"  # old weights, old tokenizer
    assert T.Trainer.load(folder, train, val).step == 2
    t.save(folder, extra=lambda new: (new / "vocab.json").write_text("new"))
    assert (folder / "vocab.json").read_text() == "new"  # new weights, new tokenizer
    assert T.Trainer.load(folder, train, val).step == 4


def test_partly_written_checkpoint_is_detected(tmp_path):
    t, train, val = trainer_after_two_of_four_steps()
    t.save(tmp_path / "old")
    t.run(progress=False)
    t.save(tmp_path / "new")
    (tmp_path / "new" / "model.safetensors").write_bytes(
        (tmp_path / "old" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="only partly written"):
        T.Trainer.load(tmp_path / "new", train, val)


def test_sequence_loss_averages_consecutive_windows():
    torch.manual_seed(0)
    model = TransformerLM(tiny_config())
    ids = torch.randint(32, (16 * 3 + 5,))
    windows = [(ids[i * 16:(i + 1) * 16], ids[i * 16 + 1:(i + 1) * 16 + 1]) for i in range(3)]
    with torch.no_grad():
        want = sum(T.lm_loss(model(x[None]), y[None]).item() for x, y in windows) / 3
    assert T.sequence_loss(model, ids) == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="at least 17 tokens"):
        T.sequence_loss(model, ids[:16])


def test_llama_style_untied_model_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig.llama(vocab_size=32, context_length=16, d_model=32, n_layers=1, n_heads=4,
                            n_kv_heads=2)
    model = TransformerLM(cfg)
    T.save_model(model, tmp_path)
    assert "lm_head.weight" in load_file(tmp_path / "model.safetensors")  # untied: stored
    again = T.load_model(tmp_path, device="cpu")
    ids = torch.randint(32, (1, 8))
    torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)


def test_pick_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert T.pick_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert T.pick_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert T.pick_device() == torch.device("cpu")


def test_save_through_a_symlink_keeps_the_link_and_refuses_a_file(tmp_path):
    train, val = tiny_data()
    torch.manual_seed(0)
    t = T.Trainer(TransformerLM(tiny_config()), train, val, tcfg(steps=4))
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    t.run(steps=2, progress=False)
    t.save(tmp_path / "link")
    t.run(progress=False)
    t.save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert T.Trainer.load(tmp_path / "real", train, val).step == 4
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        t.save(tmp_path / "file")


@pytest.mark.parametrize(("content", "cause"), [(b"", "empty"), (b"\x80\x02}q\x00.", "pickle")])
def test_model_file_that_is_not_safetensors_is_named(tmp_path, content, cause):
    T.save_model(TransformerLM(tiny_config()), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(ValueError, match=rf"model.safetensors is not a valid safetensors file: "
                                         rf".*{cause}"):
        T.load_model(tmp_path)


@pytest.mark.parametrize("field, bad", [
    ("activation_checkpointing", "no"),  # a non-empty string is truthy: it switched it ON
    ("compile", "yes"), ("compile", 1),
    ("grad_accum", True), ("steps", True), ("batch_size", 2.0),
    ("mlm_mask_id", -1), ("mlm_mask_id", True),
])
def test_train_config_type_checks_switches_and_counts(field, bad):
    kind = "True or False" if field in ("compile", "activation_checkpointing") else "integer"
    with pytest.raises(ValueError, match=rf"{field} must be .*{kind}.*got {bad!r}"):
        T.TrainConfig(**{field: bad})
