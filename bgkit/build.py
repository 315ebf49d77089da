"""Deterministic peptide builder for the topology PDBs of shipped systems.

The heavy-atom backbone (caps included) is placed from ideal internal
coordinates (Engh & Huber bond lengths and angles, trans peptide bonds,
L-chirality, a β/PPII starting conformation), PDBFixer adds the missing
heavy atoms (C-terminal OXT) and the hydrogens at pH 7, and the structure is
energy-minimised with the system's own force field on the Reference platform.
Every step is deterministic, so ``bgkit systems build NAME`` regenerates the
shipped PDB.
"""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np

from bgkit import BgkitError
from bgkit.systems import System, one_line_error

CAPS = ("ACE", "NME")
#: residues whose side chain the builder places (CB); others get theirs from PDBFixer
_CB_RESIDUES = {"ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "HIS", "ILE", "LEU", "LYS", "MET", "PHE",
                "PRO", "SER", "THR", "TRP", "TYR", "VAL"}

# ideal geometry, Angstrom and degrees
_N_CA, _CA_C, _C_N, _C_O, _CA_CB = 1.458, 1.525, 1.329, 1.231, 1.530
_ANG_N_CA_C, _ANG_CA_C_N, _ANG_C_N_CA, _ANG_CA_C_O, _ANG_N_CA_CB = 111.2, 116.2, 121.7, 120.5, 110.5
_TORSION_CB = -122.5  # C-N-CA-CB for L-amino acids


def _place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, torsion: float) -> np.ndarray:
    """Position d with |cd| = bond, angle(b, c, d) = angle, dihedral(a, b, c, d) = torsion (degrees)."""
    angle, torsion = np.radians(angle), np.radians(torsion)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d_local = np.array([-bond * np.cos(angle), bond * np.sin(angle) * np.cos(torsion), bond * np.sin(angle) * np.sin(torsion)])
    return c + d_local[0] * bc + d_local[1] * m + d_local[2] * n


def backbone_heavy_atoms(sequence: list[str], phi: float = -80.0, psi: float = 150.0) -> list[tuple[int, str, str, np.ndarray]]:
    """Heavy atoms (residue index, residue name, atom name, xyz in Angstrom) of a capped or uncapped chain."""
    # the chain trace: ACE contributes (CH3, C); a residue (N, CA, C); NME (N, CH3)
    trace: list[tuple[int, str, str]] = []
    for i, res in enumerate(sequence):
        if res == "ACE":
            trace += [(i, res, "CH3"), (i, res, "C")]
        elif res == "NME":
            trace += [(i, res, "N"), (i, res, "CH3")]
        else:
            trace += [(i, res, "N"), (i, res, "CA"), (i, res, "C")]
    # bond, angle at the previous atom, torsion about the previous bond, keyed by the new atom's role
    pos: list[np.ndarray] = [np.zeros(3), np.array([_N_CA, 0.0, 0.0])]
    pos.append(_place(np.array([0.0, 1.0, 0.0]), pos[0], pos[1], _CA_C, _ANG_N_CA_C, 0.0))
    for k in range(3, len(trace)):
        name = trace[k][2]
        prev = trace[k - 1][2]
        if name == "N":  # after C: torsion N-CA-C-N = psi
            geom = (_C_N, _ANG_CA_C_N, psi)
        elif prev == "N":  # CA (or NME CH3) after N: omega = 180
            geom = (_N_CA, _ANG_C_N_CA, 180.0)
        else:  # C after CA: torsion C-N-CA-C = phi
            geom = (_CA_C, _ANG_N_CA_C, phi)
        pos.append(_place(pos[k - 3], pos[k - 2], pos[k - 1], *geom))
    atoms = [(r, rn, an, p) for (r, rn, an), p in zip(trace, pos)]
    index = {(r, an): p for r, _, an, p in atoms}
    extra = []
    for i, res in enumerate(sequence):
        if res == "NME":
            continue
        ca = index[(i, "CH3" if res == "ACE" else "CA")]
        c = index[(i, "C")]
        nxt = index.get((i + 1, "N"))
        if nxt is not None:
            o = _place(nxt, ca, c, _C_O, _ANG_CA_C_O, 180.0)
        else:  # C-terminus: O anti to the residue's own N about CA-C (PDBFixer adds OXT)
            o = _place(index[(i, "N")], ca, c, _C_O, _ANG_CA_C_O, psi + 180.0)
        extra.append((i, res, "O", o))
        if res in _CB_RESIDUES:
            cb = _place(c, index[(i, "N")], ca, _CA_CB, _ANG_N_CA_CB, _TORSION_CB)
            extra.append((i, res, "CB", cb))
    order = {"N": 0, "CH3": 1, "CA": 1, "C": 2, "O": 3, "CB": 4}
    return sorted(atoms + extra, key=lambda a: (a[0], order[a[2]]))


def _heavy_atom_pdb(sequence: list[str], phi: float, psi: float) -> str:
    lines = []
    for serial, (r, rn, an, xyz) in enumerate(backbone_heavy_atoms(sequence, phi, psi), start=1):
        lines.append(
            f"ATOM  {serial:5d} {an:<4} {rn:>3} A{r + 1:4d}    {xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00  0.00          {an[0]:>2}"
        )
    return "\n".join(lines + ["TER", "END"]) + "\n"


def build_peptide(system: System, minimize: bool = True) -> str:
    """PDB text of the system's peptide (from ``build.sequence`` in its system.yaml)."""
    from openmm import LocalEnergyMinimizer, Platform, VerletIntegrator, app, unit
    from openmm import Context
    from pdbfixer import PDBFixer

    if system.source != "forcefield":
        what = {"amber": "an AMBER prmtop", "openmm_system": "an OpenMM System XML"}.get(system.source, system.source)
        raise BgkitError(f"system '{system.name}' comes from {what}: its structure comes with its files, "
                         "there is nothing to build")
    build = system.spec.build
    sequence = build.get("sequence")
    if not sequence or not isinstance(sequence, list):
        raise BgkitError(f"system '{system.name}' has no build.sequence in its system.yaml: it cannot be built")
    sequence = [str(s).upper() for s in sequence]
    if sum(s not in CAPS for s in sequence) == 0:
        raise BgkitError(f"system '{system.name}': build.sequence has no amino acid")
    heavy = _heavy_atom_pdb(sequence, float(build.get("phi", -80.0)), float(build.get("psi", 150.0)))
    fixer = PDBFixer(pdbfile=io.StringIO(heavy), platform=Platform.getPlatformByName("Reference"))
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    state = random.getstate()
    try:  # OpenMM's Modeller places new hydrogens with the `random` module
        random.seed(0)
        fixer.addMissingAtoms(seed=0)
        fixer.addMissingHydrogens(pH=float(build.get("pH", 7.0)))
    finally:
        random.setstate(state)
    topology, positions = fixer.topology, fixer.positions
    if minimize:
        forcefield = system.forcefield()
        kwargs = {"nonbondedMethod": getattr(app, system.spec.nonbonded_method), "constraints": None}
        if system.spec.nonbonded_cutoff_nm is not None:
            kwargs["nonbondedCutoff"] = system.spec.nonbonded_cutoff_nm * unit.nanometer
        try:
            omm_system = forcefield.createSystem(topology, **kwargs)
        except Exception as exc:
            raise BgkitError(f"system '{system.name}': force field does not match the built peptide: {one_line_error(exc)}") from None
        context = Context(omm_system, VerletIntegrator(0.001), Platform.getPlatformByName("Reference"))
        context.setPositions(positions)
        LocalEnergyMinimizer.minimize(context, 1e-3, 0)
        positions = context.getState(getPositions=True).getPositions()
    out = io.StringIO()
    app.PDBFile.writeFile(topology, positions, out, keepIds=False)
    body = "".join(line for line in out.getvalue().splitlines(keepends=True) if "CREATED WITH" not in line)
    return f"REMARK   1 built by bgkit systems build {system.name}: sequence {'-'.join(sequence)}\n" + body


def write_built_pdb(system: System, out: Path | None = None, force: bool = False) -> tuple[Path, bool]:
    """Build the system's PDB and write it (to its topology path unless ``out``).

    Returns (path, changed). An existing file with different content is only
    replaced with ``force``.
    """
    from bgkit.provenance import atomic_write_bytes

    text = build_peptide(system)
    path = Path(out) if out is not None else system.pdb_path
    if path.exists():
        if path.read_text() == text:
            return path, False
        if not force:
            raise BgkitError(f"{path} exists and differs from the built structure: pass --force to replace it")
    atomic_write_bytes(text.encode(), path)
    return path, True
