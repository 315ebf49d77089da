"""A molecular system: a Hamiltonian (OpenMM System), a topology and a temperature.

:class:`System` is what every command works on, whatever the source of its Hamiltonian
(``system.yaml`` format in :mod:`bgkit.systems.spec`): force-field XMLs + PDB
(:mod:`~bgkit.systems.forcefield`), an AMBER prmtop (:mod:`~bgkit.systems.amber`) or an OpenMM System
XML (:mod:`~bgkit.systems.openmm_xml`) all give the same object — OpenMM System, topology, positions,
kT, backbone dihedrals if any, topology hash. Constraints may be used by ``bgkit simulate`` but are
refused for training (:meth:`System.check_unconstrained`).
"""
from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from bgkit import BgkitError
from bgkit.systems.amber import AmberSource
from bgkit.systems.forcefield import ForceFieldSource, forcefield_files, load_forcefield
from bgkit.systems.openmm_xml import OpenMMSystemSource
from bgkit.systems.spec import SystemSpec

__all__ = ["MOLAR_GAS_CONSTANT", "SOURCE_TYPES", "System"]

#: Boltzmann constant times Avogadro, kJ/(mol K) (CODATA, as in OpenMM).
MOLAR_GAS_CONSTANT = 8.314462618e-3

#: the reader of each source of system.yaml (:data:`bgkit.systems.spec.SOURCES`)
SOURCE_TYPES = {"forcefield": ForceFieldSource, "amber": AmberSource, "openmm_system": OpenMMSystemSource}


class System:
    """A molecular system: OpenMM force field + topology + temperature.

    Attributes of interest: ``n_atoms``, ``kT`` (kJ/mol), ``temperature`` (K),
    ``topology`` (mdtraj), ``positions`` (reference PDB, nm, [N, 3]),
    ``openmm_system()`` and ``topology_hash``.
    """

    def __init__(self, spec: SystemSpec, folder: Path):
        self.spec = spec
        self.folder = Path(folder)

    # ----------------------------------------------------------------- basics
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def temperature(self) -> float:
        """Temperature in K."""
        return self.spec.temperature_K

    @property
    def kT(self) -> float:
        """Thermal energy k_B T in kJ/mol."""
        return MOLAR_GAS_CONSTANT * self.spec.temperature_K

    @property
    def reference_folders(self) -> list[Path]:
        """The dataset folders whose test splits, joined, are the default evaluation reference."""
        return [self.folder / r for r in self.spec.reference]

    @property
    def source(self) -> str:
        """Where the Hamiltonian comes from: "forcefield" (XMLs + PDB), "amber" (prmtop) or "openmm_system" (XML)."""
        return self.spec.source

    @cached_property
    def _source(self) -> Any:
        """The reader of this system's source (:data:`SOURCE_TYPES`)."""
        return SOURCE_TYPES[self.source](self.spec, self.folder)

    @property
    def pdb_path(self) -> Path | None:
        """The topology PDB named in system.yaml; None for an ``amber`` system (see :meth:`write_topology_pdb`)."""
        return self.folder / self.spec.topology if self.spec.topology else None

    @property
    def openmm_topology(self):
        return self._source.openmm_topology

    @cached_property
    def topology(self):
        """mdtraj.Topology of the system (atom order = data order)."""
        import mdtraj

        return mdtraj.Topology.from_openmm(self.openmm_topology)

    @cached_property
    def positions(self) -> np.ndarray:
        """Reference positions from the PDB (or the AMBER coordinates), nm, shape [N, 3] float64."""
        return self._source.positions

    @property
    def n_atoms(self) -> int:
        return self.openmm_topology.getNumAtoms()

    @cached_property
    def topology_hash(self) -> str:
        """sha256 of atom names, elements, residues and bonds, in order."""
        parts = [f"{a.index}:{a.name}:{a.element.symbol if a.element else '?'}:{a.residue.name}:{a.residue.index}"
                 for a in self.openmm_topology.atoms()]
        parts += sorted(f"{b[0].index}-{b[1].index}" for b in self.openmm_topology.bonds())
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    # ------------------------------------------------------------ Hamiltonian
    def forcefield_files(self) -> list[str]:
        """Force-field XMLs, resolved: a file in the system folder, else an OpenMM bundled name."""
        return forcefield_files(self.spec, self.folder)

    def forcefield(self):
        """The ``openmm.app.ForceField`` of the force-field XMLs."""
        return load_forcefield(self.spec, self.folder)

    def openmm_system(self):
        """A fresh ``openmm.System``: built from the force field and topology, from the prmtop, or read from the XML."""
        return self._source.openmm_system()

    @cached_property
    def system_xml(self) -> str:
        """The serialised OpenMM System (what energy workers deserialise)."""
        import openmm

        return openmm.XmlSerializer.serialize(self.openmm_system())

    @cached_property
    def n_constraints(self) -> int:
        """Number of constraints of the OpenMM System (0 unless ``constraints`` or the XML has them)."""
        import openmm

        return openmm.XmlSerializer.deserialize(self.system_xml).getNumConstraints()

    def check_unconstrained(self, what: str = "training") -> None:
        """BgkitError unless the OpenMM System has no constraints (flows move every bond length)."""
        n = self.n_constraints
        if n == 0:
            return
        if self.source == "openmm_system":
            setting = f"its System XML {self.folder / self.spec.openmm_system['xml']} has {n} constraints"
        else:
            setting = f"constraints: {self.spec.constraints} in {self.folder / 'system.yaml'}, {n} constrained bonds"
        raise BgkitError(f"system '{self.name}' cannot be used for {what}: {setting}; the flow representations "
                         "move every bond, so use a copy of the system with constraints: null "
                         "(bgkit simulate may keep them)")

    @property
    def forcefield_names(self) -> list[str]:
        """What defines the Hamiltonian, for listings: force-field XMLs, the prmtop and its solvent, or the System XML."""
        return self._source.forcefield_names

    def definition_files(self) -> list[Path]:
        """The files of the system folder that define the system (system.yaml first), for frozen copies.

        Force-field entries that are OpenMM bundled names are not files and are not listed.
        """
        entries = [self.spec.topology] if self.spec.topology else []
        entries += self._source.definition_entries()
        files = [self.folder / "system.yaml"] + [self.folder / e for e in entries]
        return list(dict.fromkeys(f for f in files if f.is_file()))

    def write_topology_pdb(self, path: str | os.PathLike) -> None:
        """Write a PDB of the system (its topology PDB, or one made from the prmtop and coordinates) to ``path``."""
        import shutil

        if self.pdb_path is not None:
            shutil.copy(self.pdb_path, path)
            return
        import io

        from openmm import app, unit

        out = io.StringIO()
        app.PDBFile.writeFile(self.openmm_topology, self.positions * unit.nanometer, out)
        Path(path).write_text(out.getvalue())

    def force_names(self) -> list[str]:
        import openmm

        return [f.__class__.__name__ for f in openmm.XmlSerializer.deserialize(self.system_xml).getForces()]

    def preferred_platform(self) -> str:
        """Fastest OpenMM platform for single-point energies of this system.

        Measured on this project's 2-core VM: Reference beats CPU 3-4x for the built-in
        GBSAOBCForce; CPU is faster for CustomGBForce (e.g. obc1.xml).
        """
        return "CPU" if any(n.startswith("Custom") and "GB" in n for n in self.force_names()) else "Reference"

    # -------------------------------------------------------------- analysis
    @cached_property
    def backbone_dihedrals(self) -> dict[str, np.ndarray]:
        """φ and ψ atom indices (mdtraj), ``{"phi": [k, 4], "psi": [k, 4]}`` (:func:`bgkit.dihedrals.backbone_atoms`)."""
        from bgkit.dihedrals import backbone_atoms

        return backbone_atoms(self.topology)

    def summary(self) -> dict[str, Any]:
        """Everything ``bgkit systems show`` prints, as plain data."""
        top = self.topology
        dihedrals = {k: v.tolist() for k, v in self.backbone_dihedrals.items()}
        return {
            "name": self.name,
            "description": self.spec.description,
            "folder": str(self.folder),
            "atoms": self.n_atoms,
            "residues": [r.name for r in top.residues],
            "temperature_K": self.temperature,
            "kT_kJ_per_mol": self.kT,
            "source": self.source,
            "forcefield": self.forcefield_names,
            "nonbonded_method": self.spec.nonbonded_method or "as in the System XML",
            "nonbonded_cutoff_nm": self.spec.nonbonded_cutoff_nm,
            "constraints": (self.spec.constraints if self.source != "openmm_system"
                            else f"{self.n_constraints} in the System XML" if self.n_constraints else None),
            "platform": self.preferred_platform(),
            "phi_atoms": dihedrals["phi"],
            "psi_atoms": dihedrals["psi"],
            "topology_hash": self.topology_hash,
        }

    def check_positions(self, xyz: np.ndarray) -> None:
        """Raise BgkitError unless ``xyz`` is [B, N, 3] for this system."""
        if xyz.ndim != 3 or xyz.shape[1:] != (self.n_atoms, 3):
            raise BgkitError(
                f"positions have shape {tuple(xyz.shape)}, system '{self.name}' needs [batch, {self.n_atoms}, 3] (nm)"
            )

    def __repr__(self) -> str:
        return f"System({self.name!r}, atoms={self.n_atoms}, T={self.temperature} K, folder={str(self.folder)!r})"
