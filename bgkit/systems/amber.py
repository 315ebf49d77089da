"""The AMBER source of a system: a prmtop (topology and parameters) with its coordinates.

The prmtop gives the atoms, residues and bonds; the coordinates (inpcrd / crd / rst7, or a PDB of
the same atoms) the reference positions; implicit solvent and dielectrics come from the ``amber``
section of system.yaml (validated in :mod:`bgkit.systems.spec`).
"""
from __future__ import annotations

import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from bgkit import BgkitError
from bgkit.systems.files import one_line_error, pdb_problem

__all__ = ["AmberSource"]


class AmberSource:
    """prmtop + coordinates: ``openmm_system()`` built by ``AmberPrmtopFile.createSystem``.

    Attributes: ``openmm_topology`` (from the prmtop), ``positions`` (nm, float64 [N, 3]).
    """

    def __init__(self, spec: Any, folder: Path) -> None:
        self.spec = spec
        self.folder = Path(folder)

    def _file(self, key: str) -> Path:
        return self.folder / self.spec.amber[key]

    @cached_property
    def _prmtop(self) -> Any:
        from openmm import app

        name, path = self.spec.name, self._file("prmtop")
        if not path.is_file():
            raise BgkitError(f"system '{name}': prmtop file {path} not found")
        try:
            prmtop = app.AmberPrmtopFile(str(path))
        except Exception as exc:  # noqa: BLE001 - the parser raises anything for a bad file
            raise BgkitError(f"system '{name}': unreadable prmtop {path}: {one_line_error(exc)}") from None
        if prmtop.topology.getNumAtoms() == 0:
            raise BgkitError(f"system '{name}': unreadable prmtop {path}: no atoms")
        return prmtop

    @property
    def openmm_topology(self) -> Any:
        return self._prmtop.topology

    @cached_property
    def positions(self) -> np.ndarray:
        """Positions of the ``amber.coordinates`` file, nm [N, 3], checked against the prmtop's atoms."""
        from openmm import app, unit

        prmtop = self._prmtop
        path = self._file("coordinates")
        what = f"system '{self.spec.name}': coordinates {path}"
        if not path.is_file():
            raise BgkitError(f"{what} not found")
        try:
            if path.suffix.lower() == ".pdb":
                problem = pdb_problem(path)
                if problem is not None:
                    raise BgkitError(f"{what} unreadable: {problem}")
                coords = app.PDBFile(str(path))
                mismatch = _atoms_mismatch(coords.topology, prmtop.topology)
                if mismatch is not None:
                    raise BgkitError(f"{what} do not match prmtop {self._file('prmtop')}: {mismatch}")
            else:
                coords = app.AmberInpcrdFile(str(path))
            xyz = np.asarray(coords.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
        except BgkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - the readers raise anything for a bad file
            raise BgkitError(f"{what} unreadable: {one_line_error(exc)}") from None
        n = prmtop.topology.getNumAtoms()
        if xyz.shape != (n, 3):
            raise BgkitError(f"{what} hold {len(xyz)} atoms, prmtop {self._file('prmtop')} has {n}")
        if not np.isfinite(xyz).all():
            raise BgkitError(f"{what} hold non-finite positions")
        return xyz

    def openmm_system(self) -> Any:
        """A fresh ``openmm.System`` from the prmtop with the ``amber`` section's solvent and system.yaml's
        nonbonded method, cutoff and constraints; the coordinates are checked first."""
        from openmm import app, unit

        spec, a = self.spec, self.spec.amber
        kwargs: dict[str, Any] = {
            "nonbondedMethod": getattr(app, spec.nonbonded_method),
            "constraints": getattr(app, spec.constraints) if spec.constraints else None,
            "rigidWater": False,
            "removeCMMotion": False,
            "implicitSolvent": getattr(app, a["implicit_solvent"]) if a["implicit_solvent"] else None,
            "implicitSolventSaltConc": a["implicit_solvent_salt_molar"] * unit.molar,
            "temperature": spec.temperature_K * unit.kelvin,  # only used for the Debye length of the salt
            "soluteDielectric": a["solute_dielectric"],
            "solventDielectric": a["solvent_dielectric"],
        }
        if spec.nonbonded_cutoff_nm is not None:
            kwargs["nonbondedCutoff"] = spec.nonbonded_cutoff_nm * unit.nanometer
        self.positions  # noqa: B018 - the coordinates must fit the prmtop before anything is built
        try:
            with warnings.catch_warnings():  # the prmtop's own GB radii and screening are used, as in sander
                warnings.filterwarnings("ignore", message="Non-optimal GB parameters", category=UserWarning)
                return self._prmtop.createSystem(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise BgkitError(f"system '{spec.name}': cannot build a System from prmtop "
                             f"{self._file('prmtop')}: {one_line_error(exc)}") from None

    @property
    def forcefield_names(self) -> list[str]:
        a = self.spec.amber
        return [a["prmtop"], a["implicit_solvent"] or "vacuum (no implicit solvent)"]

    def definition_entries(self) -> list[str]:
        return [self.spec.amber["prmtop"], self.spec.amber["coordinates"]]


def _atoms_mismatch(found: Any, expected: Any) -> str | None:
    """The first difference of atom names and residue names between two OpenMM topologies, or None."""
    if found.getNumAtoms() != expected.getNumAtoms():
        return f"{found.getNumAtoms()} atoms, the prmtop has {expected.getNumAtoms()}"
    for i, (a, b) in enumerate(zip(found.atoms(), expected.atoms())):
        if (a.name, a.residue.name) != (b.name, b.residue.name):
            return f"atom {i} is {a.name} ({a.residue.name}) there, {b.name} ({b.residue.name}) in the prmtop"
    return None
