"""Coordinates between Cartesian molecules (nm) and flow space, rotations, chirality.

Flow space is R^(3N-3) (option (a) of METHODS.md): each frame is centred on its
centroid (unweighted mean of atom positions), the last atom is dropped (it is
-sum of the other centred atoms) and the rest is divided by one global `scale`
(nm). Densities are then exact on the centroid-free subspace:

    log q_nm(x) = log q_flow(y) + log_det_to_flow,   log_det_to_flow = -(3N-3) log(scale / nm),

where q_nm is a density in nm^-(3N-3) with respect to Lebesgue measure on the
coordinates of the first N-1 centred atoms (no further constant). The density
with respect to the intrinsic (Hausdorff) volume of the centred subspace of
R^(3N) is smaller by the constant factor N^(3/2): log q_H = log q_nm - 1.5 log N.
Use one convention for ESS, NLL and free energies alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bgkit import BgkitError

ArrayLike = Tensor | np.ndarray


def center(xyz: Tensor) -> Tensor:
    """Subtract each frame's centroid (unweighted mean): xyz [..., N, 3] -> [..., N, 3] (same units)."""
    return xyz - xyz.mean(dim=-2, keepdim=True)


@dataclass(frozen=True)
class CoordinateTransform:
    """Map between molecular frames [B, N, 3] (nm) and flow vectors [B, 3N-3] (dimensionless).

    n_atoms: N; scale: global length scale in nm (flow units = nm / scale).
    """

    n_atoms: int
    scale: float

    def __post_init__(self) -> None:
        if int(self.n_atoms) < 2:
            raise BgkitError(f"CoordinateTransform needs at least 2 atoms, got {self.n_atoms}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise BgkitError(f"scale must be a positive finite length in nm, got {self.scale}")
        object.__setattr__(self, "n_atoms", int(self.n_atoms))
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def fit(cls, xyz: ArrayLike) -> "CoordinateTransform":
        """Build from training frames xyz [B, N, 3] (nm): scale = RMS of the centred coordinates (nm)."""
        x = torch.as_tensor(xyz, dtype=torch.float64)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise BgkitError(f"expected frames of shape [B, N, 3], got {tuple(x.shape)}")
        return cls(n_atoms=x.shape[1], scale=float(center(x).pow(2).mean().sqrt()))

    @property
    def dim(self) -> int:
        """Flow dimension 3N - 3."""
        return 3 * self.n_atoms - 3

    @property
    def log_det_to_flow(self) -> float:
        """log|det| of (first N-1 centred atoms, nm) -> y: -(3N-3) log(scale)."""
        return -self.dim * math.log(self.scale)

    def _check(self, xyz: Tensor) -> None:
        if xyz.shape[-2:] != (self.n_atoms, 3):
            raise BgkitError(f"expected frames [..., {self.n_atoms}, 3], got {tuple(xyz.shape)}")

    def to_flow(self, xyz: ArrayLike) -> Tensor:
        """Frames xyz [..., N, 3] (nm) -> flow vectors y [..., 3N-3] (translation invariant)."""
        x = torch.as_tensor(xyz)
        self._check(x)
        c = center(x)[..., :-1, :]
        return c.reshape(*c.shape[:-2], self.dim) / self.scale

    def from_flow(self, y: Tensor) -> Tensor:
        """Flow vectors y [..., 3N-3] -> centred frames [..., N, 3] (nm); last atom = -sum of the others."""
        if y.shape[-1] != self.dim:
            raise BgkitError(f"expected flow vectors [..., {self.dim}], got {tuple(y.shape)}")
        c = y.reshape(*y.shape[:-1], self.n_atoms - 1, 3) * self.scale
        return torch.cat([c, -c.sum(-2, keepdim=True)], dim=-2)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able {"n_atoms": int, "scale": float (nm)} for checkpoints."""
        return {"n_atoms": self.n_atoms, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CoordinateTransform":
        """Inverse of `state_dict`."""
        return cls(n_atoms=int(d["n_atoms"]), scale=float(d["scale"]))


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """n rotation matrices [n, 3, 3] drawn uniformly (Haar) from SO(3) via normalised Gaussian quaternions.

    The draw uses `generator` on its own device; the result is moved to `device` when given.
    """
    gdev = generator.device if generator is not None else device
    q = torch.randn(n, 4, generator=generator, dtype=dtype or torch.get_default_dtype(), device=gdev)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]
    R = torch.stack(rows, -1).view(n, 3, 3)
    return R if device is None else R.to(device)


def rotate(xyz: Tensor, R: Tensor) -> Tensor:
    """Rotate frames xyz [B, N, 3] by R [B, 3, 3] (or one [3, 3]): x'_n = R x_n (units kept)."""
    return xyz @ R.transpose(-1, -2)


def signed_volumes(xyz: ArrayLike, quads: ArrayLike) -> ArrayLike:
    """Signed volumes (a-d)·((b-d)×(c-d)) [B, k] (nm^3) of atom quadruples quads [k, 4] in xyz [B, N, 3].

    The sign encodes chirality (flips under mirroring). Numpy in -> numpy out, torch in -> torch out.
    """
    if isinstance(xyz, np.ndarray):
        return signed_volumes(torch.from_numpy(xyz), torch.as_tensor(np.asarray(quads))).numpy()
    q = torch.as_tensor(quads, dtype=torch.long, device=xyz.device)
    a, b, c, d = (xyz[..., q[:, i], :] for i in range(4))
    return ((a - d) * torch.linalg.cross(b - d, c - d)).sum(-1)
