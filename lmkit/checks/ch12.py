"""Checkers for the chapter 12 exercises (scaling up)."""

from __future__ import annotations

import inspect
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

from ..model import ModelConfig, TransformerLM
from ..train import lm_loss
from .common import INPLACE, Mistake, call, checker, fail, passed

__all__ = ["check_training_memory", "check_accumulate_gradients", "check_all_reduce_mean",
           "check_profile_summary", "PROFILE_TABLE", "MISTAKES"]

M = Mistake
MISTAKES: dict[str, dict[str, Mistake]] = {
    "training_memory": {
        "adamw_one": M("counting one AdamW state per parameter",
                       "AdamW keeps TWO values per parameter (the running mean and the running "
                       "mean square of the gradient)"),
        "adamw_three": M("counting three AdamW states (the weight again)",
                         "AdamW keeps two values per parameter, not three: the running mean and "
                         "mean square (the weight is counted already)"),
        "momentum_two": M("counting two momentum states", "SGD with momentum keeps ONE value "
                          "per parameter (the velocity), not two"),
        "sgd_state": M("giving plain SGD a state", "plain SGD keeps no state at all: weights and "
                       "gradients only"),
        "no_grads": M("leaving out the gradients", "you left out the gradients: backward stores "
                      "one float32 gradient per weight, 4 more bytes per parameter"),
        "bits": M("counting bits, not bytes", "you counted bits, not bytes: a float32 value is "
                  "4 bytes (32 bits)"),
        "half": M("counting 2 bytes per value", "float32 is 4 bytes per value, not 2 (that is "
                  "bf16/fp16; mixed precision still keeps float32 weights and states)"),
        "values": M("counting values, not bytes", "you counted values, not bytes: multiply by 4 "
                    "bytes per float32 value"),
        "megabytes": M("returning megabytes", "return bytes, not megabytes"),
        "not_divided": M("not dividing when sharded", "sharded=True: FSDP gives each process "
                         "1/world_size of the weights, gradients and optimizer states; divide by "
                         "world_size"),
        "ddp_divided": M("dividing when not sharded (DDP)", "sharded=False is DDP: every process "
                         "keeps a FULL copy of weights, gradients and states, whatever world_size "
                         "is"),
        "states_only": M("sharding only the optimizer states", "with sharded=True all three are "
                         "sharded (ZeRO-3/FSDP), not only the optimizer states"),
        "type": M("returning something other than a number", "return a number of bytes (an int "
                  "or a float)"),
    },
    "accumulate_gradients": {
        "stale": M("not clearing the previous step's gradients",
                   "the gradients still contain the previous step's: clear them first "
                   "(model.zero_grad(), or p.grad = None) before the first backward"),
        "times_K": M("not dividing each micro-batch loss by K",
                     "the gradients are K times too large: divide each micro-batch loss by K "
                     "before backward, so the sum is a mean"),
        "zero_inside": M("zeroing the gradients between micro-batches",
                         "only the last micro-batch's gradient survived: don't zero the "
                         "gradients between micro-batches; backward adds into .grad"),
        "zero_inside_undivided": M("zeroing between micro-batches and not dividing by K",
                                   "only the last micro-batch's gradient survived: don't zero "
                                   "the gradients between micro-batches, and divide each loss "
                                   "by K"),
        "by_batch": M("dividing by the batch size instead of K", "divide each micro-batch loss "
                      "by K (the number of micro-batches), not by the batch size B"),
        "first_only": M("using only the first micro-batch", "only the first micro-batch "
                        "contributed: loop over all K micro-batches"),
        "dim1": M("splitting along the sequence (dim 1)", "you split along the sequence "
                  "(dim 1): micro-batches are groups of whole windows, x.chunk(K, dim=0)"),
        "one_pass": M("one forward and backward on the whole batch (no accumulation)",
                      "you ran the whole batch in one forward and one backward: that is the big "
                      "batch itself, not accumulation. Split x and y into K micro-batches "
                      "(x.chunk(K)) and run forward and backward on each in turn"),
        "one_backward": M("one backward after all K forward passes",
                          "the gradients are right, but you called backward once, after all K "
                          "forward passes: every micro-batch's activations stayed in memory at "
                          "once, as with the big batch. Call backward on each micro-batch's loss "
                          "(divided by K) right after its forward, before the next micro-batch"),
        "loss_sum": M("returning the sum of the micro-batch losses",
                      "you returned the sum of the micro-batch losses; return their mean"),
        "loss_last": M("returning only the last micro-batch's loss",
                       "you returned only the last micro-batch's loss; average over all K"),
        "loss_last_scaled": M("returning only the last micro-batch's loss / K",
                              "you returned only the last (scaled) micro-batch loss; add them "
                              "all up"),
        "loss_type": M("returning a tensor of several values, or nothing",
                       "return the whole batch's loss as one float (loss.item())"),
        "inplace": INPLACE,
    },
    "all_reduce_mean": {
        "sum": M("returning the sum (forgetting to divide)", "every rank got the SUM of the "
                 "tensors: divide by dist.get_world_size()"),
        "twice": M("dividing by the world size twice", "you divided by the world size twice (or "
                   "by 4): the mean of 2 tensors is their sum divided by 2"),
        "no_comm": M("dividing without communicating", "there was no communication: each rank "
                     "divided its own tensor by the world size. Call dist.all_reduce so every "
                     "rank sees the sum of all ranks' tensors"),
        "inplace": M("all-reducing the input tensor itself",
                     "the average is right, but you changed the input tensor in place "
                     "(dist.all_reduce writes into its argument): all-reduce a clone"),
        "broadcast": M("broadcasting rank 0's tensor", "every rank got rank 0's tensor: that "
                       "is a broadcast, not an average; use dist.all_reduce with ReduceOp.SUM, "
                       "then divide"),
        "max": M("reducing with MAX", "every rank got the elementwise MAX: use ReduceOp.SUM "
                 "(the default), then divide"),
        "reduce": M("dist.reduce (only rank 0 gets the result)", "only rank 0 got the average: "
                    "dist.reduce sends the result to one rank; dist.all_reduce gives it to every "
                    "rank"),
        "element_mean": M("averaging the tensor's elements (.mean())",
                          "you returned a single number: .mean() averages the tensor's "
                          "elements; the average is across processes, element by element, same "
                          "shape as t"),
        "shape": M("gathering or stacking the tensors", "all_reduce keeps the shape (did you "
                   "gather or stack the tensors?)"),
        "own": M("returning each rank's own tensor", "each rank returned its own tensor: call "
                 "dist.all_reduce on a copy, then divide"),
        "by_rank": M("dividing by rank + 1", "you divided by rank + 1; divide by "
                     "dist.get_world_size(), the same on every rank"),
        "no_return": M("forgetting `return`", "your function returned None: return the averaged "
                       "tensor"),
        "dtype": M("changing the dtype (t.double())", "keep the input's dtype (all-reduce a "
                   "clone of t, not t.double() or t.half())"),
        "world_size": M("writing the number of processes in as 2",
                        "the number of processes is dist.get_world_size(), do not write it in"),
    },
    "profile_summary": {
        "by_total": M("taking the largest CPU total for top_self",
                      "top_self is the op with the largest SELF time (time in the op itself); "
                      "you took the largest CPU total, which includes the ops it calls"),
        "units": M("comparing times without converting ms and us",
                   "the table mixes units (ms and us); convert to one unit before comparing"),
        "per_call_top": M("ranking top_self by self time per call",
                          "top_self is the op with the largest self time in all, not per call: "
                          "divide by the calls only for ms_per_call"),
        "children_top": M("ranking top_total by the time in the ops it calls",
                          "top_total is the op with the largest CPU total (its own time plus "
                          "the ops it calls), not the largest total minus self"),
        "top_total_self": M("taking the largest self time for top_total",
                            "top_total is the op with the largest CPU TOTAL (itself plus the ops "
                            "it calls), not the largest self time"),
        "percent": M("a percentage instead of a fraction", "give the share as a fraction "
                     "between 0 and 1, not a percentage"),
        "only_mm": M("counting only aten::mm as a matrix product", "aten::addmm (a product plus "
                     "a bias) and aten::bmm (batched) are matrix products too"),
        "no_addmm": M("leaving out aten::addmm", "aten::addmm (a product plus a bias) is a "
                      "matrix product too"),
        "no_bmm": M("leaving out aten::bmm", "aten::bmm (batched products, as in attention) is "
                    "a matrix product too"),
        "linear": M("counting aten::linear as a matrix product", "aten::linear does almost "
                    "nothing itself (it calls addmm); count only aten::addmm, aten::mm and "
                    "aten::bmm"),
        "total_share": M("shares from the CPU totals", "use the SELF times for shares: CPU "
                         "totals count a child's time again in every parent, so they add up to "
                         "more than the step"),
        "per_call": M("not dividing by the number of calls", "ms_per_call is the top op's self "
                      "time divided by its number of calls"),
        "microseconds": M("ms_per_call in microseconds", "ms_per_call should be in "
                          "milliseconds, you gave microseconds"),
        "keys": M("returning other keys, or not a dict", "return a dict with exactly the keys "
                  "top_self, top_total, matmul_share and ms_per_call"),
    },
}

# ---------------------------------------------------------------- exercise 1: memory

_STATES = {"sgd": 0, "momentum": 1, "adamw": 2}  # optimizer values kept per parameter


def _memory(n: int, optimizer: str, world_size: int, sharded: bool) -> int:
    per_param = 4 * (2 + _STATES[optimizer])  # float32 weight + gradient + states
    return n * per_param // (world_size if sharded else 1)


@checker
def check_training_memory(fn) -> None:
    """Exercise 1: fn(n_params, optimizer, world_size, sharded) -> bytes per process."""
    H = MISTAKES["training_memory"]
    cases = [(1_000_000, "momentum", 1, False), (1_000_000, "sgd", 1, False),
             (1_000_000, "adamw", 1, False), (124_000_000, "adamw", 1, False),
             (7_000_000_000, "adamw", 8, False), (7_000_000_000, "adamw", 64, True),
             (1_000_000, "momentum", 4, True), (3_000, "sgd", 2, True)]
    for n, opt, world, sharded in cases:
        got = call(fn, n, opt, world, sharded, name="training_memory")
        want = _memory(n, opt, world, sharded)
        where = f"n_params={n:,}, optimizer={opt!r}, world_size={world}, sharded={sharded}"
        if isinstance(got, torch.Tensor):
            got = got.item()
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            fail(f"training_memory({where}) returned {type(got).__name__}: {H['type'].hint}")
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        states = _STATES[opt]
        div = world if sharded else 1
        specific = []
        if opt == "adamw":
            specific.append((n * 4 * 3 / div, "adamw_one"))
            specific.append((n * 4 * 5 / div, "adamw_three"))
        if opt == "momentum":
            specific.append((n * 4 * 4 / div, "momentum_two"))
        if opt == "sgd":
            specific.append((n * 4 * 3 / div, "sgd_state"))
        mistakes = specific + [
            (n * 4 * (1 + states) / div, "no_grads"),
            (n * 4 * (2 + states) * 8 / div, "bits"),
            (n * 2 * (2 + states) / div, "half"),
            (n * (2 + states) / div, "values"),
            (n * 4 * (2 + states) / div / 2**20, "megabytes"),
            (n * 4 * (2 + states), "not_divided"),
            (n * 4 * (2 + states) / world, "ddp_divided"),
            (n * 4 * 2 + n * 4 * states / div, "states_only"),
        ]
        for wrong, key in mistakes:
            if math.isclose(got, wrong, rel_tol=1e-9):
                fail(f"training_memory({where}): expected {want:,} bytes, got {got:,}; "
                     f"{H[key].hint}")
        fail(f"training_memory({where}): expected {want:,} bytes, got {got:,}. Count 4 bytes "
             "for the weight, 4 for the gradient and 4 per optimizer state value, times "
             "n_params; divide by world_size only when sharded")
    passed("training_memory", len(cases))


# ------------------------------------------------------- exercise 2: accumulation


def _model(seed: int) -> TransformerLM:
    with torch.random.fork_rng():  # the same weights every time, the caller's RNG untouched
        torch.manual_seed(seed)
        return TransformerLM(ModelConfig.gpt2(vocab_size=17, context_length=8, d_model=16,
                                              n_layers=1, n_heads=2))


def _grads(model) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for p in model.parameters()]


def _grads_for(model, batches, scale) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    for xb, yb in batches:
        (lm_loss(model(xb), yb) * scale).backward()
    return _grads(model)


def _watch(model) -> tuple[list, list]:
    """Record, in order, each grad-enabled forward pass of `model` (with its batch size) and
    each backward pass that reaches its parameters; returns (events, hook handles)."""
    events: list = []

    def on_forward(module, args):
        if torch.is_grad_enabled():  # a forward under no_grad (e.g. for the loss) is allowed
            events.append(("forward", int(args[0].shape[0])))

    first = next(model.parameters())  # the token embedding: every backward reaches it once
    handles = [model.register_forward_pre_hook(on_forward),
               first.register_hook(lambda g: events.append(("backward", None)))]
    return events, handles


def _order_hint(events: list, B: int, K: int) -> str | None:
    """The hint when the micro-batches were not run forward-then-backward one at a time."""
    want = [("forward", B // K), ("backward", None)] * K
    if events == want:
        return None
    forwards = [n for kind, n in events if kind == "forward"]
    backwards = sum(kind == "backward" for kind, _ in events)
    if forwards == [B] and backwards == 1:
        return MISTAKES["accumulate_gradients"]["one_pass"].hint
    if forwards == [B // K] * K and backwards == 1:
        return MISTAKES["accumulate_gradients"]["one_backward"].hint
    ran = ", ".join(f"forward on {n} windows" if kind == "forward" else "backward"
                    for kind, n in events)
    return (f"expected K={K} rounds of (forward on B/K={B // K} windows, then backward); your "
            f"function ran: {ran or 'nothing'}")


@checker
def check_accumulate_gradients(fn) -> None:
    """Exercise 2: fn(model, x, y, K) leaves in .grad the gradient of lm_loss on the whole
    batch, computed from K micro-batches, and returns the whole batch's loss."""
    H = MISTAKES["accumulate_gradients"]
    g = torch.Generator().manual_seed(0)
    cases = [(8, 4, 2), (8, 4, 4), (6, 8, 3), (4, 8, 1)]  # (B, T, K)
    for i, (B, T, K) in enumerate(cases):
        model = _model(i)
        x = torch.randint(17, (B, T), generator=g)
        y = torch.randint(17, (B, T), generator=g)
        for p in model.parameters():  # stale gradients from an earlier step
            p.grad = torch.full_like(p, 0.5)
        events, handles = _watch(model)
        try:
            got_loss = call(fn, model, x, y, K, name="accumulate_gradients")  # refuses x, y changed
        finally:
            for h in handles:
                h.remove()
        got = _grads(model)
        ref = _model(i)
        full_loss = lm_loss(ref(x), y)
        want = _grads_for(ref, [(x, y)], 1.0)
        where = f"B={B}, T={T}, K={K}"

        def same(a, b):
            return all(torch.allclose(u, v, atol=1e-6, rtol=1e-4) for u, v in zip(a, b))

        if not same(got, want):
            micro = list(zip(x.chunk(K), y.chunk(K)))
            stale = [w + 0.5 for w in want]
            mistakes = [
                (stale, "stale"),
                (_grads_for(ref, micro, 1.0), "times_K"),
                (_grads_for(ref, micro[-1:], 1.0 / K), "zero_inside"),
                (_grads_for(ref, micro[-1:], 1.0), "zero_inside_undivided"),
                (_grads_for(ref, micro, 1.0 / B), "by_batch"),
                (_grads_for(ref, micro[:1], 1.0 / K), "first_only"),
                (_grads_for(ref, list(zip(x.chunk(K, dim=1), y.chunk(K, dim=1))), 1.0 / K),
                 "dim1"),
            ]
            for wrong, key in mistakes:
                if same(got, wrong):
                    fail(f"accumulate_gradients({where}): {H[key].hint}")
            fail(f"accumulate_gradients({where}): the gradients differ from one backward over "
                 "the whole batch. Split x and y into K chunks along dim 0, and call "
                 "(lm_loss(model(xk), yk) / K).backward() on each")
        order = _order_hint(events, B, K)
        if order is not None:
            fail(f"accumulate_gradients({where}): {order}")
        if isinstance(got_loss, torch.Tensor):
            if got_loss.numel() != 1:
                fail(f"accumulate_gradients({where}) returned a tensor of shape "
                     f"{tuple(got_loss.shape)}: {H['loss_type'].hint}")
            got_loss = got_loss.item()
        if not isinstance(got_loss, (int, float)):
            fail(f"accumulate_gradients({where}) returned {type(got_loss).__name__}: "
                 f"{H['loss_type'].hint}")
        if not math.isclose(got_loss, full_loss.item(), rel_tol=1e-5):
            last = lm_loss(ref(x.chunk(K)[-1]), y.chunk(K)[-1]).item()
            if K > 1 and math.isclose(got_loss, full_loss.item() * K, rel_tol=1e-5):
                hint = H["loss_sum"].hint
            elif K > 1 and math.isclose(got_loss, last / K, rel_tol=1e-5):
                hint = H["loss_last_scaled"].hint
            elif K > 1 and math.isclose(got_loss, last, rel_tol=1e-5):
                hint = H["loss_last"].hint
            else:
                hint = "add up loss_k / K over the micro-batches"
            fail(f"accumulate_gradients({where}): returned loss {got_loss:.5f}, expected the "
                 f"whole batch's {full_loss.item():.5f}; {hint}")
    passed("accumulate_gradients", len(cases))


# ------------------------------------------------- exercise 3: all-reduce by hand

def _inputs(rank: int) -> list[torch.Tensor]:
    """The three cases process `rank` averages (the worker imports them from here)."""
    return [torch.tensor([1.0, 2.0, 3.0]) * (rank + 1),  # [1, 2, 3] and [2, 4, 6]
            torch.arange(6.0).view(2, 3) - 10 * rank,  # 2-D, negative on rank 1
            torch.tensor(7.5) if rank == 0 else torch.tensor(-2.5)]  # a scalar


_WORKER = r'''
import json, os, sys, traceback
import torch
import torch.distributed as dist

dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=30))
rank = dist.get_rank()
sources = json.loads(open(sys.argv[1]).read())
from lmkit.checks.ch12 import _inputs
cases = _inputs(rank)
results = []
for name, source in sources:
    ns = {"torch": torch, "dist": dist}
    out = []
    try:
        exec(source, ns)
        for t in cases:
            given = t.clone()
            got = ns[name](given)
            if isinstance(got, (list, tuple)):
                raise TypeError(f"returned a {type(got).__name__}, not a tensor")
            out.append({"value": None if got is None else torch.as_tensor(got).tolist(),
                        "dtype": None if got is None else str(torch.as_tensor(got).dtype),
                        "changed": not torch.equal(given, t),
                        "same_object": got is given})
        results.append({"cases": out})
    except NotImplementedError:
        results.append({"stub": True})
    except Exception as e:
        results.append({"error": f"{type(e).__name__}: {e}".splitlines()[0]})
    dist.barrier()
print(json.dumps(results))
dist.destroy_process_group()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_on_processes(fns, world: int = 2) -> list[list[dict]]:
    """Run each function on the worker's cases in `world` gloo processes: results per rank."""
    sources = [(fn.__name__, textwrap.dedent(inspect.getsource(fn))) for fn in fns]
    with tempfile.TemporaryDirectory() as tmp:
        worker, src = Path(tmp) / "worker.py", Path(tmp) / "sources.json"
        worker.write_text(_WORKER)
        src.write_text(json.dumps(sources))
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
               "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, str(worker), str(src)],
                                  env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for r in range(world)]
        outs = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                fail(f"the {world} processes did not finish within 120 s: does your function call "
                     "a collective (all_reduce, broadcast, ...) on one rank only? Every rank "
                     "must make the same calls")
            if p.returncode != 0:
                fail(f"a process crashed: {err.strip().splitlines()[-1] if err.strip() else '?'}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
    return [[outs[r][i] for r in range(world)] for i in range(len(fns))]


def _all_reduce_hint(ranks: list[dict]) -> str | None:
    """The hint for one function's results on ranks 0 and 1 (None: correct)."""
    H = {k: m.hint for k, m in MISTAKES["all_reduce_mean"].items()}
    if any("stub" in r for r in ranks):
        return "stub"
    for r in ranks:
        if "error" in r:
            return f"your function raised {r['error']}"
    t = [_inputs(r) for r in range(2)]
    mean = [(a + b) / 2 for a, b in zip(t[0], t[1])]
    for c in range(3):
        got = [ranks[r]["cases"][c] for r in range(2)]
        if any(g["value"] is None for g in got):
            return H["no_return"]
        vals = [torch.tensor(g["value"], dtype=torch.float64) for g in got]
        if any(v.dim() == 0 for v in vals) and mean[c].dim() > 0:
            return H["element_mean"]
        if any(v.shape != mean[c].shape for v in vals):
            return (f"the result has shape {tuple(vals[0].shape)} but the input had "
                    f"{tuple(mean[c].shape)}: {H['shape']}")
        want = mean[c].double()
        if any(g["dtype"] != str(t[0][c].dtype) for g in got):
            return (f"you returned a {got[0]['dtype']} tensor for a {t[0][c].dtype} input: "
                    f"{H['dtype']}")
        if all(torch.allclose(v, want) for v in vals):
            if any(g["changed"] or g["same_object"] for g in got):
                return H["inplace"]
            continue
        total = (t[0][c] + t[1][c]).double()
        checks = [
            (all(torch.allclose(v, total) for v in vals), H["sum"]),
            (all(torch.allclose(v, total / 4) for v in vals), H["twice"]),
            (all(torch.allclose(vals[r], t[r][c].double() / 2) for r in range(2)), H["no_comm"]),
            (all(torch.allclose(vals[r], t[r][c].double()) for r in range(2)), H["own"]),
            (all(torch.allclose(v, t[0][c].double()) for v in vals), H["broadcast"]),
            (all(torch.allclose(v, torch.maximum(t[0][c], t[1][c]).double()) for v in vals),
             H["max"]),
            (torch.allclose(vals[0], want) and not torch.allclose(vals[1], want), H["reduce"]),
            (all(torch.allclose(vals[r], total / (r + 1)) for r in range(2)), H["by_rank"]),
        ]
        for matches, hint in checks:
            if matches:
                return hint
        return (f"case {c}: rank 0 returned {got[0]['value']}, rank 1 {got[1]['value']}; "
                f"both should be {want.tolist()}, the mean of the two ranks' tensors")
    return None




def _world_size_hint(ranks: list[dict]) -> str | None:
    """The hint for one function's results on three processes (None: correct), for answers
    that were right on two: the world size must not be hard-coded."""
    world = len(ranks)
    if any("stub" in r or "error" in r for r in ranks):
        err = next((r["error"] for r in ranks if "error" in r), "NotImplementedError")
        return f"on {world} processes your function raised {err}"
    for c in range(3):
        total = sum(_inputs(r)[c] for r in range(world)).double()
        vals = [r["cases"][c]["value"] for r in ranks]
        if any(v is None for v in vals):
            return f"on {world} processes your function returned None"
        vals = [torch.tensor(v, dtype=torch.float64) for v in vals]
        if any(v.shape != total.shape for v in vals):
            return f"on {world} processes the result has shape {tuple(vals[0].shape)}"
        if all(torch.allclose(v, total / world) for v in vals):
            continue
        if all(torch.allclose(v, total / 2) for v in vals):
            return (f"right on 2 processes, but on {world} you divided the sum by 2: "
                    f"{MISTAKES['all_reduce_mean']['world_size'].hint}")
        return (f"right on 2 processes, but not on {world}: rank 0 returned "
                f"{vals[0].tolist()}, expected {(total / world).tolist()} on every rank")
    return None


def all_reduce_hints(fns, world: int = 2) -> list[str | None]:
    """The hint (None when correct) for each function, all run in one group of `world`
    processes (2: the cases and hints of the exercise; 3: catches a hard-coded world size)."""
    hint = _all_reduce_hint if world == 2 else _world_size_hint
    return [hint(r) for r in _run_on_processes(fns, world)]


@checker
def check_all_reduce_mean(fn) -> None:
    """Exercise 3: fn(t) returns the mean of t over all processes, t unchanged; run on two
    gloo processes started by the check, then on three (the world size is not always 2)."""
    try:  # the unsolved stub raises at once; no need to start processes
        fn(torch.zeros(1))
    except NotImplementedError:
        raise
    except Exception:
        pass  # a real answer fails here: no process group in this process
    hint = all_reduce_hints([fn])[0]
    if hint == "stub":
        raise NotImplementedError("all_reduce_mean is not solved yet")
    if hint is not None:
        fail(f"all_reduce_mean on 2 processes: {hint}")
    hint = all_reduce_hints([fn], world=3)[0]  # the same cases on three processes
    if hint is not None:
        fail(f"all_reduce_mean: {hint}")
    passed("all_reduce_mean", 6)


# ----------------------------------------------------- exercise 4: profiler table

# Six rows of a real `prof.key_averages().table(...)` of one training step (chapter 12), as
# (name, self CPU, CPU total, calls); the times carry their units, as in the table.
PROFILE_TABLE = [
    ("aten::addmm", "61.207ms", "64.881ms", 38),
    ("aten::mm", "55.310ms", "55.310ms", 56),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "9.184ms", "9.904ms", 8),
    ("aten::linear", "312.000us", "71.204ms", 38),
    ("aten::native_layer_norm", "4.916ms", "5.602ms", 18),
    ("Optimizer.step#AdamW.step", "2.011ms", "24.760ms", 2),
    ("aten::bmm", "850.000us", "850.000us", 4),
    ("aten::gelu", "3.372ms", "3.372ms", 8),
]
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm")


def _ms(s: str) -> float:
    for unit, f in (("ms", 1.0), ("us", 1e-3), ("s", 1e3)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * f
    raise ValueError(s)


def _summary(rows, self_ms=_ms, total_col=2, share_scale=1.0, per_call=True, top_by=1,
             matmul=MATMUL_OPS):
    times = [self_ms(r[1]) for r in rows]
    totals = [_ms(r[2]) for r in rows]
    key = times if top_by == 1 else totals
    top = rows[max(range(len(rows)), key=key.__getitem__)]
    top_total = rows[max(range(len(rows)), key=[totals, times][total_col - 2].__getitem__)]
    mm = sum(t for r, t in zip(rows, times) if r[0] in matmul)
    share = mm / sum(times) * share_scale
    i = rows.index(top)
    return {"top_self": top[0], "top_total": top_total[0], "matmul_share": share,
            "ms_per_call": times[i] / rows[i][3] if per_call else times[i]}


def _shuffled(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [PROFILE_TABLE[i] for i in torch.randperm(len(PROFILE_TABLE), generator=g).tolist()]


@checker
def check_profile_summary(fn) -> None:
    """Exercise 4: fn(rows) -> {"top_self", "top_total", "matmul_share", "ms_per_call"}."""
    H = {k: m.hint for k, m in MISTAKES["profile_summary"].items()}
    swapped = [(n, "900.000us" if n == "aten::mm" else s, t, c) for n, s, t, c in PROFILE_TABLE]
    slow = {"aten::gelu": ("70.000ms", "75.000ms", 8),  # leads self time and CPU total, but
            "Optimizer.step#AdamW.step": ("20.000ms", "24.760ms", 2)}  # not per call/children
    cases = [("the table", list(PROFILE_TABLE)), ("the rows in another order", _shuffled(1)),
             ("aten::mm taking 900us instead", swapped),
             ("a slow GELU and optimizer step", [(n, *slow.get(n, (s, t, c)))
                                                 for n, s, t, c in PROFILE_TABLE])]
    for case, rows in cases:
        got = call(fn, [tuple(r) for r in rows], name="profile_summary")
        want = _summary(rows)
        if not isinstance(got, dict) or set(got) != set(want):
            fail(f"profile_summary returned "
                 f"{sorted(got) if isinstance(got, dict) else type(got).__name__}: {H['keys']}")
        wrong = {
            "ignore units": _summary(rows, self_ms=lambda s: float(s[:-2])),
            "by total": _summary(rows, top_by=2),
            "percent": _summary(rows, share_scale=100.0),
            "no per call": _summary(rows, per_call=False),
            "only mm": _summary(rows, matmul=("aten::mm",)),
            "linear in": _summary(rows, matmul=MATMUL_OPS + ("aten::linear",)),
            "no bmm/addmm": _summary(rows, matmul=("aten::mm", "aten::bmm")),
            "no bmm": _summary(rows, matmul=("aten::addmm", "aten::mm")),
        }
        times = {r[0]: _ms(r[1]) for r in rows}
        per_call_top = max(rows, key=lambda r: times[r[0]] / r[3])[0]
        children_top = max(rows, key=lambda r: _ms(r[2]) - times[r[0]])[0]
        for key in ("top_self", "top_total"):
            if got[key] != want[key]:
                if key == "top_self" and got[key] == wrong["by total"]["top_self"]:
                    fail(f"{case}: {H['by_total']} ({got[key]} just calls others)")
                if got[key] == wrong["ignore units"][key]:
                    fail(f"{case}: {key} should be {want[key]!r}, got {got[key]!r}: "
                         f"{H['units']}")
                if key == "top_total" and got[key] == want["top_self"]:
                    fail(f"{case}: {H['top_total_self']}")
                if key == "top_self" and got[key] == per_call_top:
                    fail(f"{case}: {H['per_call_top']}")
                if key == "top_total" and got[key] == children_top:
                    fail(f"{case}: {H['children_top']}")
                fail(f"{case}: {key} should be {want[key]!r}, got {got[key]!r}")
        share = got["matmul_share"]
        if not isinstance(share, (int, float)) or not math.isclose(share, want["matmul_share"],
                                                                    rel_tol=1e-3):
            for name, hint in (("percent", H["percent"]), ("ignore units", H["units"]),
                               ("only mm", H["only_mm"]), ("no bmm/addmm", H["no_addmm"]),
                               ("no bmm", H["no_bmm"]),
                               ("linear in", H["linear"])):
                if isinstance(share, (int, float)) and math.isclose(share, wrong[name]
                                                                    ["matmul_share"],
                                                                    rel_tol=1e-3):
                    fail(f"{case}: matmul_share {share:.4g}, expected "
                         f"{want['matmul_share']:.4g}: {hint}")
            if isinstance(share, (int, float)):
                totals = sum(_ms(r[2]) for r in rows)
                mm_total = sum(_ms(r[2]) for r in rows if r[0] in MATMUL_OPS)
                if math.isclose(share, mm_total / totals, rel_tol=1e-3):
                    fail(f"{case}: {H['total_share']}")
            fail(f"{case}: matmul_share should be {want['matmul_share']:.4f} (self time of "
                 f"{', '.join(MATMUL_OPS)} over the sum of all self times), got {share!r}")
        per = got["ms_per_call"]
        if not isinstance(per, (int, float)) or not math.isclose(per, want["ms_per_call"],
                                                                  rel_tol=1e-3):
            if isinstance(per, (int, float)):
                if math.isclose(per, wrong["no per call"]["ms_per_call"], rel_tol=1e-3):
                    fail(f"{case}: {H['per_call']}")
                if math.isclose(per, want["ms_per_call"] * 1e3, rel_tol=1e-3):
                    fail(f"{case}: {H['microseconds']}")
            fail(f"{case}: ms_per_call should be {want['ms_per_call']:.4f} ms, got {per!r}")
    passed("profile_summary", len(cases))
