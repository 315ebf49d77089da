"""Backbone dihedrals φ and ψ: which atoms they are, and their angles in frames.

φ_i is C(i−1)-N-CA-C and ψ_i is N-CA-C-N(i+1) (mdtraj's definitions), i the 0-based residue index in
the topology. Every dihedral has a label ``phi<i>`` / ``psi<i>``; the columns of
:func:`labelled_torsions` are ordered by residue, φ before ψ (capped alanine dipeptide: ``["phi1",
"psi1"]``). Frames are [n, N, 3] in nm, angles in radians in (−π, π]. A system here is anything with
an mdtraj ``topology`` and the φ/ψ atoms it resolved, ``backbone_dihedrals``
(:attr:`bgkit.systems.System.backbone_dihedrals`, from :func:`backbone_atoms`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["backbone_atoms", "backbone_columns", "labelled_torsions", "phi_psi", "torsions"]


def backbone_atoms(topology: Any) -> dict[str, np.ndarray]:
    """φ and ψ atom indices of an mdtraj topology: ``{"phi": int [k_φ, 4], "psi": int [k_ψ, 4]}`` (mdtraj order)."""
    import mdtraj

    frame = mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3), dtype=np.float32), topology)
    phi, _ = mdtraj.compute_phi(frame)
    psi, _ = mdtraj.compute_psi(frame)
    return {"phi": np.asarray(phi), "psi": np.asarray(psi)}


def backbone_columns(system: Any) -> tuple[np.ndarray, list[str]]:
    """The backbone dihedrals of ``system`` as columns: atom indices int [k, 4] and their k labels, by residue.

    The residue of φ_i and ψ_i is that of their CA atom.
    """
    atoms = system.backbone_dihedrals
    top = system.topology
    keys = [(top.atom(int(q[2])).residue.index, 0) for q in atoms["phi"]]
    keys += [(top.atom(int(q[1])).residue.index, 1) for q in atoms["psi"]]
    quads = np.concatenate([np.reshape(atoms["phi"], (-1, 4)), np.reshape(atoms["psi"], (-1, 4))]).astype(np.int64)
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    labels = [("phi" if keys[i][1] == 0 else "psi") + str(keys[i][0]) for i in order]
    return quads[order], labels


def labelled_torsions(xyz: Any, system: Any) -> tuple[np.ndarray, list[str]]:
    """All backbone φ and ψ of frames xyz [n, N, 3] nm: (angles float64 [n, k] rad, their k labels such as "phi1").

    A molecule without backbone dihedrals gives angles [n, 0] and no labels.
    """
    import mdtraj

    quads, labels = backbone_columns(system)
    xyz = np.asarray(xyz, dtype=np.float32)
    if not len(quads):
        return np.zeros((len(xyz), 0)), labels
    angles = mdtraj.compute_dihedrals(mdtraj.Trajectory(xyz, system.topology), quads)
    return np.asarray(angles, dtype=np.float64), labels


def torsions(xyz: Any, system: Any) -> np.ndarray:
    """All backbone φ and ψ (rad) of frames xyz [n, N, 3] nm, float64 [n, k], columns as :func:`labelled_torsions`."""
    return labelled_torsions(xyz, system)[0]


def phi_psi(xyz: Any, system: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """φ and ψ of each residue that has both, for frames xyz [n, N, 3] nm: phi [n, r], psi [n, r] (rad), r labels.

    Labels are residue name + 0-based residue index ("ALA1"), in residue order; use them for a
    Ramachandran plot of each residue (ala3 and ala4 have several). No such residue: [n, 0] arrays.
    """
    angles, labels = labelled_torsions(xyz, system)
    col = {lab: i for i, lab in enumerate(labels)}
    both = [res for res in system.topology.residues if f"phi{res.index}" in col and f"psi{res.index}" in col]
    phi = angles[:, [col[f"phi{res.index}"] for res in both]]
    psi = angles[:, [col[f"psi{res.index}"] for res in both]]
    return phi, psi, [f"{res.name}{res.index}" for res in both]
