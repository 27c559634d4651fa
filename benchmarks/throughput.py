"""Training and decoding tokens/s side by side, in one run (make bench).

Contenders, all with the same GPT-2 configuration and the same initial weights:

* Hugging Face `GPT2LMHeadModel` built from a config (random weights, SDPA attention);
* lmkit `TransformerLM(config)`: fast=True, PyTorch's kernels (SDPA, F.layer_norm, F.gelu);
* lmkit `TransformerLM(config, fast=False)`: exactly as taught, with the written-out
  attention, LayerNorm and GELU of chapters 03-05;
* optionally karpathy/nanoGPT's `model.py`, if LMKIT_BENCH_NANOGPT names a folder holding
  it (nanoGPT is not part of lmkit: fetch it yourself). It is trained as its own train.py
  does (its `configure_optimizers`), beside an lmkit model with its exact GELU.

Training step: forward, next-token cross-entropy, zero_grad(set_to_none), backward, clip to
norm 1, AdamW step (lmkit.train.configure_optimizer for HF and lmkit: fused where PyTorch has
it). No .item() per step. Steps of all contenders are interleaved, so a busy machine slows
them alike; each figure is the median step. Process CPU time is reported too: on a machine
shared with other work it is steadier than wall time. Decoding: greedy, batch 1, KV cache,
`lmkit.generate` and HF `generate`, best of --repeats interleaved runs, same tokens checked.

    python benchmarks/throughput.py [--steps 10 --threads 1 --new-tokens 128]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_throughput import race, to_hf  # noqa: E402

from lmkit.generation import generate  # noqa: E402
from lmkit.model import ModelConfig, TransformerLM  # noqa: E402
from lmkit.train import clip_grad_norm, configure_optimizer, lm_loss  # noqa: E402

NANOGPT_ENV = "LMKIT_BENCH_NANOGPT"


def load_nanogpt(folder: str):
    """nanoGPT's model module from `folder`/model.py (outside this repository), or None."""
    path = Path(folder) / "model.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lmkit_step(model, opt, x, y):
    def step():
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
    return step


def hf_step(model, opt, x, y):
    def step():
        logits = model(x).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def nanogpt_step(model, opt, x, y):
    def step():  # as nanoGPT's train.py: loss from the model, clip, step, zero_grad
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def time_steps(steps: dict, n: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per step of each contender over n interleaved rounds."""
    for step in steps.values():  # warm-up: allocations, optimizer state
        step()
        step()
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    names = list(steps)
    for i in range(n):
        for name in names if i % 2 == 0 else names[::-1]:  # alternate who goes first
            c0, t0 = time.process_time(), time.perf_counter()
            steps[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per contender")
    p.add_argument("--new-tokens", type=int, default=128, help="decoding: tokens per run")
    p.add_argument("--repeats", type=int, default=3, help="decoding: runs per contender")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    V, T, B = args.vocab, args.context, args.batch

    config = ModelConfig.gpt2(vocab_size=V, context_length=T, d_model=args.d_model,
                              n_layers=args.layers, n_heads=args.heads)
    fast = TransformerLM(config)
    taught = TransformerLM(config, fast=False)
    taught.load_state_dict(fast.state_dict())
    hf = to_hf(fast).train()
    models = {"Hugging Face GPT2LMHeadModel": hf, "lmkit fast=True": fast,
              "lmkit fast=False (as taught)": taught}
    probe = torch.randint(V, (2, 16))
    with torch.no_grad():
        for name, m in models.items():  # same weights, same function
            m.eval()
            out = m(probe).logits if name.startswith("Hugging") else m(probe)
            torch.testing.assert_close(out, fast(probe), rtol=1e-4, atol=1e-4)
            m.train()

    x = torch.randint(V, (B, T), generator=torch.Generator().manual_seed(1))
    y = torch.randint(V, (B, T), generator=torch.Generator().manual_seed(2))
    steps = {
        name: (hf_step if name.startswith("Hugging") else lmkit_step)(
            m, configure_optimizer(m, 1e-3, 0.1), x, y)
        for name, m in models.items()
    }
    nano_note = f"nanoGPT: skipped (set {NANOGPT_ENV}=/path/to/nanoGPT to compare)"
    nano_dir = os.environ.get(NANOGPT_ENV)
    module = load_nanogpt(nano_dir) if nano_dir else None
    if nano_dir and module is None:
        nano_note = f"nanoGPT: skipped ({nano_dir}/model.py not found)"
    if module is not None:
        with contextlib.redirect_stdout(io.StringIO()):  # nanoGPT prints its choices
            nano = module.GPT(module.GPTConfig(
                block_size=T, vocab_size=V, n_layer=args.layers, n_head=args.heads,
                n_embd=args.d_model, dropout=0.0, bias=True))
            nano_opt = nano.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
        erf = TransformerLM(ModelConfig.gpt2(**{**config.to_dict(), "activation": "gelu"}))
        assert erf.num_parameters() == sum(q.numel() for q in nano.parameters())
        steps["nanoGPT model.py (exact GELU)"] = nanogpt_step(nano, nano_opt, x, y)
        steps["lmkit fast=True, exact GELU"] = lmkit_step(
            erf, configure_optimizer(erf, 1e-3, 0.1), x, y)
    train = time_steps(steps, args.steps)

    decode = {}
    ids = torch.randint(V, (1, 16), generator=torch.Generator().manual_seed(3))
    n = min(args.new_tokens, T - ids.shape[1])
    for m in models.values():
        m.eval()

    def hf_generate():
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, pad_token_id=0,
                               eos_token_id=None)

    runs = {"Hugging Face GPT2LMHeadModel": hf_generate,
            "lmkit fast=True": lambda: generate(fast, ids, n),
            "lmkit fast=False (as taught)": lambda: generate(taught, ids, n)}
    assert torch.equal(runs["lmkit fast=True"](), hf_generate()), "lmkit and HF disagree"
    for name, t in race(runs, args.repeats).items():
        decode[name] = n / t

    print(f"config: {args.layers} layers, {args.heads} heads, d_model {args.d_model}, context "
          f"{T}, vocab {V}, {fast.num_parameters() / 1e6:.2f}M parameters, float32, eager; "
          f"training batch {B} x {T}; torch {torch.__version__}, {args.threads} thread(s)")
    print(f"training: median of {args.steps} interleaved steps; decoding: greedy, batch 1, "
          f"prompt 16 + {n} new tokens, KV cache, best of {args.repeats}")
    head = f"{'':32} {'train tok/s':>12} {'(CPU time)':>11} {'decode tok/s':>13}"
    print(head)
    print("-" * len(head))
    for name, (wall, cpu) in train.items():
        dec = f"{decode[name]:13,.0f}" if name in decode else f"{'-':>13}"
        print(f"{name:32} {B * T / wall:12,.0f} {B * T / cpu:11,.0f} {dec}")
    hf_wall, hf_cpu = train["Hugging Face GPT2LMHeadModel"]
    for name in ("lmkit fast=True", "lmkit fast=False (as taught)"):
        wall, cpu = train[name]
        print(f"{name} / Hugging Face: training {hf_wall / wall:.2f}x (CPU time "
              f"{hf_cpu / cpu:.2f}x), decoding {decode[name] / decode['Hugging Face GPT2LMHeadModel']:.2f}x")
    if module is not None:
        (nw, nc), (ow, oc) = train["nanoGPT model.py (exact GELU)"], train["lmkit fast=True, exact GELU"]
        print(f"lmkit fast=True / nanoGPT model.py, same configuration (exact GELU): training "
              f"{nw / ow:.2f}x (CPU time {nc / oc:.2f}x)")
    else:
        print(nano_note)


if __name__ == "__main__":
    main()
