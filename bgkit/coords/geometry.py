"""Batched molecular geometry in torch: bond lengths, angles, dihedrals, NeRF placement, rotations.

Positions are [..., 3] in nm; angles in radians. Everything is differentiable
(used by the autograd tests of the log-determinants).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["wrap", "bond_lengths", "bond_angles", "dihedrals", "place", "random_rotations", "rotate", "center"]


def wrap(angle: Tensor) -> Tensor:
    """Angles mapped to [-pi, pi) (same shape)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def center(xyz: Tensor) -> Tensor:
    """Subtract each frame's centroid (unweighted mean): xyz [..., N, 3] -> [..., N, 3] (same units)."""
    return xyz - xyz.mean(dim=-2, keepdim=True)


def bond_lengths(a: Tensor, b: Tensor) -> Tensor:
    """|a - b| for points [..., 3] -> [...] (nm)."""
    return (a - b).norm(dim=-1)


def bond_angles(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Angle a-b-c at b in (0, pi) for points [..., 3] -> [...] (rad), by atan2 (stable near 0 and pi)."""
    u, v = a - b, c - b
    return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))


def dihedrals(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """Dihedral a-b-c-d in [-pi, pi] for points [..., 3] -> [...] (rad); IUPAC sign convention.

    Symmetric under reversal: dihedral(a, b, c, d) == dihedral(d, c, b, a).
    """
    b0, b1, b2 = b - a, c - b, d - c
    n1, n2 = torch.linalg.cross(b0, b1), torch.linalg.cross(b1, b2)
    m1 = torch.linalg.cross(n1, b1 / b1.norm(dim=-1, keepdim=True))
    return torch.atan2((m1 * n2).sum(-1), (n1 * n2).sum(-1))


def place(j: Tensor, k: Tensor, l: Tensor, bond: Tensor, angle: Tensor, torsion: Tensor) -> Tensor:
    """NeRF: the point i with |i - j| = bond, angle(i, j, k) = angle and dihedral(i, j, k, l) = torsion.

    j, k, l: [B, 3] placed points (l need not be bonded to k, only not collinear with j-k);
    bond, angle, torsion: [B]. Returns [B, 3] (Parsons et al., J. Comput. Chem. 26, 1063 (2005)).
    """
    bc = j - k
    bc = bc / bc.norm(dim=-1, keepdim=True)
    n = torch.linalg.cross(k - l, bc)
    n = n / n.norm(dim=-1, keepdim=True)
    m = torch.linalg.cross(n, bc)
    d = torch.stack([-bond * torch.cos(angle),
                     bond * torch.sin(angle) * torch.cos(torsion),
                     -bond * torch.sin(angle) * torch.sin(torsion)], dim=-1)  # IUPAC sign of the dihedral
    return j + d[..., 0:1] * bc + d[..., 1:2] * m + d[..., 2:3] * n


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
