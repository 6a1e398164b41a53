"""Scale-out on torch.distributed: launched by ``torchrun``, each process takes a shard of the images.

Backend: NCCL when CUDA is available (one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPU. Outside
``torchrun`` (no ``WORLD_SIZE`` in the environment) everything runs in one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Context", "setup", "barrier", "shard"]


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> Context:
    """Join the process group started by torchrun, or return the single-process context (on the first CUDA
    device when there is one, else the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(device=torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return Context(rank, world, device)


def barrier(ctx: Context) -> None:
    if ctx.world > 1:
        dist.barrier()


def shard(indices: list[int], ctx: Context) -> list[int]:
    """This process's share: every world-th item, starting at its rank (a deterministic split)."""
    return indices[ctx.rank::ctx.world]
