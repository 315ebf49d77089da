"""Systems from the files scientists already have: an AMBER prmtop + coordinates, a serialised OpenMM System.

Energies are checked against OpenMM set up by hand from the same files (``AmberPrmtopFile.createSystem``,
``XmlSerializer``) and, for the shipped ala2ff96, against openmmtools' own test system; the internal
coordinates of ring molecules (toluene, benzene: the bond graph of the prmtop) against exact distances and
an autograd Jacobian; bad input against one-line errors naming the file.
"""
from __future__ import annotations

import math
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from _cli_helpers import assert_one_line_error, bgkit
from bgkit import BgkitError
from bgkit.systems import IMPLICIT_SOLVENTS, load_system


def _openmmtools_data() -> Path:
    import openmmtools

    return Path(openmmtools.__file__).parent / "data"


#: small molecules of openmmtools' data (GAFF/AM1-BCC, leap): prmtop, coordinates
MOLECULES = {"toluene": ("benzene-toluene-implicit/solvent.prmtop", "benzene-toluene-implicit/solvent.inpcrd"),
             "benzene": ("benzene-toluene-implicit/receptor.prmtop", "benzene-toluene-implicit/receptor.inpcrd")}


def amber_folder(root: Path, molecule: str = "toluene", extra: str = "", solvent: str = "HCT",
                 name: str | None = None) -> Path:
    """A user system folder made of a prmtop and its inpcrd from openmmtools' data."""
    prmtop, crd = MOLECULES[molecule]
    folder = root / (name or molecule)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(_openmmtools_data() / prmtop, folder / f"{molecule}.prmtop")
    shutil.copy(_openmmtools_data() / crd, folder / f"{molecule}.inpcrd")
    (folder / "system.yaml").write_text(textwrap.dedent(f"""\
        name: {name or molecule}
        amber:
          prmtop: {molecule}.prmtop
          coordinates: {molecule}.inpcrd
          implicit_solvent: {solvent}
        temperature_K: 300
    """) + textwrap.dedent(extra))
    return folder


def direct_amber_system(folder: Path, molecule: str = "toluene", **kwargs):
    """OpenMM's own System of the prmtop in ``folder`` (nothing of bgkit)."""
    from openmm import app

    options = {"implicitSolvent": app.HCT, "nonbondedMethod": app.NoCutoff, "constraints": None, **kwargs}
    return app.AmberPrmtopFile(str(folder / f"{molecule}.prmtop")).createSystem(**options)


def direct_energies(system, xyz: np.ndarray) -> np.ndarray:
    """Potential energies (kJ/mol) of frames xyz [B, N, 3] nm, one Reference Context."""
    import openmm
    from openmm import unit

    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    out = []
    for frame in xyz:
        ctx.setPositions(frame)
        out.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    return np.array(out)


def md_frames(system, positions: np.ndarray, n: int, seed: int = 0, every: int = 25) -> np.ndarray:
    """n frames of a short Langevin run (300 K, 1 fs, after a minimisation; CPU platform, one thread: the
    custom GB forces are 3-4x faster there than on Reference) of an OpenMM System, nm [n, N, 3] float64."""
    import openmm
    from openmm import unit

    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5 / unit.picosecond, 0.001 * unit.picosecond)
    integrator.setRandomNumberSeed(seed + 1)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    ctx.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 200)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, seed + 1)
    integrator.step(500)
    frames = []
    for _ in range(n):
        integrator.step(every)
        frames.append(ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.asarray(frames, dtype=np.float64)


def bgkit_energies_kj(system, xyz: np.ndarray) -> np.ndarray:
    """bgkit's energies (worker process, Reference platform) in kJ/mol."""
    from bgkit.energy import EnergyModel

    with EnergyModel(system, n_workers=1, platform="Reference") as model:
        return model(xyz) * system.kT


def assert_energies_agree(mine: np.ndarray, ref: np.ndarray) -> float:
    rel = np.abs(mine - ref) / np.maximum(np.abs(ref), 1.0)
    assert rel.max() <= 1e-6, rel.max()
    return float(rel.max())


@pytest.fixture(scope="module")
def toluene(tmp_path_factory):
    """(folder, 300 MD frames of OpenMM's own toluene System)."""
    folder = amber_folder(tmp_path_factory.mktemp("src"))
    system = load_system(folder)
    return folder, md_frames(direct_amber_system(folder), system.positions, 300)


# ------------------------------------------------------------------ energies
@pytest.mark.parametrize("options, direct", [
    ("", {}),
    ("nonbonded_method: CutoffNonPeriodic\nnonbonded_cutoff_nm: 0.9\n", {"nonbondedMethod": "CutoffNonPeriodic"}),
], ids=["NoCutoff", "cutoff-salt-dielectric"])
def test_prmtop_energies_match_openmm(toluene, tmp_path, options, direct) -> None:
    from openmm import app, unit

    base, frames = toluene
    xyz = frames[:100]
    if not options:
        folder, kwargs = base, {}
    else:  # other createSystem options: a cutoff, OBC2 with salt and other dielectrics
        folder = amber_folder(tmp_path, solvent="OBC2", extra=options)
        text = (folder / "system.yaml").read_text().replace(
            "implicit_solvent: OBC2\n", "implicit_solvent: OBC2\n  implicit_solvent_salt_molar: 0.15\n"
            "  solute_dielectric: 2.0\n  solvent_dielectric: 80.0\n")
        (folder / "system.yaml").write_text(text)
        kwargs = {"nonbondedMethod": app.CutoffNonPeriodic, "nonbondedCutoff": 0.9 * unit.nanometer,
                  "implicitSolvent": app.OBC2, "implicitSolventSaltConc": 0.15 * unit.molar,
                  "temperature": 300 * unit.kelvin, "soluteDielectric": 2.0, "solventDielectric": 80.0}
    system = load_system(folder)
    assert system.source == "amber" and system.n_atoms == 15 and system.pdb_path is None
    ref = direct_energies(direct_amber_system(folder, **kwargs), xyz)
    rel = assert_energies_agree(bgkit_energies_kj(system, xyz), ref)
    print(f"toluene prmtop {options or 'NoCutoff'!r}: max relative energy difference {rel:.2e} over {len(xyz)} frames")
    assert np.ptp(ref) > 10.0  # the frames differ: a real comparison, not one structure 100 times


def test_shipped_ala2ff96_is_openmmtools_alanine_dipeptide_implicit() -> None:
    """systems/ala2ff96 = openmmtools.testsystems.AlanineDipeptideImplicit(constraints=None), frame by frame."""
    from openmm import unit
    from openmmtools.testsystems import AlanineDipeptideImplicit

    reference = AlanineDipeptideImplicit(constraints=None)
    system = load_system("ala2ff96")
    assert system.source == "amber" and system.n_atoms == 22 and system.temperature == 300.0
    assert system.n_constraints == 0 == reference.system.getNumConstraints()
    np.testing.assert_array_equal(system.positions, reference.positions.value_in_unit(unit.nanometer))
    assert [r.name for r in system.topology.residues] == ["ACE", "ALA", "NME"]
    names = [a.name for a in system.topology.atoms]
    assert [[names[i] for i in q] for q in system.backbone_dihedrals["phi"]] == [["C", "N", "CA", "C"]]
    assert [[names[i] for i in q] for q in system.backbone_dihedrals["psi"]] == [["N", "CA", "C", "N"]]
    xyz = md_frames(reference.system, system.positions, 100, every=10)
    rel = assert_energies_agree(bgkit_energies_kj(system, xyz), direct_energies(reference.system, xyz))
    print(f"ala2ff96 vs AlanineDipeptideImplicit(constraints=None): max relative difference {rel:.2e}")
    from bgkit.md.dataset import load_dataset

    assert system.spec.reference == ("md", "md_rex")
    for name in system.spec.reference:
        ds = load_dataset(system.folder / name, system=system)  # refuses MD of another Hamiltonian or topology
        e = bgkit_energies_kj(system, ds.xyz[:: max(1, len(ds.xyz) // 20)].astype(np.float64)) / system.kT
        np.testing.assert_allclose(ds.energies_kt[:: max(1, len(ds.xyz) // 20)], e, rtol=1e-5, atol=1e-3)
    assert (system.folder / "README.md").is_file()
    from bgkit.build import build_peptide

    with pytest.raises(BgkitError, match="AMBER prmtop.*nothing to build"):
        build_peptide(system)


def xml_folder(root: Path, source: Path, molecule: str = "toluene", pdb_from: Path | None = None) -> Path:
    """A user system folder of a serialised OpenMM System (OpenMM's own, from the prmtop) and a topology PDB."""
    import openmm
    from openmm import app

    folder = root / "xml"
    folder.mkdir(exist_ok=True)
    system = direct_amber_system(source, molecule)
    (folder / "system.xml").write_text(openmm.XmlSerializer.serialize(system))
    pdb_source = pdb_from or source
    mol = next(pdb_source.glob("*.prmtop")).stem
    top = app.AmberPrmtopFile(str(pdb_source / f"{mol}.prmtop")).topology
    pos = app.AmberInpcrdFile(str(pdb_source / f"{mol}.inpcrd")).getPositions()
    with open(folder / "mol.pdb", "w") as fh:
        app.PDBFile.writeFile(top, pos, fh)  # CONECT records for the non-standard residue: the bonds
    (folder / "system.yaml").write_text("name: toluene-xml\nopenmm_system:\n  xml: system.xml\ntopology: mol.pdb\n"
                                        "temperature_K: 300\n")
    return folder


def test_system_xml_energies_match_openmm(toluene, tmp_path) -> None:
    import openmm

    source, frames = toluene
    folder = xml_folder(tmp_path, source)
    system = load_system(folder)
    assert system.source == "openmm_system" and system.n_atoms == 15
    assert system.topology_hash == load_system(source).topology_hash  # same atoms, residues and bonds as the prmtop
    xml = openmm.XmlSerializer.deserialize((folder / "system.xml").read_text())
    xyz = frames[100:200]
    rel = assert_energies_agree(bgkit_energies_kj(system, xyz), direct_energies(xml, xyz))
    print(f"toluene System XML: max relative energy difference {rel:.2e} over {len(xyz)} frames")
    info = system.summary()
    assert info["source"] == "openmm_system" and info["constraints"] is None
    assert system.definition_files() == [folder / "system.yaml", folder / "mol.pdb", folder / "system.xml"]


# -------------------------------------------------------- internal coordinates
def pairwise(x: torch.Tensor) -> torch.Tensor:
    return (x[:, :, None] - x[:, None]).norm(dim=-1)


@pytest.mark.parametrize("molecule", ["toluene", "benzene"])
def test_ring_molecule_internal_round_trip(toluene, tmp_path, molecule) -> None:
    """The z-matrix comes from the prmtop's bonds; the ring-closure bond is no coordinate but is reconstructed."""
    from bgkit.coords import fit_representation, random_rotations, representation_from_state, rotate

    if molecule == "toluene":
        folder, frames = toluene
    else:
        folder = amber_folder(tmp_path, molecule)
        frames = md_frames(direct_amber_system(folder, molecule), load_system(folder).positions, 300)
    system = load_system(folder)
    bonds = {tuple(sorted((a.index, b.index))) for a, b in system.openmm_topology.bonds()}
    ic = fit_representation("internal", frames[:200], system)
    tree = {tuple(sorted(r[:2])) for r in ic.zmatrix.rows[1:].tolist()}
    assert tree <= bonds and len(bonds) - len(tree) == 1  # one six-membered ring: one closure bond left out
    assert ic.dim == 3 * system.n_atoms - 6
    x = torch.as_tensor(frames[200:])
    y, ld = ic.to_flow(x)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    back, ld_back = ic.from_flow(y)
    assert (pairwise(back) - pairwise(x)).abs().max() < 1e-5  # nm, every pair, the ring closure included
    (i, j), = bonds - tree
    assert torch.allclose((back[:, i] - back[:, j]).norm(dim=-1), (x[:, i] - x[:, j]).norm(dim=-1), atol=1e-9)
    assert torch.allclose(ld, -ld_back, atol=1e-8)
    R = random_rotations(len(x), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y_rot, _ = ic.to_flow(rotate(x, R) - 0.4)
    assert torch.allclose(y_rot, y, atol=1e-9)
    import json

    assert torch.allclose(representation_from_state(json.loads(json.dumps(ic.state_dict()))).to_flow(x)[0], y)


def test_ring_molecule_log_det_matches_autograd(toluene) -> None:
    """(y, rotation vector) -> first N-1 centred atoms of toluene: log|det J| = logdet_from - log 8 pi^2 + log Haar."""
    from bgkit.coords import fit_representation, rotate
    from test_coords import rotation_matrix

    folder, frames = toluene
    ic = fit_representation("internal", frames[:200], load_system(folder))
    n = ic.n_atoms
    y, _ = ic.to_flow(torch.as_tensor(frames[250:253]))
    omega = torch.tensor([0.3, -0.8, 0.5], dtype=torch.float64)
    theta = float(omega.norm())

    def g(v: torch.Tensor) -> torch.Tensor:
        xyz, _ = ic.from_flow(v[None, : ic.dim])
        return rotate(xyz, rotation_matrix(v[ic.dim:]))[0, : n - 1].reshape(-1)

    for row in y:
        sign, logdet = torch.linalg.slogdet(torch.autograd.functional.jacobian(g, torch.cat([row, omega])))
        _, ld_from = ic.from_flow(row[None])
        haar = math.log(2 * (1 - math.cos(theta)) / theta ** 2)
        assert math.isclose(float(logdet), float(ld_from) - math.log(8 * math.pi ** 2) + haar, abs_tol=1e-7)


# ----------------------------------------------------------------- bad input
def test_prmtop_whose_atoms_differ_from_the_coordinates(tmp_path) -> None:
    folder = amber_folder(tmp_path)
    shutil.copy(_openmmtools_data() / MOLECULES["benzene"][1], folder / "toluene.inpcrd")  # 12 atoms, not 15
    err = assert_one_line_error(bgkit("systems", "show", folder), "toluene.inpcrd", "12 atoms", "toluene.prmtop", "15")
    assert "Traceback" not in err
    # coordinates as a PDB: atom names are compared too
    from openmm import app

    top = app.AmberPrmtopFile(str(folder / "toluene.prmtop")).topology
    pos = app.AmberInpcrdFile(str(_openmmtools_data() / MOLECULES["toluene"][1])).getPositions()
    with open(folder / "coords.pdb", "w") as fh:
        app.PDBFile.writeFile(top, pos, fh)
    (folder / "coords.pdb").write_text((folder / "coords.pdb").read_text().replace(" C1  TOL", " CX  TOL", 1))
    (folder / "system.yaml").write_text((folder / "system.yaml").read_text().replace("toluene.inpcrd", "coords.pdb"))
    with pytest.raises(BgkitError, match=r"coords\.pdb do not match prmtop .*toluene\.prmtop: atom 0 is CX"):
        load_system(folder).positions


def test_system_xml_whose_particle_count_differs_from_the_pdb(toluene, tmp_path) -> None:
    source, _ = toluene
    folder = xml_folder(tmp_path, source, pdb_from=amber_folder(tmp_path, "benzene"))  # 15 particles, 12 atoms
    assert_one_line_error(bgkit("energy", "--system", folder, folder / "mol.pdb"),
                          "system.xml", "15 particles", "mol.pdb", "12 atoms")
    (folder / "system.xml").write_text("<System garbage")
    with pytest.raises(BgkitError, match="unreadable System XML .*system.xml"):
        load_system(folder).openmm_system()


def test_unknown_implicit_solvent_lists_the_valid_ones(tmp_path) -> None:
    folder = amber_folder(tmp_path, solvent="OBC3")
    err = assert_one_line_error(bgkit("systems", "show", folder), "system.yaml", "'OBC3'")
    assert all(name in err for name in IMPLICIT_SOLVENTS)


@pytest.mark.parametrize("yaml_text, message", [
    ("name: x\nforcefield: [amber99sbildn.xml]\ntopology: m.pdb\namber: {prmtop: a, coordinates: b}\n"
     "temperature_K: 300\n", "not forcefield and amber"),
    ("name: x\ntopology: m.pdb\ntemperature_K: 300\n", "missing required key 'forcefield' (or an 'amber'"),
    ("name: x\namber: {prmtop: a.prmtop}\ntemperature_K: 300\n", "'amber' needs 'coordinates'"),
    ("name: x\namber: {prmtop: a, coordinates: b, gb: OBC1}\ntemperature_K: 300\n", "unknown key(s) amber.gb"),
    ("name: x\namber: {prmtop: a, coordinates: b}\ntopology: m.pdb\ntemperature_K: 300\n", "remove 'topology'"),
    ("name: x\namber: {prmtop: a, coordinates: b, solvent_dielectric: -1}\ntemperature_K: 300\n", "positive"),
    ("name: x\nopenmm_system: {xml: s.xml}\ntemperature_K: 300\n", "missing required key 'topology'"),
    ("name: x\nopenmm_system: {xml: s.xml}\ntopology: m.pdb\nconstraints: HBonds\ntemperature_K: 300\n",
     "fixed by the System XML"),
])
def test_malformed_source_sections(tmp_path, yaml_text, message) -> None:
    (tmp_path / "system.yaml").write_text(yaml_text)
    with pytest.raises(BgkitError, match=r"system\.yaml") as info:
        load_system(tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_prmtop_names_the_file(tmp_path) -> None:
    folder = amber_folder(tmp_path)
    (folder / "toluene.prmtop").unlink()
    with pytest.raises(BgkitError, match=r"prmtop file .*toluene\.prmtop not found"):
        load_system(folder).n_atoms


def test_constraints_are_refused_at_training_not_in_md(toluene, tmp_path) -> None:
    """A system with HBonds is refused by `bgkit train` and `bgkit teacher train` (before any data is read);
    its OpenMM System does carry the constraints (simulate uses them); so is a System XML with constraints."""
    import openmm

    folder = amber_folder(tmp_path, extra="constraints: HBonds\n", name="tol-hbonds")
    system = load_system(folder)
    assert system.n_constraints == 8 == system.openmm_system().getNumConstraints()  # the 8 C-H bonds
    for args in (("train", "--arch", "nsf", "--objective", "mle", "--coords", "internal"),
                 ("teacher", "train", "--objective", "cfm")):
        assert_one_line_error(bgkit(*args, "--system", folder, "--steps", 2, "--out", tmp_path / "m.pt"),
                              "system 'tol-hbonds'", "constraints: HBonds", "training")
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(BgkitError, match="constraints: HBonds"):
        system.check_unconstrained()
    source, _ = toluene
    load_system(source).check_unconstrained()  # constraints: null passes
    xml = xml_folder(tmp_path, source)
    constrained = openmm.XmlSerializer.deserialize((xml / "system.xml").read_text())
    constrained.addConstraint(0, 1, 0.14)
    (xml / "system.xml").write_text(openmm.XmlSerializer.serialize(constrained))
    with pytest.raises(BgkitError, match=r"system 'toluene-xml' cannot be used for training: its System XML .*"
                                         r"system\.xml has 1 constraints"):
        load_system(xml).check_unconstrained()


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_user_prmtop_folder_end_to_end(tmp_path) -> None:
    """A ring molecule from the user's prmtop: `bgkit energy` = OpenMM, a tiny `bgkit simulate` (its dataset's
    frozen copy reloads), a short `bgkit train` in internal coordinates, `bgkit sample` (energies = OpenMM)."""
    import json

    import mdtraj

    from bgkit.md.dataset import load_dataset

    folder = amber_folder(tmp_path)
    system = load_system(folder)
    direct = direct_amber_system(folder)
    frames = md_frames(direct, system.positions, 20)
    mdtraj.Trajectory(frames.astype(np.float32), system.topology).save_hdf5(str(tmp_path / "t.h5"))
    res = bgkit("energy", "--system", folder, tmp_path / "t.h5", "--out", tmp_path / "e.npy", "--workers", 1)
    assert res.returncode == 0, res.stderr
    e = np.load(tmp_path / "e.npy") * system.kT
    assert_energies_agree(e, direct_energies(direct, frames.astype(np.float32).astype(np.float64)))

    data = tmp_path / "md"
    res = bgkit("simulate", "--system", folder, "--ns", 0.01, "--equilibrate", 1, "--save-every", 0.05,
                "--chunk", 5, "--out", data)
    assert res.returncode == 0, res.stderr
    ds = load_dataset(data)
    assert ds.system.source == "amber" and ds.system.topology_hash == system.topology_hash
    assert sorted(p.name for p in (data / "system").iterdir()) == ["system.yaml", "toluene.inpcrd", "toluene.prmtop"]
    assert mdtraj.load(str(ds.replicas[0].chunks[0]), top=str(data / "topology.pdb")).n_atoms == 15
    e_md = direct_energies(direct, ds.xyz[::20].astype(np.float64)) / system.kT
    np.testing.assert_allclose(ds.energies_kt[::20], e_md, rtol=1e-5, atol=1e-4)  # the stored energies: OpenMM's

    model = tmp_path / "m.pt"
    res = bgkit("train", "--system", folder, "--data", data, "--arch", "nsf", "--objective", "mle", "--coords",
                "internal", "--steps", 10, "--batch-size", 32, "--hparams", '{"hidden": 16, "n_layers": 2}',
                "--out", model)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "samples"
    res = bgkit("sample", "--system", folder, "--model", model, "--n", 64, "--workers", 1, "--out", out)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 64
    samples = mdtraj.load(str(out / "samples.h5"))
    assert samples.n_frames == 64 and samples.topology.n_atoms == 15
    with np.load(out / "weights.npz") as w:
        e_samples = w["energy_kt"][:8]
    ok = np.isfinite(e_samples)
    assert ok.any()
    e_direct = direct_energies(direct, samples.xyz[:8].astype(np.float64)) / system.kT
    np.testing.assert_allclose(e_samples[ok], e_direct[ok], rtol=1e-4, atol=1e-3)  # samples.h5 is float32

    # MD may keep constraints (training refuses them): HBonds and a 2 fs step
    constrained = amber_folder(tmp_path, extra="constraints: HBonds\n", name="tol-hbonds")
    res = bgkit("simulate", "--system", constrained, "--ns", 0.004, "--step", 2, "--equilibrate", 1,
                "--save-every", 0.1, "--chunk", 2, "--out", tmp_path / "md-hbonds")
    assert res.returncode == 0, res.stderr
    ds = load_dataset(tmp_path / "md-hbonds")
    assert ds.meta["constraints"] == "HBonds" and ds.n_frames == 40 and np.isfinite(ds.energies_kt).all()
