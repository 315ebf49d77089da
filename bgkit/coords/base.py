"""The interface every coordinate representation implements (docs/conventions.md, "Densities").

A representation maps molecular frames x [B, N, 3] (nm) to flow vectors
y [B, D] and back. Both directions return the per-sample log|det| of the map
they apply, in one density convention shared by all representations: a density
q_C on the centroid-free coordinates of the first N-1 atoms (nm^-(3N-3)), so

    log q_C(x) = log q_y(to_flow(x)) + logdet_to(x)
    log q_C(from_flow(y)) = log q_y(y) - logdet_from(y),   logdet_from = -logdet_to.

ESS, NLL and free energies are then comparable across representations.
"""
from __future__ import annotations

import abc
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


class Representation(abc.ABC):
    """A coordinate representation: ``kind``, ``n_atoms``, ``dim``, ``periodic`` and the two maps."""

    kind: str = ""

    n_atoms: int

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Flow dimension D."""

    @property
    def periodic(self) -> tuple[int, ...]:
        """Indices of the flow dimensions that are angles on [-pi, pi) (a circle, not a line)."""
        return ()

    @classmethod
    @abc.abstractmethod
    def fit(cls, xyz: ArrayLike, system: Any = None) -> "Representation":
        """Build from training frames xyz [B, N, 3] (nm) of ``system`` (a bgkit System, where needed)."""

    @abc.abstractmethod
    def to_flow(self, xyz: ArrayLike) -> tuple[Tensor, Tensor]:
        """Frames [B, N, 3] (nm) -> (y [B, D], logdet_to [B])."""

    @abc.abstractmethod
    def from_flow(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Flow vectors [B, D] -> (centred frames [B, N, 3] in nm, logdet_from [B])."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state including ``kind``; ``from_state`` rebuilds the representation."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: dict[str, Any]) -> "Representation":
        """Inverse of ``state_dict``."""

    #: None, or a method ``augment(batch) -> batch``: a random symmetry transform of training rows (one per
    #: row, alike in every tensor of the batch) for representations that do not remove that symmetry.
    augment: Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]] | None = None

    def _frames(self, xyz: ArrayLike) -> Tensor:
        from bgkit import BgkitError

        x = torch.as_tensor(xyz)
        if x.ndim != 3 or x.shape[-2:] != (self.n_atoms, 3):
            raise BgkitError(f"expected frames [B, {self.n_atoms}, 3], got {tuple(x.shape)}")
        return x

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.state_dict() == self.state_dict()
