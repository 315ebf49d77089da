"""Coordinate representations: molecular frames (nm) <-> flow vectors, with exact log-determinants.

* ``cartesian`` (:class:`CartesianCoords`): centred, scaled Cartesian coordinates, R^(3N-3).
* ``internal`` (:class:`InternalCoords`): z-matrix bonds, angles and torsions, 3N-6 coordinates,
  some of them periodic.

All share one density convention (:mod:`bgkit.coords.base`; docs/conventions.md), so ESS,
NLL and free energies compare across representations. ``representation_from_state`` reads
the state stored in proposals and targets files (a state without ``kind`` is ``cartesian``,
as written by bgkit <= 0.1).
"""
from __future__ import annotations

from typing import Any

from bgkit import BgkitError

from .base import Representation
from .cartesian import CartesianCoords
from .geometry import center, random_rotations, rotate, wrap
from .internal import InternalCoords
from .zmatrix import ZMatrix, build_zmatrix

REPRESENTATIONS: dict[str, type[Representation]] = {"cartesian": CartesianCoords, "internal": InternalCoords}


def fit_representation(kind: str, xyz: Any, system: Any = None) -> Representation:
    """Fit representation ``kind`` ("cartesian" | "internal") on training frames xyz [B, N, 3] (nm)."""
    if kind not in REPRESENTATIONS:
        raise BgkitError(f"unknown coordinate representation {kind!r}; choose one of {sorted(REPRESENTATIONS)}")
    return REPRESENTATIONS[kind].fit(xyz, system)


def representation_from_state(state: dict[str, Any]) -> Representation:
    """Rebuild a representation from its ``state_dict`` (no ``kind``: legacy cartesian)."""
    kind = state.get("kind", "cartesian")
    if kind not in REPRESENTATIONS:
        raise BgkitError(f"unknown coordinate representation {kind!r} (written by a newer bgkit?)")
    try:
        return REPRESENTATIONS[kind].from_state(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise BgkitError(f"corrupted {kind} coordinate state: {type(exc).__name__}: {exc}") from None


__all__ = ["REPRESENTATIONS", "Representation", "CartesianCoords", "InternalCoords", "ZMatrix", "build_zmatrix",
           "fit_representation", "representation_from_state", "center", "random_rotations", "rotate", "wrap"]
