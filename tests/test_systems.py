"""Shipped systems match README.md's "Systems" table; the builder is deterministic; bad specs fail clearly."""
from __future__ import annotations

import shutil
import textwrap

import numpy as np
import pytest

from bgkit import BgkitError
from bgkit.build import build_peptide, write_built_pdb
from bgkit.systems import load_system, shipped_systems
from conftest import DESIGN_TABLE


def test_shipped_systems_match_design_table(system):
    import openmm

    row = DESIGN_TABLE[system.name]
    assert system.n_atoms == row["atoms"]
    assert list(system.spec.forcefield) == row["ff"]
    assert system.temperature == row["T"]
    assert system.kT == pytest.approx(8.314462618e-3 * row["T"])
    omm = system.openmm_system()
    assert omm.getNumConstraints() == 0
    nb = [f for f in omm.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    expected = {"NoCutoff": openmm.NonbondedForce.NoCutoff, "CutoffNonPeriodic": openmm.NonbondedForce.CutoffNonPeriodic}
    assert nb.getNonbondedMethod() == expected[row["method"]]
    if row["cutoff"]:
        assert nb.getCutoffDistance().value_in_unit(openmm.unit.nanometer) == pytest.approx(row["cutoff"])


def test_shipped_list():
    assert {"ala2", "ala3", "ala4"} <= set(shipped_systems())


def test_topologies_are_the_right_peptides():
    residues = {name: [r.name for r in load_system(name).topology.residues] for name in ("ala2", "ala3", "ala4")}
    assert residues == {"ala2": ["ACE", "ALA", "NME"], "ala3": ["ALA"] * 3, "ala4": ["ACE", "ALA", "ALA", "ALA", "NME"]}
    ala3 = load_system("ala3").topology
    names = [a.name for a in ala3.atoms]
    assert names.count("OXT") == 1 and {"H", "H2", "H3"} <= set(names)  # zwitterion: NH3+ and COO-


def test_backbone_dihedrals(system):
    d = system.backbone_dihedrals
    n_ala = sum(r.name == "ALA" for r in system.topology.residues)
    capped = system.name != "ala3"
    assert len(d["phi"]) == (n_ala if capped else n_ala - 1)
    assert len(d["psi"]) == (n_ala if capped else n_ala - 1)
    names = [a.name for a in system.topology.atoms]
    for quad in d["phi"]:
        assert [names[i] for i in quad] == ["C", "N", "CA", "C"]
    for quad in d["psi"]:
        assert [names[i] for i in quad] == ["N", "CA", "C", "N"]


def test_all_alanines_are_L(system):
    """Dihedral C-N-CA-CB is about -120 degrees for L-amino acids."""
    import mdtraj

    quads = []
    for r in system.topology.residues:
        if r.name == "ALA":
            a = {atom.name: atom.index for atom in r.atoms}
            quads.append([a["C"], a["N"], a["CA"], a["CB"]])
    traj = mdtraj.Trajectory(system.positions[None], system.topology)
    angles = np.degrees(mdtraj.compute_dihedrals(traj, quads))
    assert np.all((angles > -150) & (angles < -90))


def test_build_is_deterministic_and_reproduces_shipped_pdb(tmp_path):
    s = load_system("ala2")
    text = build_peptide(s)
    assert build_peptide(s) == text
    shipped = s.pdb_path.read_text()
    atom_lines = lambda t: [l[:30] for l in t.splitlines() if l.startswith(("ATOM", "HETATM"))]
    assert atom_lines(text) == atom_lines(shipped)
    coords = lambda t: np.array([[float(l[30:38]), float(l[38:46]), float(l[46:54])] for l in t.splitlines()
                                 if l.startswith(("ATOM", "HETATM"))])
    np.testing.assert_allclose(coords(text), coords(shipped), atol=0.01)  # Angstrom
    # writing: unchanged content is left alone, different content needs force
    out = tmp_path / "x.pdb"
    assert write_built_pdb(s, out) == (out, True)
    assert write_built_pdb(s, out) == (out, False)
    out.write_text("something else\n")
    with pytest.raises(BgkitError, match="--force"):
        write_built_pdb(s, out)
    assert out.read_text() == "something else\n"
    assert write_built_pdb(s, out, force=True) == (out, True)


def _folder(tmp_path, yaml_text, pdb="ala2"):
    folder = tmp_path / "sys"
    folder.mkdir(exist_ok=True)
    shutil.copy(load_system(pdb).pdb_path, folder / "mol.pdb")
    (folder / "system.yaml").write_text(textwrap.dedent(yaml_text))
    return folder


GOOD = """\
    name: custom
    topology: mol.pdb
    forcefield: [amber99sbildn.xml, amber99_obc.xml]
    temperature_K: 300
"""


@pytest.mark.parametrize("yaml_text, message", [
    ("name: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "mapping"),
    (GOOD.replace("    temperature_K: 300\n", ""), "temperature_K"),
    (GOOD.replace("300", "-5"), "positive"),
    (GOOD.replace("300", "hot"), "number"),
    (GOOD + "    nonbonded_method: PME\n", "nonbonded_method 'PME'"),
    (GOOD + "    nonbonded_method: CutoffNonPeriodic\n", "nonbonded_cutoff_nm"),
    (GOOD + "    colour: blue\n", "unknown key"),
    (GOOD + "    constraints: Everything\n", "constraints"),
    (GOOD + "    temperature_K: 310\n", "'temperature_K' is given twice"),
])
def test_malformed_system_yaml(tmp_path, yaml_text, message):
    with pytest.raises(BgkitError, match=message):
        load_system(_folder(tmp_path, yaml_text))


def test_unknown_forcefield_and_bad_pdb(tmp_path):
    folder = _folder(tmp_path, GOOD.replace("amber99_obc.xml", "no_such_ff.xml"))
    with pytest.raises(BgkitError, match="unknown force-field file.*no_such_ff"):
        load_system(folder).openmm_system()
    folder = _folder(tmp_path, GOOD)
    (folder / "mol.pdb").write_text("this is not a PDB\n")
    with pytest.raises(BgkitError, match="PDB|match"):
        load_system(folder).openmm_system()
    (folder / "mol.pdb").unlink()
    with pytest.raises(BgkitError, match="not found"):
        load_system(folder).n_atoms


def test_force_field_that_does_not_fit_the_topology(tmp_path):
    folder = _folder(tmp_path, GOOD.replace("[amber99sbildn.xml, amber99_obc.xml]", "[tip3p.xml]"))
    with pytest.raises(BgkitError, match="does not match"):
        load_system(folder).openmm_system()


def test_unknown_system_and_folder_without_yaml(tmp_path):
    with pytest.raises(BgkitError, match="unknown system 'ala9'.*ala2"):
        load_system("ala9")
    with pytest.raises(BgkitError, match="no system.yaml"):
        load_system(tmp_path)
