"""Training rows: checked in-memory arrays or streamed sources, and the reproducible batch order."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from bgkit import BgkitError
from bgkit.train.objectives import Objective

__all__ = ["Rows", "BatchOrder", "prepare_rows"]


class Rows:
    """Training or validation rows held in memory: ``n``, ``dim``, ``take(idx) -> tuple of [b, D] tensors``."""

    def __init__(self, tensors: tuple[Tensor, ...]) -> None:
        self.tensors = tensors
        self.n, self.dim = tensors[0].shape

    def take(self, idx: Tensor) -> tuple[Tensor, ...]:
        return tuple(t[idx] for t in self.tensors)


class BatchOrder:
    """Global batch b of epoch e = permutation(seed, e)[b·B:(b+1)·B]; rank r takes its slice."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.local = batch_size // world
        self.rank = rank
        self.steps_per_epoch = n // batch_size
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def indices(self, step: int) -> Tensor:
        epoch, b = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        start = b * self.batch_size + self.rank * self.local
        return torch.from_numpy(self._perm[start : start + self.local])


def prepare_rows(data: Any, objective: Objective, dtype: torch.dtype, what: str) -> Any:
    """Turn user data into a checked source of rows: ``n``, ``dim``, ``take(idx)``.

    In-memory arrays become CPU tensors; an object with ``take``/``n``/``dim``/``pairs`` (e.g. the
    chunked reflow targets of :mod:`bgkit.train.reflow`) is streamed as it is.
    """
    if hasattr(data, "take") and not isinstance(data, (Tensor, np.ndarray)):
        if bool(getattr(data, "pairs", False)) != objective.pairs:
            raise BgkitError(f"{what} for {objective.name} must be " + ("pairs (x0, x1)" if objective.pairs else "frames"))
        return data
    if objective.pairs:
        if hasattr(data, "x0") and hasattr(data, "x1"):
            data = (data.x0, data.x1)
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
            raise BgkitError(f"{what} for {objective.name} must be a pair (x0, x1) of [n, D] arrays "
                             "(and optionally the teacher's log-dets [n])")
        tensors = tuple(torch.as_tensor(np.asarray(d) if not isinstance(d, Tensor) else d).to("cpu", dtype) for d in data)
        if tensors[0].shape != tensors[1].shape:
            raise BgkitError(f"{what}: x0 {tuple(tensors[0].shape)} and x1 {tuple(tensors[1].shape)} differ in shape")
        if len(tensors) == 3 and tensors[2].shape != tensors[0].shape[:1]:
            raise BgkitError(f"{what}: log-dets {tuple(tensors[2].shape)} do not match {tensors[0].shape[0]} pairs")
    else:
        if isinstance(data, (tuple, list)) and len(data) == 1:
            data = data[0]
        if isinstance(data, (tuple, list)):
            raise BgkitError(f"{what} for {objective.name} must be one [n, D] array of frames")
        tensors = (torch.as_tensor(np.asarray(data) if not isinstance(data, Tensor) else data).to("cpu", dtype),)
    t = tensors[0]
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise BgkitError(f"{what} must have shape [n, D] with n, D > 0, got {tuple(t.shape)}")
    for x in tensors:
        if not torch.isfinite(x).all():
            raise BgkitError(f"{what} contains NaN or inf values")
    return Rows(tensors)
