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

import importlib
from typing import TYPE_CHECKING, Any

from bgkit import BgkitError

if TYPE_CHECKING:
    from .base import Representation

#: representation kind -> (module of bgkit.coords, class); imported on first use (torch is heavy)
REPRESENTATIONS: dict[str, tuple[str, str]] = {"cartesian": ("cartesian", "CartesianCoords"),
                                               "internal": ("internal", "InternalCoords")}
#: the representation every command and function fits when none is named (``--coords``): the flow space of
#: the shipped proposals, the teachers and the TFEP maps
DEFAULT_COORDS = "internal"
#: the kind of a stored state without one (written by bgkit <= 0.1, before internal coordinates existed)
_LEGACY_KIND = "cartesian"
_LAZY = {"Representation": "base", "CartesianCoords": "cartesian", "InternalCoords": "internal", "ZMatrix": "zmatrix",
         "build_zmatrix": "zmatrix", "center": "geometry", "random_rotations": "geometry", "rotate": "geometry",
         "wrap": "geometry"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _class(kind: str) -> Any:
    module, cls = REPRESENTATIONS[kind]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def fit_representation(kind: str, xyz: Any, system: Any = None) -> "Representation":
    """Fit representation ``kind`` (a key of :data:`REPRESENTATIONS`) on training frames xyz [B, N, 3] (nm)."""
    if kind not in REPRESENTATIONS:
        raise BgkitError(f"unknown coordinate representation {kind!r}; choose one of {sorted(REPRESENTATIONS)}")
    return _class(kind).fit(xyz, system)


def representation_from_state(state: dict[str, Any]) -> "Representation":
    """Rebuild a representation from its ``state_dict`` (no ``kind``: legacy cartesian)."""
    kind = state.get("kind", _LEGACY_KIND)
    if kind not in REPRESENTATIONS:
        raise BgkitError(f"unknown coordinate representation {kind!r} (written by a newer bgkit?)")
    try:
        return _class(kind).from_state(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise BgkitError(f"corrupted {kind} coordinate state: {type(exc).__name__}: {exc}") from None


__all__ = ["REPRESENTATIONS", "DEFAULT_COORDS", "Representation", "CartesianCoords", "InternalCoords", "ZMatrix", "build_zmatrix",
           "fit_representation", "representation_from_state", "center", "random_rotations", "rotate", "wrap"]
