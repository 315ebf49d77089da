"""The ``internal`` representation: bonds, angles and torsions of a z-matrix, y in R^(3N-6) x circles.

Flow vector layout: N-1 bond lengths, N-2 bond angles, N-3 torsions, in the
z-matrix's placement order (:mod:`bgkit.coords.zmatrix`). Rigid-body motion
is removed: atom 0 sits at the origin, atom 1 on the x axis, atom 2 in the xy
plane; reconstructed frames are centred.

* bonds and angles are standardised with the training mean and std;
* a branch torsion (the fixed offset between two substituents of one atom) is
  **bounded**: if its training values all have one sign (an sp3 centre) to that
  sign's half circle (0, pi) or (-pi, 0), so mirrored stereocentres cannot be
  sampled; otherwise (sp2, ~180 deg), if its values leave a gap wider than pi,
  to the open interval cut in the middle of that gap. The interval is mapped to
  R by a logit and standardised;
* every chain torsion (phi, psi, omega, rotors: any of them may visit rare
  basins) and any other branch torsion is **periodic**: y = wrap(phi - cut - pi) on [-pi, pi),
  the cut (y = +-pi) in the middle of the widest gap of the training values;
  flows treat them as circles (circular splines, uniform prior), so no density
  mass is lost at the cut.

log|det| (density convention of :mod:`bgkit.coords.base`): with uniformly
distributed orientation, the Cartesian volume element of the relative
positions is  prod_i b_i^2 sin(theta_i) db dtheta dphi  times the SO(3)
volume 8 pi^2, and the centred coordinates of N-1 atoms carry a factor N^-3:

    logdet_to = sum log|dy/d(ic)| - sum_i (2 log b_i + log sin theta_i) - log(8 pi^2) + 3 log N.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bgkit import BgkitError

from .base import ArrayLike, Representation
from .geometry import bond_angles, bond_lengths, center, dihedrals, place, wrap
from .zmatrix import ZMatrix, zmatrix_of_topology

_TWO_PI = 2 * math.pi
_SIGN_MARGIN = math.pi / 6  # rad: a branch torsion is sign-bounded only if all data stay this far from 0 and pi (sp3)
_MIN_STD = 1e-4


def _largest_gap(phi: np.ndarray) -> tuple[float, float]:
    """Widest empty arc of angles phi [n] (rad): (width, centre in [-pi, pi))."""
    s = np.sort(np.mod(phi + math.pi, _TWO_PI) - math.pi)
    gaps = np.diff(np.concatenate([s, s[:1] + _TWO_PI]))
    i = int(np.argmax(gaps))
    centre = (s[i] + gaps[i] / 2 + math.pi) % _TWO_PI - math.pi
    return float(gaps[i]), float(centre)


class InternalCoords(Representation):
    """Frames [B, N, 3] (nm) <-> [bonds (N-1), angles (N-2), torsions (N-3)] flow vectors [B, 3N-6].

    Built by :meth:`fit` from a system's bond graph and training frames; ``state_dict`` holds
    the z-matrix and every fitted constant.
    """

    kind = "internal"

    def __init__(self, zmatrix: ZMatrix, bond_mean: Any, bond_std: Any, angle_mean: Any, angle_std: Any,
                 torsion_periodic: Any, torsion_lo: Any, torsion_width: Any, torsion_mean: Any,
                 torsion_std: Any) -> None:
        self.zmatrix = zmatrix
        self.n_atoms = zmatrix.n_atoms
        if self.n_atoms < 3:
            raise BgkitError(f"internal coordinates need at least 3 atoms, got {self.n_atoms}")
        f64 = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64))  # noqa: E731
        self.bond_mean, self.bond_std = f64(bond_mean), f64(bond_std)
        self.angle_mean, self.angle_std = f64(angle_mean), f64(angle_std)
        self.torsion_periodic = torch.as_tensor(np.asarray(torsion_periodic, dtype=bool))
        self.torsion_lo, self.torsion_width = f64(torsion_lo), f64(torsion_width)
        self.torsion_mean, self.torsion_std = f64(torsion_mean), f64(torsion_std)
        n = self.n_atoms
        sizes = [len(self.bond_mean), len(self.angle_mean), len(self.torsion_periodic)]
        if sizes != [n - 1, n - 2, n - 3] or min(self.bond_std.min(), self.angle_std.min()) <= 0:
            raise BgkitError(f"inconsistent internal-coordinate state for {n} atoms: sizes {sizes}")
        self._rows = torch.as_tensor(zmatrix.rows)

    # ----------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, xyz: ArrayLike, system: Any = None) -> "InternalCoords":
        """Z-matrix from ``system``'s bonds; standardisation, cuts and bounds from frames xyz [B, N, 3] (nm)."""
        if system is None:
            raise BgkitError("internal coordinates need the system (its bond graph)")
        return cls.fit_zmatrix(zmatrix_of_topology(system.openmm_topology), xyz)

    @classmethod
    def fit_zmatrix(cls, zmatrix: ZMatrix, xyz: ArrayLike) -> "InternalCoords":
        """As :meth:`fit`, for a given z-matrix."""
        x = torch.as_tensor(np.asarray(xyz), dtype=torch.float64)
        if x.ndim != 3 or x.shape[1:] != (zmatrix.n_atoms, 3) or len(x) < 2:
            raise BgkitError(f"expected at least 2 frames [B, {zmatrix.n_atoms}, 3], got {tuple(x.shape)}")
        b, a, t = (v.numpy() for v in _internal(x, torch.as_tensor(zmatrix.rows)))
        std = lambda v: np.maximum(v.std(0), _MIN_STD)  # noqa: E731
        n_t = t.shape[1]
        periodic, lo, width = np.zeros(n_t, bool), np.zeros(n_t), np.full(n_t, _TWO_PI)
        for m in range(n_t):
            phi = t[:, m]
            if zmatrix.branch[m + 3] and (phi > _SIGN_MARGIN).all() and (phi < math.pi - _SIGN_MARGIN).all():
                lo[m], width[m] = 0.0, math.pi
            elif zmatrix.branch[m + 3] and (phi < -_SIGN_MARGIN).all() and (phi > -math.pi + _SIGN_MARGIN).all():
                lo[m], width[m] = -math.pi, math.pi
            else:
                gap, cut = _largest_gap(phi)
                lo[m] = cut
                periodic[m] = not zmatrix.branch[m + 3] or gap <= math.pi
        s = _logit(_interval_fraction(torch.as_tensor(t), torch.as_tensor(lo), torch.as_tensor(width))).numpy()
        s_mean = np.where(periodic, 0.0, s.mean(0))
        s_std = np.where(periodic, 1.0, np.maximum(s.std(0), _MIN_STD))
        return cls(zmatrix, b.mean(0), std(b), a.mean(0), std(a), periodic, lo, width, s_mean, s_std)

    # ------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return 3 * self.n_atoms - 6

    @property
    def periodic(self) -> tuple[int, ...]:
        offset = 2 * self.n_atoms - 3
        return tuple(offset + int(m) for m in torch.nonzero(self.torsion_periodic).flatten())

    def _constant(self) -> float:
        return -math.log(8 * math.pi ** 2) + 3 * math.log(self.n_atoms)

    # ----------------------------------------------------------------- maps
    def to_flow(self, xyz: ArrayLike) -> tuple[Tensor, Tensor]:
        """Frames [B, N, 3] (nm) -> (y [B, 3N-6], logdet_to [B]); NaN rows for frames outside the support
        (a mirrored stereocentre, a linear angle)."""
        x = self._frames(xyz)
        dtype = x.dtype if x.dtype.is_floating_point else torch.float64
        b, a, t = _internal(x.to(dtype), self._rows)
        c = lambda v: v.to(dtype=dtype, device=x.device)  # noqa: E731
        yb = (b - c(self.bond_mean)) / c(self.bond_std)
        ya = (a - c(self.angle_mean)) / c(self.angle_std)
        u = _interval_fraction(t, c(self.torsion_lo), c(self.torsion_width))
        yt = torch.where(c(self.torsion_periodic).bool(), wrap(t - c(self.torsion_lo) - math.pi),
                         (_logit(u) - c(self.torsion_mean)) / c(self.torsion_std))
        return torch.cat([yb, ya, yt], dim=-1), -self._logdet_from(b, a, u)

    def from_flow(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Flow vectors [B, 3N-6] -> (centred frames [B, N, 3] in nm, logdet_from [B]) by NeRF."""
        n = self.n_atoms
        if y.ndim != 2 or y.shape[-1] != self.dim:
            raise BgkitError(f"expected flow vectors [B, {self.dim}], got {tuple(y.shape)}")
        c = lambda v: v.to(dtype=y.dtype, device=y.device)  # noqa: E731
        yb, ya, yt = y.split([n - 1, n - 2, n - 3], dim=-1)
        b = yb * c(self.bond_std) + c(self.bond_mean)
        a = ya * c(self.angle_std) + c(self.angle_mean)
        u = torch.sigmoid(yt * c(self.torsion_std) + c(self.torsion_mean))
        t = torch.where(c(self.torsion_periodic).bool(), wrap(yt + c(self.torsion_lo) + math.pi),
                        c(self.torsion_lo) + c(self.torsion_width) * u)
        return center(self._nerf(b, a, t)), self._logdet_from(b, a, u)

    def _logdet_from(self, b: Tensor, a: Tensor, u: Tensor) -> Tensor:
        """log|det| [B] of y -> centred coordinates at bonds b, angles a and bounded-torsion fractions u
        (u = (phi - lo mod 2 pi) / width; ignored on periodic torsions, whose map has log|det| 0)."""
        c = lambda v: v.to(dtype=b.dtype, device=b.device)  # noqa: E731
        ld_t = torch.where(c(self.torsion_periodic).bool(), torch.zeros_like(u),
                           torch.log(c(self.torsion_width) * u * (1 - u)) + torch.log(c(self.torsion_std)))
        return (torch.log(c(self.bond_std)).sum() + torch.log(c(self.angle_std)).sum() + ld_t.sum(-1)
                + 2 * torch.log(b.abs()).sum(-1) + torch.log(torch.sin(a).abs()).sum(-1) - self._constant())

    def _nerf(self, b: Tensor, a: Tensor, t: Tensor) -> Tensor:
        """Positions [B, N, 3] from bonds [B, N-1], angles [B, N-2], torsions [B, N-3] (placement order)."""
        B, n = b.shape[0], self.n_atoms
        zero = b.new_zeros(B)
        pos: list[Tensor | None] = [None] * n
        rows = self.zmatrix.rows
        pos[rows[0, 0]] = b.new_zeros(B, 3)
        pos[rows[1, 0]] = torch.stack([b[:, 0], zero, zero], -1)
        i, j, k = rows[2, :3]
        axis = pos[k] - pos[j]
        axis = axis / axis.norm(dim=-1, keepdim=True)  # +-x
        yhat = torch.stack([zero, zero + 1, zero], -1)
        pos[i] = pos[j] + b[:, 1:2] * (torch.cos(a[:, 0:1]) * axis + torch.sin(a[:, 0:1]) * yhat)
        for r in range(3, n):
            i, j, k, l = rows[r]
            pos[i] = place(pos[j], pos[k], pos[l], b[:, r - 1], a[:, r - 2], t[:, r - 3])
        return torch.stack(pos, dim=1)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        lst = lambda v: [float(x) for x in v]  # noqa: E731
        return {"kind": self.kind, "n_atoms": self.n_atoms, "zmatrix": self.zmatrix.state_dict(),
                "bond_mean": lst(self.bond_mean), "bond_std": lst(self.bond_std),
                "angle_mean": lst(self.angle_mean), "angle_std": lst(self.angle_std),
                "torsion_periodic": [bool(v) for v in self.torsion_periodic],
                "torsion_lo": lst(self.torsion_lo), "torsion_width": lst(self.torsion_width),
                "torsion_mean": lst(self.torsion_mean), "torsion_std": lst(self.torsion_std)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "InternalCoords":
        keys = ("bond_mean", "bond_std", "angle_mean", "angle_std", "torsion_periodic", "torsion_lo",
                "torsion_width", "torsion_mean", "torsion_std")
        return cls(ZMatrix.from_dict(state["zmatrix"]), *(state[k] for k in keys))

    def describe(self) -> dict[str, int]:
        """Counts of each coordinate type (for logs and docs)."""
        per = int(self.torsion_periodic.sum())
        return {"bonds": self.n_atoms - 1, "angles": self.n_atoms - 2, "periodic_torsions": per,
                "bounded_torsions": self.n_atoms - 3 - per,
                "branch_torsions": int(self.zmatrix.branch.sum())}


def _internal(x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Bonds [B, N-1], angles [B, N-2], torsions [B, N-3] of frames x [B, N, 3] for z-matrix rows [N, 4]."""
    i, j, k, l = rows.unbind(-1)
    b = bond_lengths(x[:, i[1:]], x[:, j[1:]])
    a = bond_angles(x[:, i[2:]], x[:, j[2:]], x[:, k[2:]])
    t = dihedrals(x[:, i[3:]], x[:, j[3:]], x[:, k[3:]], x[:, l[3:]])
    return b, a, t


def _interval_fraction(t: Tensor, lo: Tensor, width: Tensor) -> Tensor:
    """(phi - lo mod 2 pi) / width [B, T]: in (0, 1) inside the interval (lo, lo + width), above 1 outside."""
    return torch.remainder(t - lo, _TWO_PI) / width


def _logit(u: Tensor) -> Tensor:
    """log(u / (1 - u)); NaN for u > 1 (an angle outside its bounded interval)."""
    return torch.log(u) - torch.log1p(-u)
