"""Backbone dihedrals (bgkit.dihedrals) against φ/ψ found by atom name and computed by hand."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bgkit.dihedrals import backbone_atoms, labelled_torsions, phi_psi, torsions
from bgkit.systems import load_system


def dihedral(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray) -> np.ndarray:
    """IUPAC dihedral (rad) of points [n, 3]: atan2(|b2| b1·(b2×b3), (b1×b2)·(b2×b3))."""
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    y = np.linalg.norm(b2, axis=1) * np.einsum("ij,ij->i", b1, np.cross(b2, b3))
    x = np.einsum("ij,ij->i", np.cross(b1, b2), np.cross(b2, b3))
    return np.arctan2(y, x)


def expected_backbone(system) -> list[tuple[str, list[int]]]:
    """(label, atoms) of every φ_i = C(i-1)-N-CA-C and ψ_i = N-CA-C-N(i+1), by residue, φ first."""
    residues = list(system.topology.residues)
    atom = [{a.name: a.index for a in r.atoms} for r in residues]
    out = []
    for i in range(len(residues)):
        here = atom[i]
        if not {"N", "CA", "C"} <= set(here):
            continue
        if i > 0 and "C" in atom[i - 1]:
            out.append((f"phi{i}", [atom[i - 1]["C"], here["N"], here["CA"], here["C"]]))
        if i + 1 < len(residues) and "N" in atom[i + 1]:
            out.append((f"psi{i}", [here["N"], here["CA"], here["C"], atom[i + 1]["N"]]))
    return out


@pytest.fixture(scope="module", params=["ala2", "ala3", "ala4"])
def system(request):
    return load_system(request.param)


def test_torsions_are_the_phi_psi_of_each_residue_computed_by_hand(system):
    rng = np.random.default_rng(0)
    xyz = system.positions[None] + rng.normal(scale=0.02, size=(5, system.n_atoms, 3))
    angles, labels = labelled_torsions(xyz, system)
    expected = expected_backbone(system)
    assert labels == [lab for lab, _ in expected]
    assert angles.shape == (5, len(expected)) and angles.dtype == np.float64
    for k, (_, q) in enumerate(expected):
        np.testing.assert_allclose(angles[:, k], dihedral(*(xyz[:, i] for i in q)), atol=1e-4)
    np.testing.assert_array_equal(torsions(xyz, system), angles)


def test_labels_of_the_shipped_peptides(system):
    _, labels = labelled_torsions(system.positions[None], system)
    expected = {"ala2": ["phi1", "psi1"], "ala3": ["psi0", "phi1", "psi1", "phi2"],
                "ala4": ["phi1", "psi1", "phi2", "psi2", "phi3", "psi3"]}
    assert labels == expected[system.name]


def test_phi_psi_pairs_the_residues_that_have_both(system):
    xyz = system.positions[None] + np.random.default_rng(1).normal(scale=0.02, size=(3, system.n_atoms, 3))
    phi, psi, labels = phi_psi(xyz, system)
    both = {"ala2": ["ALA1"], "ala3": ["ALA1"], "ala4": ["ALA1", "ALA2", "ALA3"]}[system.name]
    assert labels == both and phi.shape == psi.shape == (3, len(both))
    quads = dict(expected_backbone(system))
    for k, lab in enumerate(labels):
        i = lab[3:]
        np.testing.assert_allclose(phi[:, k], dihedral(*(xyz[:, a] for a in quads["phi" + i])), atol=1e-4)
        np.testing.assert_allclose(psi[:, k], dihedral(*(xyz[:, a] for a in quads["psi" + i])), atol=1e-4)


def test_the_system_stores_the_backbone_atoms(system):
    stored = system.backbone_dihedrals
    by_name = dict(expected_backbone(system))
    assert sorted(map(tuple, stored["phi"].tolist())) == sorted(tuple(q) for lab, q in by_name.items() if lab[:3] == "phi")
    assert sorted(map(tuple, stored["psi"].tolist())) == sorted(tuple(q) for lab, q in by_name.items() if lab[:3] == "psi")


def test_a_molecule_without_a_backbone_has_no_dihedrals():
    import mdtraj

    top = mdtraj.Topology()
    res = top.add_residue("HOH", top.add_chain())
    o = top.add_atom("O", mdtraj.element.oxygen, res)
    for name in ("H1", "H2"):
        top.add_bond(o, top.add_atom(name, mdtraj.element.hydrogen, res))
    water = SimpleNamespace(topology=top, backbone_dihedrals=backbone_atoms(top))
    assert water.backbone_dihedrals["phi"].shape[0] == water.backbone_dihedrals["psi"].shape[0] == 0
    xyz = np.random.default_rng(2).normal(size=(4, 3, 3))
    angles, labels = labelled_torsions(xyz, water)
    assert angles.shape == (4, 0) and labels == []
    phi, psi, pairs = phi_psi(xyz, water)
    assert phi.shape == psi.shape == (4, 0) and pairs == []
