"""Conformational states on backbone dihedrals and which frames of a molecule lie in them.

States are periodic boxes in (φ, ψ) of a dipeptide, boxes on any named
backbone dihedral (``phi1``, ``psi2``, ... as labelled by
:func:`bgkit.dihedrals.labelled_torsions`), or any boolean mask. A small YAML
file defines states in degrees (:func:`load_states`, format in
docs/free_energies.md). Membership of frames [n, N, 3] (nm) of a system:
:func:`frame_masks`, :func:`in_state`, :func:`state_frames`; a frame whose Cα
stereocentres are mirrored lies in no state. Populations of states and ΔF from
them: :mod:`bgkit.free_energy.populations`.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bgkit import BgkitError
from bgkit.arrays import as_numpy, evenly_spaced
from bgkit.dihedrals import labelled_torsions

__all__ = [
    "ALA2_BASINS",
    "ALA2_STATES",
    "TWO_PI",
    "State",
    "basin_masks",
    "frame_masks",
    "in_state",
    "load_states",
    "named_states",
    "resolve_state",
    "state_frames",
    "state_masks",
    "system_states",
]

TWO_PI = 2.0 * math.pi


def _in_arc(angle: np.ndarray, arc: tuple[float, float] | None) -> np.ndarray:
    """True where ``angle`` lies on the arc [lo, hi) going counter-clockwise from lo."""
    if arc is None:
        return np.ones(angle.shape, dtype=bool)
    lo, hi = float(arc[0]), float(arc[1])
    if hi - lo >= TWO_PI:
        return np.ones(angle.shape, dtype=bool)
    width = (hi - lo) % TWO_PI
    if width == 0.0:
        raise BgkitError(f"empty angle range ({lo}, {hi})")
    with np.errstate(invalid="ignore"):
        return np.remainder(angle - lo, TWO_PI) < width


@dataclass(frozen=True)
class State:
    """A named conformational state: a periodic box in (φ, ψ) or a custom mask.

    phi, psi: (lo, hi) in radians meaning the arc from lo counter-clockwise to
    hi, lower end included, so (50°, −120°) runs through 180°; None means the
    whole circle. ``mask_fn(phi, psi) -> bool [n]`` overrides the boxes.
    ``dihedrals``: instead of phi/psi, ((label, (lo, hi)), ...) arcs on named
    backbone dihedrals (``phi1``, ``psi2``, ...; for many-residue peptides).
    Non-finite angles are never inside a state.
    """

    name: str
    phi: tuple[float, float] | None = None
    psi: tuple[float, float] | None = None
    mask_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    dihedrals: tuple[tuple[str, tuple[float, float]], ...] | None = None

    @classmethod
    def from_degrees(
        cls, name: str, phi: tuple[float, float] | None = None, psi: tuple[float, float] | None = None
    ) -> State:
        """Build a box state from ranges given in degrees."""
        rad = lambda r: None if r is None else (math.radians(r[0]), math.radians(r[1]))  # noqa: E731
        return cls(name, rad(phi), rad(psi))

    def mask(self, phi: Any, psi: Any) -> np.ndarray:
        """Bool [n]: which frames with angles phi [n], psi [n] (rad) are in the state."""
        f = as_numpy(phi, "phi").reshape(-1)
        p = as_numpy(psi, "psi").reshape(-1)
        if f.shape != p.shape:
            raise BgkitError(f"phi {f.shape} and psi {p.shape} differ in length")
        if self.mask_fn is not None:
            m = np.asarray(self.mask_fn(f, p), dtype=bool)
            if m.shape != f.shape:
                raise BgkitError(f"mask_fn of state {self.name} returned shape {m.shape}")
            return m
        return _in_arc(f, self.phi) & _in_arc(p, self.psi)

    def mask_torsions(self, angles: np.ndarray, labels: list[str]) -> np.ndarray:
        """Bool [n] from backbone dihedrals ``angles`` [n, k] (rad) with their ``labels`` (``phi1``, ``psi1``, ...).

        A (φ, ψ) state needs exactly one residue with both angles (a dipeptide);
        a ``dihedrals`` state needs each of its labels.
        """
        angles = np.asarray(angles, dtype=np.float64)
        col = {lab: i for i, lab in enumerate(labels)}
        if self.dihedrals is not None:
            missing = [lab for lab, _ in self.dihedrals if lab not in col]
            if missing:
                raise BgkitError(f"state {self.name!r} uses dihedral(s) {', '.join(missing)} that this system lacks; "
                                 f"it has {', '.join(labels)}")
            m = np.ones(len(angles), dtype=bool)
            for lab, arc in self.dihedrals:
                m &= _in_arc(angles[:, col[lab]], arc)
            return m
        residues = sorted({lab[3:] for lab in labels if lab.startswith("phi")} &
                          {lab[3:] for lab in labels if lab.startswith("psi")})
        if len(residues) != 1:
            raise BgkitError(f"state {self.name!r} is a (phi, psi) box, but this system has {len(residues)} residues "
                             f"with both ({', '.join(labels)}): define it on named dihedrals in a states YAML file")
        r = residues[0]
        return self.mask(angles[:, col["phi" + r]], angles[:, col["psi" + r]])


#: Coarse alanine-dipeptide partition of the whole (φ, ψ) torus, commonly used
#: in vacuum / implicit solvent: C7eq/β is φ < 0 with ψ from 50° through 180° to
#: −120°; α_R is φ < 0 with −120° ≤ ψ < 50°; α_L is φ > 0 (it includes C7ax).
ALA2_BASINS: dict[str, State] = {
    "C7eq_beta": State.from_degrees("C7eq_beta", phi=(-180.0, 0.0), psi=(50.0, -120.0)),
    "alpha_R": State.from_degrees("alpha_R", phi=(-180.0, 0.0), psi=(-120.0, 50.0)),
    "alpha_L": State.from_degrees("alpha_L", phi=(0.0, 180.0), psi=None),
}

#: The named states of a dipeptide (``bgkit fep --from/--to``): the three basins and
#: beta_planar, the extended C5 region inside C7eq_beta (−180° ≤ φ < −120°, ψ from
#: 120° through 180° to −150°).
ALA2_STATES: dict[str, State] = {
    **ALA2_BASINS,
    "beta_planar": State.from_degrees("beta_planar", phi=(-180.0, -120.0), psi=(120.0, -150.0)),
}


def state_masks(states: dict[str, State], phi: Any, psi: Any) -> dict[str, np.ndarray]:
    """{name: bool mask [n]} for each state given angles phi [n], psi [n] (rad)."""
    return {name: s.mask(phi, psi) for name, s in states.items()}


# --------------------------------------------------------------------------- named states and YAML files


def _arc_degrees(value: Any, where: str) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise BgkitError(f"{where}: give [lo, hi] in degrees, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (-360.0 <= lo <= 360.0 and -360.0 <= hi <= 360.0):
        raise BgkitError(f"{where}: angles must be in degrees within [-360, 360], got {value!r}")
    if lo % 360.0 == hi % 360.0 and lo != hi:
        return math.radians(lo), math.radians(lo) + TWO_PI  # a full turn, written e.g. [-180, 180]
    if lo == hi:
        raise BgkitError(f"{where}: empty arc [{lo:g}, {hi:g}]")
    return math.radians(lo), math.radians(hi)


def load_states(path: str | os.PathLike) -> dict[str, State]:
    """States from a YAML file: ``{name: {dihedral: [lo, hi], ...}, ...}``, angles in degrees.

    Dihedral keys are ``phi``/``psi`` (a dipeptide's one residue) or labelled
    backbone dihedrals ``phi<i>``/``psi<i>`` (i the 0-based residue index, as
    ``bgkit systems show`` lists them). An arc runs counter-clockwise from lo
    to hi (so ``[120, -150]`` passes through 180°), lo included.
    """
    from bgkit.provenance import load_yaml

    path = Path(path)
    if not path.is_file():
        raise BgkitError(f"states file {path} does not exist")
    data = load_yaml(path, "states file")  # a state (or dihedral) given twice is an error, not the last one wins
    if not isinstance(data, dict) or not data:
        raise BgkitError(f"states file {path} must map state names to dihedral ranges, e.g. 'helix: {{phi1: [-100, -30]}}'")
    states = {}
    for name, boxes in data.items():
        where = f"{path}: state {name!r}"
        if not isinstance(name, str) or not name.strip():
            raise BgkitError(f"{path}: state names must be non-empty strings, got {name!r}")
        if not isinstance(boxes, dict) or not boxes:
            raise BgkitError(f"{where} needs at least one dihedral range, e.g. {{phi: [-180, 0]}}")
        keys = set(boxes)
        bad = [k for k in keys if not isinstance(k, str) or not re.fullmatch(r"(phi|psi)\d*", k)]
        if bad:
            raise BgkitError(f"{where}: unknown dihedral(s) {bad}; use phi, psi or phi<i>, psi<i>")
        arcs = {k: _arc_degrees(v, f"{where}, {k}") for k, v in boxes.items()}
        if keys <= {"phi", "psi"}:
            states[name] = State(name, phi=arcs.get("phi"), psi=arcs.get("psi"))
        elif keys & {"phi", "psi"}:
            raise BgkitError(f"{where}: mixes phi/psi with numbered dihedrals; use numbered ones only")
        else:
            states[name] = State(name, dihedrals=tuple(sorted(arcs.items())))
    return states


def named_states(labels: list[str]) -> dict[str, State]:
    """The built-in named states for a system with backbone dihedrals ``labels`` (``phi1``, ``psi1``, ...):
    ALA2_STATES on the φ/ψ of the one residue that has both (ala2; ala3's central residue), none otherwise."""
    phi = {lab[3:] for lab in labels if lab.startswith("phi")}
    psi = {lab[3:] for lab in labels if lab.startswith("psi")}
    return dict(ALA2_STATES) if len(phi & psi) == 1 else {}


def basin_masks(angles: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
    """Conformational basins of frames from their backbone dihedrals (angles [n, k] rad, k ``labels`` such
    as "phi1"): the alanine-dipeptide states (:data:`ALA2_STATES`) on the one residue with both φ and ψ
    of a dipeptide, else the two halves φ < 0 / φ ≥ 0 of each residue's φ. {name: bool [n]}."""
    angles = np.asarray(angles)
    states = named_states(labels)
    col = {lab: k for k, lab in enumerate(labels)}
    if states:
        res = next(lab[3:] for lab in labels if lab.startswith("phi") and "psi" + lab[3:] in col)
        return state_masks(states, angles[:, col["phi" + res]], angles[:, col["psi" + res]])
    out = {}
    for lab, k in col.items():
        if lab.startswith("phi"):
            out[f"{lab}<0"] = angles[:, k] < 0
            out[f"{lab}>0"] = angles[:, k] >= 0
    return out


def resolve_state(name: str, available: dict[str, State], where: str) -> State:
    """The state called ``name`` (BgkitError listing the choices where there is none)."""
    if name in available:
        return available[name]
    choices = ", ".join(available) or "none (define states in a YAML file with --states)"
    raise BgkitError(f"unknown state {name!r} for {where}; choices: {choices}")


# --------------------------------------------------------------------------- frames of a molecule in states


def system_states(system: Any, states_file: str | os.PathLike | None = None) -> dict[str, State]:
    """Named states of ``system`` (a dipeptide's ALA2_STATES) plus those of a YAML file (which win).

    A state on dihedrals this system lacks is refused here (BgkitError), before any work.
    """
    _, labels = labelled_torsions(system.positions[None], system)
    states = named_states(labels)
    if states_file is not None:
        states.update(load_states(states_file))
    for state in states.values():
        state.mask_torsions(np.zeros((1, len(labels))), labels)
    return states


def frame_masks(xyz: np.ndarray, system: Any, *states: State) -> list[np.ndarray]:
    """Bool [n] per state: which frames [n, N, 3] (nm) of ``system`` lie in it (dihedrals computed once).

    A state is a set of conformations of this molecule: a frame whose Cα stereocentres are
    mirrored (possible for a map in Cartesian coordinates) is in no state.
    """
    from bgkit.chirality import check_chirality, chiral_centres, chirality_signs

    angles, labels = labelled_torsions(xyz, system)
    quads = chiral_centres(system.topology)
    right = (check_chirality(xyz, quads, chirality_signs(system.positions, quads)[0]) if len(quads)
             else np.ones(len(angles), dtype=bool))
    return [state.mask_torsions(angles, labels) & right for state in states]


def in_state(xyz: np.ndarray, state: State, system: Any) -> np.ndarray:
    """Bool [n]: which frames [n, N, 3] (nm) of ``system`` lie in ``state`` (mirror images lie in none)."""
    return frame_masks(xyz, system, state)[0]


def state_frames(ds: Any, system: Any, split: str, state: State, limit: int | None) -> np.ndarray:
    """Frames float64 [m, N, 3] (nm) of the ``split`` of dataset ``ds`` inside ``state`` (time order), at most
    ``limit`` evenly spaced (all if None)."""
    xyz = ds.split(split)
    inside = xyz[in_state(xyz, state, system)]
    return np.asarray(inside[evenly_spaced(len(inside), limit)], dtype=np.float64)
