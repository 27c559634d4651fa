"""Scaling up (chapter 12): data-parallel training on CPU with gloo, precision, accumulation.

Two processes are started the way torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT in the environment) running tests/ddp_worker.py; one-process training in this
process is the reference they must match.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ddp_worker import corpus, make_config, make_model

from lmkit.__main__ import main
from lmkit.tokenizer import CharTokenizer
from lmkit.train import Trainer, checkpoint_blocks, lm_loss, load_model, step_batches

pytestmark = pytest.mark.usefixtures("one_thread")
slow = pytest.mark.slow  # starts Python processes: a few seconds each on a quiet machine
WORKER = Path(__file__).parent / "ddp_worker.py"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(scenario: str, out: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    return [subprocess.Popen([sys.executable, str(WORKER), scenario, str(out)],
                             env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r in range(2)]


def finish(p: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"a training process still ran after {timeout} s: it hangs")
    return p.returncode, err


@pytest.fixture(scope="module")
def reference():
    """One process, the same global batches: the weights and history to match."""
    torch.set_num_threads(1)
    train_ids, val_ids = corpus()
    trainer = Trainer(make_model(seed=100), train_ids, val_ids, make_config())
    trainer.run(progress=False)
    return trainer


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    for p in start("train", out):
        code, err = finish(p)
        assert code == 0, err
    return out


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa)


@slow
def test_two_processes_train_the_same_model_as_one(ddp_run, reference):
    model = load_model(ddp_run / "rank0", device="cpu")  # fails on a `module.` prefix
    assert max_diff(model, reference.model) < 1e-5
    histories = [json.loads((ddp_run / f"history{r}.json").read_text()) for r in range(2)]
    assert histories[0] == histories[1]  # losses are all-reduced: every rank knows the same
    for key in ("loss", "train_loss", "val_loss"):
        torch.testing.assert_close(torch.tensor(histories[0][key]),
                                   torch.tensor(reference.history[key]), rtol=0, atol=1e-5)


@slow
def test_only_rank_0_writes_checkpoints(ddp_run):
    assert (ddp_run / "rank0" / "trainer_state.json").is_file()
    assert not (ddp_run / "rank1").exists()
    names = json.loads((ddp_run / "rank0" / "config.json").read_text())
    assert names["d_model"] == 32  # model.config reached through the DDP wrapper
    from safetensors import safe_open

    with safe_open(str(ddp_run / "rank0" / "model.safetensors"), "pt") as f:
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in f.keys())


@slow
def test_resume_under_ddp_continues_exactly(ddp_run):
    straight = load_model(ddp_run / "rank0", device="cpu")
    resumed = load_model(ddp_run / "resumed", device="cpu")
    assert max_diff(straight, resumed) == 0.0
    assert json.loads((ddp_run / "history_resumed.json").read_text()) == \
        json.loads((ddp_run / "history0.json").read_text())


@slow
def test_a_crash_on_one_rank_fails_the_run_with_a_clear_message(tmp_path):
    t0 = time.perf_counter()
    rank0, rank1 = start("crash", tmp_path)
    code1, err1 = finish(rank1)
    code0, err0 = finish(rank0)
    assert code1 != 0 and "rank 1 broke on purpose" in err1
    assert code0 != 0 and "lost contact with the other processes at step 2" in err0
    assert time.perf_counter() - t0 < 60


@slow
def test_a_hanging_rank_times_out_instead_of_hanging(tmp_path):
    rank0, rank1 = start("hang", tmp_path)  # rank 1 sleeps 60 s; the timeout is 3 s
    try:
        code0, err0 = finish(rank0, timeout=50)
    finally:
        rank1.kill()
        rank1.communicate()
    assert code0 != 0 and "lost contact with the other processes" in err0


def test_batches_split_across_ranks_cover_the_global_batch():
    ids = torch.arange(1000)
    (whole,) = step_batches(ids, 8, 5, torch.Generator().manual_seed(3))
    parts = [step_batches(ids, 8, 5, torch.Generator().manual_seed(3), 1, r, 2)[0]
             for r in range(2)]
    assert not torch.equal(parts[0][0], parts[1][0])  # each rank draws different windows
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), whole[0], rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), whole[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple of 3"):
        step_batches(ids, 8, 5, None, 1, 0, 3)


def test_grad_accumulation_equals_one_step_on_the_concatenated_batch():
    train_ids, val_ids = corpus()
    runs = []
    for batch, accum in ((16, 1), (8, 2), (4, 4)):
        t = Trainer(make_model(), train_ids, val_ids, make_config(batch_size=batch,
                                                                  grad_accum=accum))
        t.run(progress=False)
        runs.append(t)
    for t in runs[1:]:
        assert max_diff(t.model, runs[0].model) < 1e-5  # AdamW's 1/sqrt(v) amplifies rounding
        torch.testing.assert_close(torch.tensor(t.history["loss"]),
                                   torch.tensor(runs[0].history["loss"]), rtol=0, atol=1e-6)
    # the gradient of the first step, by hand: one backward over the concatenated 16 windows
    model = make_model()
    x, y = step_batches(train_ids, 16, 16, torch.Generator().manual_seed(0))[0]
    lm_loss(model(x), y).backward()
    accum = make_model()
    batches = step_batches(train_ids, 4, 16, torch.Generator().manual_seed(0), grad_accum=4)
    for xb, yb in batches:
        (lm_loss(accum(xb), yb) / 4).backward()
    for a, b in zip(model.parameters(), accum.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_bf16_trains_to_within_0_05_nats_of_fp32():
    tok = CharTokenizer("ROMEO: But soft, what light through yonder window breaks?\n")
    ids = torch.tensor(tok.encode("ROMEO: But soft, what light through yonder window breaks?\n"
                                  * 80))
    train_ids, val_ids = ids[:4000], ids[4000:]
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = make_model()
        model.lm_head.weight.data = model.tok_emb.weight.data  # tied; vocab 32 covers the text
        t = Trainer(model, train_ids, val_ids,
                    make_config(steps=30, lr=1e-2, eval_interval=10, precision=precision))
        t.run(progress=False)
        losses[precision] = torch.tensor(t.history["val_loss"])
    assert losses["fp32"][-1] < losses["fp32"][0] - 0.5  # it learned something
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=0, atol=0.05)


def test_activation_checkpointing_gives_the_same_gradients():
    x, y = step_batches(corpus()[0], 4, 16, torch.Generator().manual_seed(0))[0]
    grads = []
    for enabled in (False, True):
        model = checkpoint_blocks(make_model(), enabled)
        lm_loss(model(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    model = checkpoint_blocks(make_model(), True)
    assert list(model.state_dict()) == list(make_model().state_dict())
    checkpoint_blocks(model, False)
    assert all("forward" not in vars(b) for b in model.blocks)


@slow
def test_torchrun_cli_equals_the_one_process_cli(tmp_path, capsys):
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 60
    (tmp_path / "c.txt").write_text(text)
    args = ["train", "--corpus", str(tmp_path / "c.txt"), "--steps", "3", "--batch-size", "4",
            "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                          "2", "--master_port", str(free_port()), "-m", "lmkit", *args,
                          "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("saved to") == 1  # only rank 0 prints
    main(args + ["--out", str(tmp_path / "one")])
    assert "saved to" in capsys.readouterr().out
    ddp, one = load_model(tmp_path / "ddp", "cpu"), load_model(tmp_path / "one", "cpu")
    assert max_diff(ddp, one) < 1e-5


def test_cli_scaling_options(tmp_path, capsys):
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 60
    (tmp_path / "c.txt").write_text(text)
    out = tmp_path / "run"
    main(["train", "--corpus", str(tmp_path / "c.txt"), "--steps", "2", "--batch-size", "2",
          "--grad-accum", "2", "--precision", "bf16", "--activation-checkpointing",
          "--no-progress", "--out", str(out)])
    saved = json.loads((out / "trainer_state.json").read_text())
    state = saved["train_config"]
    assert (state["precision"], state["grad_accum"], state["activation_checkpointing"]) == \
        ("bf16", 2, True)
    assert saved["step"] == 2  # the run took the steps asked for
    with pytest.raises(SystemExit):
        main(["train", "--corpus", str(tmp_path / "c.txt"), "--precision", "fp16",
              "--out", str(out)])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


@pytest.mark.parametrize("env, kw, match", [
    ({"RANK": "3", "WORLD_SIZE": "1"}, {}, r"RANK=3 .* WORLD_SIZE=1"),  # hung 120 s before
    ({"RANK": "x", "WORLD_SIZE": "2"}, {}, r"RANK must be an integer, got 'x'"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, {"timeout_s": float("nan")}, r"timeout_s .* nan"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, {"device": "mps"}, r"'mps'.*'cpu' or 'cuda'"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, {"device": "gpu"}, r"'gpu'.*'cpu' or 'cuda'"),
])
def test_init_from_env_checks_its_environment_before_joining(monkeypatch, env, kw, match):
    from lmkit import distributed

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ValueError, match=match):
        distributed.init_from_env(**kw)
    assert not distributed.is_initialized()


def test_the_cli_reads_world_size_with_a_clear_error(monkeypatch, tmp_path):
    """`train` under a launcher reads WORLD_SIZE before joining: a non-number is named."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(ValueError, match=r"WORLD_SIZE must be an integer, got 'x'"):
        main(["train", "--steps", "1", "--out", str(tmp_path / "m")])


def test_is_comm_failure_does_not_claim_ordinary_errors():
    """Any error whose text held 'timeout', 'peer' or 'connection' counted as a lost peer."""
    from lmkit.distributed import is_comm_failure

    assert not is_comm_failure(ValueError("timeout_s must be > 0 seconds, got 0"))
    assert not is_comm_failure(RuntimeError("the peer tensor has the wrong shape"))
    assert not is_comm_failure(RuntimeError("no connection between these two layers"))
    assert is_comm_failure(RuntimeError("[/gloo/transport/tcp/pair.cc:534] Connection closed "
                                        "by peer [127.0.0.1]:1234"))
