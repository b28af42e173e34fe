"""torchrun/DDP set-up that falls back to one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_dist(device_type: str) -> Dist:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(rank, world, local)


def all_mean(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is untouched)."""
    value = value.detach().clone()
    if d.enabled:
        dist.all_reduce(value)
        value /= d.world
    return value


def barrier(d: Dist) -> None:
    """Wait for every rank (nothing with one process)."""
    if d.enabled:
        dist.barrier()


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
