"""Scale-out on torch.distributed: launched by ``torchrun``, each process takes a shard of the images.

Backend: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU. Outside ``torchrun``
(no ``WORLD_SIZE`` in the environment) everything runs in one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Context", "setup", "barrier", "shard", "set_threads", "default_threads"]


def default_threads() -> int | None:
    """Intra-op threads this process should use: the CPU cores divided by the processes on this machine
    (``LOCAL_WORLD_SIZE``, set by torchrun) when there is more than one, else None (torch's default).

    Processes that each keep torch's default pool (all cores) slow each other down several times over
    (``benchmarks/speed_cpu/``, concurrency), so processes that share a machine split its cores."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_world <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // local_world)


_CHOSEN: list[int] = []  # a count the user chose (--threads) wins over the default for the process's life


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count: ``threads`` when given (and remembered), else a count chosen
    earlier, else :func:`default_threads` when that is not None; returns the count in force."""
    if threads is not None:
        _CHOSEN[:] = [threads]
    n = _CHOSEN[0] if _CHOSEN else default_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be at least 1, got {n}")
        torch.set_num_threads(n)
    return torch.get_num_threads()


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> Context:
    """Join the process group started by torchrun, or return the single-process context, on ``device`` (the
    run's device, chosen by :func:`~dps.execution.choose_device`: under torchrun ``cuda`` is the GPU of the
    process's local rank). NCCL for CUDA devices, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device.type == "cpu":
        set_threads()  # processes sharing the CPU split its cores (an explicit --threads was applied before)
    if world <= 1:
        return Context(device=device)
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Context(rank, world, device)


def barrier(ctx: Context) -> None:
    if ctx.world > 1:
        dist.barrier()


def shard(indices: list[int], ctx: Context) -> list[int]:
    """This process's share: every world-th item, starting at its rank (a deterministic split)."""
    return indices[ctx.rank::ctx.world]
