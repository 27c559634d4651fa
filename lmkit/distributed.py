"""Data-parallel training with PyTorch's own engine, `torch.distributed` (chapter 12).

`torchrun --nproc_per_node N -m lmkit train ...` starts N copies of the same program and
tells each, through environment variables, who it is:

    RANK         this process's number, 0 ... N - 1 (rank 0 prints and writes files)
    WORLD_SIZE   N, the number of processes
    LOCAL_RANK   its number on this machine (which GPU it uses)
    MASTER_ADDR, MASTER_PORT   where the processes meet to connect to each other

`init_from_env` joins that group: gloo on CPUs, NCCL on CUDA GPUs. Every collective has a
timeout, so a process whose peer crashed or hangs fails with an error instead of waiting
forever. `lmkit.train.Trainer` notices an initialised group and trains with
`DistributedDataParallel`: each process takes its share of every global batch, and after
`backward` the gradients are averaged across processes (an all-reduce), so every copy of the
model takes the same step.
"""

from __future__ import annotations

import math
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["init_from_env", "launched_by_torchrun", "is_initialized", "rank", "world_size",
           "is_main", "all_reduce_mean", "is_comm_failure", "barrier", "shutdown", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 120.0  # a collective waiting longer than this fails the run


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set RANK and WORLD_SIZE for this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_world_size() -> int:
    """The number of processes torchrun started (WORLD_SIZE), 1 when it did not start us."""
    return _env_int("WORLD_SIZE") if launched_by_torchrun() else 1


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S, device: str | None = None) -> str:
    """Join the process group described by torchrun's environment; return this rank's device.

    The backend follows the device: NCCL for CUDA (one GPU per process, cuda:LOCAL_RANK),
    gloo for CPUs. `device` forces one ("cpu" trains on CPUs even where GPUs exist).
    """
    if not launched_by_torchrun():
        raise RuntimeError("RANK and WORLD_SIZE are not set: start the program with "
                           "`torchrun --nproc_per_node N ...`, or train in one process")
    if not 0 < timeout_s < math.inf:  # also refuses nan
        raise ValueError(f"timeout_s must be a finite number of seconds > 0, got {timeout_s}")
    rank_, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if not 0 <= rank_ < world:
        raise ValueError(f"RANK={rank_} with WORLD_SIZE={world}: ranks are 0 ... WORLD_SIZE - 1 "
                         "(torchrun sets both; a wrong pair would wait for peers that never come)")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank_
    if device is not None and device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device {device!r} cannot train distributed: use 'cpu' or 'cuda' "
                         "(torch.distributed has gloo for CPUs and NCCL for CUDA GPUs)")
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but PyTorch sees no CUDA GPU here; use "
                           "device='cpu'")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=timedelta(seconds=timeout_s))
    return device


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r} (it is set by torchrun)") from None


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank, 0 when not distributed."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of processes, 1 when not distributed."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (the process that shows progress and writes files), or when alone."""
    return rank() == 0


def all_reduce_mean(t: Tensor) -> Tensor:
    """The mean of `t` over all processes (`t` itself when alone); `t` is not modified."""
    if not is_initialized():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def is_comm_failure(e: BaseException) -> bool:
    """Whether an exception raised in a training step came from talking to other processes
    (a peer that crashed closes its connections; one that hangs makes a collective time out)."""
    if isinstance(e, dist.DistError):
        return True
    # the backends' own errors name them (e.g. "[.../gloo/transport/tcp/pair.cc] Connection
    # closed by peer"); words like "timeout" or "peer" alone would claim ordinary errors
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(s in text for s in ("gloo", "nccl", "c10d"))


def barrier() -> None:
    """Wait until every process gets here (nothing when alone)."""
    if is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if is_initialized():
        dist.destroy_process_group()
