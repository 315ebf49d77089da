"""Data-parallel context for the training loop: the device and the collectives it needs.

The process group itself (joining under torchrun, the safe teardown) is :mod:`bgkit.distributed`'s;
this module picks the device (and with it the backend: nccl on CUDA, gloo on CPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bgkit.distributed import Group, join_group, leave_group
from bgkit.train.config import TrainConfig

__all__ = ["Dist", "setup_dist"]


@dataclass
class Dist:
    """This process's place in the group, its device, and the collectives the loop needs (no-ops alone)."""

    group: Group = field(default_factory=Group)
    device: torch.device = torch.device("cpu")

    @property
    def rank(self) -> int:
        return self.group.rank

    @property
    def world(self) -> int:
        return self.group.world

    @property
    def active(self) -> bool:
        return self.group.active

    def leave(self, finished: bool) -> None:
        """Tear down the process group if :func:`setup_dist` set it up."""
        leave_group(self.group, finished)

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
    """The device (``cfg.device``, else cuda:LOCAL_RANK when CUDA is available, else cpu) and the process group
    of a ``torchrun`` launch (joined here unless the caller did), or one process."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device is not None:
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Dist(join_group("nccl" if device.type == "cuda" else "gloo"), device)
