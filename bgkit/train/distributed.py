"""Data-parallel context for the training loop (torchrun: gloo on CPU, nccl on CUDA)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bgkit import BgkitError
from bgkit.train.config import TrainConfig

__all__ = ["Dist", "setup_dist"]


@dataclass
class Dist:
    """This process's rank, the world size and device, and the collectives the loop needs (no-ops alone)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_mean(self, values: Tensor) -> Tensor:
        if self.active:
            values = values.clone()
            torch.distributed.all_reduce(values)
            values /= self.world
        return values

    def all_sum(self, values: Tensor) -> Tensor:
        if self.active:
            values = values.clone()
            torch.distributed.all_reduce(values)
        return values

    def gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def setup_dist(cfg: TrainConfig) -> Dist:
    """The process group of a ``torchrun`` launch (initialised here unless the caller did), or one process."""
    import torch.distributed as dist  # noqa: PLC0415

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device is not None:
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ctx = Dist(device=device)
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
    elif env_world > 1:
        if not dist.is_available():
            raise BgkitError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        ctx.rank, ctx.world, ctx.owns_group = dist.get_rank(), dist.get_world_size(), True
    return ctx
