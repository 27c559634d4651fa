"""Scaling-up measurements of chapter 12 (make bench): precision, compilation, data parallelism.

1. Training tokens/s of one process (one thread) in float32, in bf16 autocast, and with
   torch.compile (float32), as ratios to float32; the compile time is reported apart. The
   steps of the three are interleaved so that a busy machine slows all of them alike.
2. The same global batch trained by one process and by two DDP processes (gloo, one thread
   each, started with torchrun): tokens/s of each, and the share of a DDP step lost to
   communication (a step with the gradient all-reduce against one under `no_sync`).

    python benchmarks/scaling.py [--d-model 256 --layers 4 --context 128 --batch 16 --steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from lmkit.model import ModelConfig, TransformerLM
from lmkit.train import autocast, configure_optimizer, lm_loss


def make_config(a: argparse.Namespace) -> ModelConfig:
    return ModelConfig.gpt2(vocab_size=a.vocab, context_length=a.context, d_model=a.d_model,
                            n_layers=a.layers, n_heads=max(1, a.d_model // 64))


def make_step(model, engine, x, y, precision):
    opt = configure_optimizer(model, 1e-3, 0.1)

    def step():
        with autocast("cpu", precision):
            loss = lm_loss(engine(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def single_process(a: argparse.Namespace) -> dict[str, float]:
    cfg = make_config(a)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(a.vocab, (a.batch, a.context), generator=g)
    y = torch.randint(a.vocab, (a.batch, a.context), generator=g)
    steps = {}
    for name, precision, compiled in (("fp32", "fp32", False), ("bf16", "bf16", False),
                                      ("compiled fp32", "fp32", True)):
        if compiled and a.no_compile:
            continue
        torch.manual_seed(0)
        model = TransformerLM(cfg)
        engine = torch.compile(model) if compiled else model
        steps[name] = make_step(model, engine, x, y, precision)
    compile_s = None
    for name, step in steps.items():  # warm-up; the compiled one compiles here
        t = timed(step)
        if name.startswith("compiled"):
            compile_s = t
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(a.steps):
        for name, step in steps.items():
            times[name].append(timed(step))
    tokens = a.batch * a.context
    rates = {name: tokens / statistics.median(ts) for name, ts in times.items()}
    print(f"model: {a.layers} layers, d_model {a.d_model}, context {a.context}, batch "
          f"{a.batch}, {TransformerLM(cfg).num_parameters():,} parameters, one thread")
    for name, rate in rates.items():
        print(f"  {name:14} {rate:10,.0f} tokens/s  {rate / rates['fp32']:5.2f}x float32")
    if compile_s is not None:
        print(f"  (torch.compile's first step, compiling included: {compile_s:.1f} s)")
    return rates


def ddp_worker(a: argparse.Namespace) -> None:
    """One of the torchrun processes: time DDP steps with and without the all-reduce."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lmkit import distributed

    distributed.init_from_env(timeout_s=300, device="cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(a.vocab, (a.batch, a.context), generator=g)
    y = torch.randint(a.vocab, (a.batch, a.context), generator=g)
    share = a.batch // world
    x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
    torch.manual_seed(0)
    model = TransformerLM(make_config(a))
    ddp = DistributedDataParallel(model)
    sync = make_step(model, ddp, x, y, "fp32")

    def no_sync():
        with ddp.no_sync():
            sync()

    sync(), no_sync()  # warm-up
    t_sync, t_local = [], []
    for _ in range(a.steps):
        t_sync.append(timed(sync))
        t_local.append(timed(no_sync))
    # every rank waits for the slowest, so report the slowest rank's medians
    meds = torch.tensor([statistics.median(t_sync), statistics.median(t_local)])
    dist.all_reduce(meds, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(json.dumps({"t_sync": meds[0].item(), "t_local": meds[1].item()}))
    distributed.shutdown()


def data_parallel(a: argparse.Namespace, one_process_rate: float) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           __file__, "--ddp-worker"] + [f"--{k.replace('_', '-')}={v}" for k, v in (
               ("vocab", a.vocab), ("context", a.context), ("d_model", a.d_model),
               ("layers", a.layers), ("batch", a.batch), ("steps", a.steps))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"the 2-process run failed:\n{res.stderr[-3000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    rate = a.batch * a.context / r["t_sync"]
    lost = max(0.0, 1 - r["t_local"] / r["t_sync"])
    print(f"data parallel, the same global batch of {a.batch} x {a.context} tokens:")
    print(f"  1 process      {one_process_rate:10,.0f} tokens/s")
    print(f"  2 DDP (gloo)   {rate:10,.0f} tokens/s  {rate / one_process_rate:5.2f}x one "
          f"process (2.00x would be perfect scaling)")
    print(f"  communication: {lost:.0%} of a DDP step (step {r['t_sync'] * 1e3:.1f} ms, "
          f"{r['t_local'] * 1e3:.1f} ms without the all-reduce)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=16, help="global batch (even)")
    p.add_argument("--steps", type=int, default=6, help="timed steps of each variant")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow)")
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.ddp_worker:
        return ddp_worker(a)
    if a.batch % 2:
        p.error(f"--batch must be even to split across 2 processes, got {a.batch}")
    rates = single_process(a)
    data_parallel(a, rates["fp32"])


if __name__ == "__main__":
    main()
