"""The ``cartesian`` representation: centred, scaled Cartesian coordinates, y in R^(3N-3).

Each frame is centred on its centroid (unweighted mean of the atom positions),
the last atom is dropped (it is minus the sum of the other centred atoms) and
the rest is divided by one global ``scale`` (nm). The log-determinant is the
constant -(3N-3) log(scale / nm). Flows in this representation learn rotations
too, so training augments every batch with uniform random rotations.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bgkit import BgkitError

from .base import ArrayLike, Representation
from .geometry import center, random_rotations


class CartesianCoords(Representation):
    """Frames [B, N, 3] (nm) <-> flow vectors [B, 3N-3]; n_atoms N, scale in nm (flow units = nm / scale)."""

    kind = "cartesian"

    def __init__(self, n_atoms: int, scale: float) -> None:
        if int(n_atoms) < 2:
            raise BgkitError(f"cartesian coordinates need at least 2 atoms, got {n_atoms}")
        if not (math.isfinite(scale) and scale > 0):
            raise BgkitError(f"scale must be a positive finite length in nm, got {scale}")
        self.n_atoms, self.scale = int(n_atoms), float(scale)

    @classmethod
    def fit(cls, xyz: ArrayLike, system: Any = None) -> "CartesianCoords":
        """scale = RMS of the centred coordinates of xyz [B, N, 3] (nm)."""
        x = torch.as_tensor(xyz, dtype=torch.float64)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise BgkitError(f"expected frames of shape [B, N, 3], got {tuple(x.shape)}")
        return cls(n_atoms=x.shape[1], scale=float(center(x).pow(2).mean().sqrt()))

    @property
    def dim(self) -> int:
        return 3 * self.n_atoms - 3

    @property
    def log_det_to_flow(self) -> float:
        """The constant log|det| of (first N-1 centred atoms, nm) -> y: -(3N-3) log(scale)."""
        return -self.dim * math.log(self.scale)

    def to_flow(self, xyz: ArrayLike) -> tuple[Tensor, Tensor]:
        x = self._frames(xyz)
        c = center(x)[:, :-1, :]
        y = c.reshape(c.shape[0], self.dim) / self.scale
        return y, y.new_full((y.shape[0],), self.log_det_to_flow)

    def from_flow(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if y.ndim != 2 or y.shape[-1] != self.dim:
            raise BgkitError(f"expected flow vectors [B, {self.dim}], got {tuple(y.shape)}")
        c = y.reshape(y.shape[0], self.n_atoms - 1, 3) * self.scale
        return torch.cat([c, -c.sum(-2, keepdim=True)], dim=-2), y.new_full((y.shape[0],), -self.log_det_to_flow)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_atoms": self.n_atoms, "scale": self.scale}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "CartesianCoords":
        return cls(n_atoms=int(state["n_atoms"]), scale=float(state["scale"]))

    def augment(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """One uniform random rotation per row, the same for every tensor of the batch (x0 and x1 alike)."""
        b = batch[0].shape[0]
        R = random_rotations(b, dtype=batch[0].dtype, device=batch[0].device)
        return tuple(torch.einsum("bij,bnj->bni", R, t.reshape(b, -1, 3)).reshape(b, -1) for t in batch)
