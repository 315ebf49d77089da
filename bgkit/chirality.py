"""Chirality of Cα stereocentres: the sign of a signed volume per centre (the one implementation in bgkit).

A centre is the quadruple (N, C, CB, CA) of a residue; its signed volume is
``(N - CA) · ((C - CA) × (CB - CA))`` (nm³), positive for L-amino acids.
Positions are in nm, shapes [B, n_atoms, 3] or [n_atoms, 3].
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bgkit import BgkitError
from bgkit.arrays import as_numpy

__all__ = ["chiral_centres", "chirality_signs", "check_chirality"]


def chiral_centres(topology: Any) -> np.ndarray:
    """Cα chiral centres of a protein topology (mdtraj.Topology): int array [k, 4].

    Each row is (N, C, CB, CA) of one residue that has all four atoms (glycine,
    lacking CB, is skipped; caps such as ACE/NME have no CA). The signed
    volume of a row is ``(N - CA) · ((C - CA) × (CB - CA))``; L-amino acids
    give a positive volume with this ordering (checked on the openmmtools
    alanine dipeptide and the shipped ala2/ala3/ala4 PDBs).
    Returns an empty [0, 4] array when there are no such residues.
    """
    quads = []
    for res in topology.residues:
        atoms = {a.name: a.index for a in res.atoms}
        if all(name in atoms for name in ("N", "C", "CB", "CA")):
            quads.append([atoms["N"], atoms["C"], atoms["CB"], atoms["CA"]])
    return np.asarray(quads, dtype=np.int64).reshape(-1, 4)


def _frames(xyz: Any) -> np.ndarray:
    x = as_numpy(xyz, "xyz")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise BgkitError(f"positions must be [B, n_atoms, 3] or [n_atoms, 3], got {x.shape}")
    return x


def chirality_signs(xyz: Any, quads: Any) -> np.ndarray:
    """Sign (-1, 0, +1; NaN for non-finite positions) of each centre's signed volume.

    xyz: [B, n_atoms, 3] or [n_atoms, 3] (nm); quads: [k, 4] from
    ``chiral_centres``. Returns [B, k] float64.
    """
    x = _frames(xyz)
    q = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    if q.size and (q.min() < 0 or q.max() >= x.shape[1]):
        raise BgkitError(f"chiral-centre atom index out of range for {x.shape[1]} atoms")
    centre = x[:, q[:, 3]]
    a, b, c = (x[:, q[:, i]] - centre for i in range(3))
    volume = np.einsum("bki,bki->bk", a, np.cross(b, c))
    return np.sign(volume)


def check_chirality(xyz: Any, quads: Any, reference_signs: Any) -> np.ndarray:
    """Bool mask [B]: True where every chiral centre has the reference sign.

    reference_signs: [k], e.g. ``chirality_signs(system_pdb_xyz, quads)[0]``
    computed from the system's reference structure. A frame with a planar
    (zero-volume) or non-finite centre fails.
    """
    signs = chirality_signs(xyz, quads)
    ref = as_numpy(reference_signs, "reference_signs").reshape(-1)
    if ref.size != signs.shape[1]:
        raise BgkitError(f"reference_signs has {ref.size} centres, quads has {signs.shape[1]}")
    if ref.size and not np.all(np.abs(ref) == 1):
        raise BgkitError("reference_signs must be ±1 (reference structure has a planar centre)")
    return np.all(signs == ref[None, :], axis=1)
