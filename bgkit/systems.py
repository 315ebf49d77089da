"""Molecular systems: a force field, a topology and a temperature.

A system lives in a folder with a ``system.yaml`` and a topology PDB::

    name: ala2
    description: Alanine dipeptide (Ace-Ala-Nme) in OBC implicit solvent
    topology: ala2.pdb
    forcefield: [amber99sbildn.xml, amber99_obc.xml]
    nonbonded_method: NoCutoff          # NoCutoff | CutoffNonPeriodic
    nonbonded_cutoff_nm: null           # required for CutoffNonPeriodic
    constraints: null                   # null | HBonds | AllBonds | HAngles
    temperature_K: 300
    build:                              # optional: how `bgkit systems build` makes the PDB
      sequence: [ACE, ALA, NME]
    md:                                 # optional: reference-MD settings
      friction_per_ps: 1.0
    reference: [md]                     # optional: dataset folders whose test splits, joined,
                                        # are `bgkit evaluate`'s default reference

Force-field entries are either files relative to the system folder or names
of OpenMM's bundled force fields. The shipped systems are the sub-folders of
the repository's ``systems/`` directory (or ``$BGKIT_SYSTEMS``); every command
accepts a shipped name or the path of such a folder.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from bgkit import BgkitError

#: Boltzmann constant times Avogadro, kJ/(mol K) (CODATA, as in OpenMM).
MOLAR_GAS_CONSTANT = 8.314462618e-3

NONBONDED_METHODS = ("NoCutoff", "CutoffNonPeriodic")
CONSTRAINTS = (None, "HBonds", "AllBonds", "HAngles")


def systems_dir() -> Path:
    """The folder holding the shipped systems (``$BGKIT_SYSTEMS`` overrides)."""
    env = os.environ.get("BGKIT_SYSTEMS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "systems"


def shipped_systems() -> list[str]:
    """Names of the shipped systems (sub-folders with a system.yaml)."""
    root = systems_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "system.yaml").is_file())


@dataclass(frozen=True)
class SystemSpec:
    """The contents of a ``system.yaml`` (validated)."""

    name: str
    topology: str
    forcefield: tuple[str, ...]
    temperature_K: float
    nonbonded_method: str = "NoCutoff"
    nonbonded_cutoff_nm: float | None = None
    constraints: str | None = None
    description: str = ""
    build: dict[str, Any] = field(default_factory=dict)
    md: dict[str, Any] = field(default_factory=dict)
    reference: tuple[str, ...] = ("md",)

    @classmethod
    def from_yaml(cls, path: Path) -> "SystemSpec":
        import yaml

        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise BgkitError(f"malformed {path}{where}: not valid YAML") from None
        except OSError as exc:
            raise BgkitError(f"cannot read {path}: {exc.strerror}") from None
        if not isinstance(raw, dict):
            raise BgkitError(f"malformed {path}: expected a mapping of keys to values")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "system.yaml") -> "SystemSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BgkitError(f"malformed {source}: unknown key(s) {', '.join(unknown)}")
        for key in ("name", "topology", "forcefield", "temperature_K"):
            if raw.get(key) in (None, "", []):
                raise BgkitError(f"malformed {source}: missing required key '{key}'")
        ff = raw["forcefield"]
        if isinstance(ff, str):
            ff = [ff]
        if not isinstance(ff, list) or not all(isinstance(f, str) for f in ff):
            raise BgkitError(f"malformed {source}: 'forcefield' must be a list of XML file names")
        try:
            temperature = float(raw["temperature_K"])
        except (TypeError, ValueError):
            raise BgkitError(f"malformed {source}: 'temperature_K' must be a number") from None
        if not temperature > 0:
            raise BgkitError(f"malformed {source}: 'temperature_K' must be positive")
        method = raw.get("nonbonded_method", "NoCutoff")
        if method not in NONBONDED_METHODS:
            raise BgkitError(
                f"malformed {source}: nonbonded_method '{method}' is not one of {', '.join(NONBONDED_METHODS)}"
            )
        cutoff = raw.get("nonbonded_cutoff_nm")
        if method != "NoCutoff":
            try:
                cutoff = float(cutoff)
            except (TypeError, ValueError):
                raise BgkitError(f"malformed {source}: {method} needs a numeric 'nonbonded_cutoff_nm'") from None
            if not cutoff > 0:
                raise BgkitError(f"malformed {source}: 'nonbonded_cutoff_nm' must be positive")
        elif cutoff is not None:
            raise BgkitError(f"malformed {source}: 'nonbonded_cutoff_nm' given but nonbonded_method is NoCutoff")
        constraints = raw.get("constraints")
        if constraints not in CONSTRAINTS:
            raise BgkitError(f"malformed {source}: constraints '{constraints}' is not one of null, HBonds, AllBonds, HAngles")
        build = raw.get("build") or {}
        if not isinstance(build, dict):
            raise BgkitError(f"malformed {source}: 'build' must be a mapping")
        md = raw.get("md") or {}
        if not isinstance(md, dict) or not all(k in ("friction_per_ps",) for k in md):
            raise BgkitError(f"malformed {source}: 'md' must be a mapping with optional key friction_per_ps")
        reference = raw.get("reference", ["md"])
        if isinstance(reference, str):
            reference = [reference]
        if (not isinstance(reference, list) or not reference
                or not all(isinstance(r, str) and r and not Path(r).is_absolute() and ".." not in Path(r).parts
                           for r in reference)):
            raise BgkitError(f"malformed {source}: 'reference' must be a list of dataset folders inside the system folder")
        return cls(
            md=dict(md),
            reference=tuple(reference),
            name=str(raw["name"]),
            topology=str(raw["topology"]),
            forcefield=tuple(ff),
            temperature_K=temperature,
            nonbonded_method=method,
            nonbonded_cutoff_nm=cutoff,
            constraints=constraints,
            description=str(raw.get("description", "")),
            build=dict(build),
        )


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
    def pdb_path(self) -> Path:
        return self.folder / self.spec.topology

    @cached_property
    def _pdb(self):
        from openmm import app

        path = self.pdb_path
        if not path.is_file():
            raise BgkitError(f"system '{self.name}': topology file {path} not found (run `bgkit systems build`?)")
        problem = pdb_problem(path)
        if problem is not None:
            raise BgkitError(f"system '{self.name}': unreadable PDB {path}: {problem}")
        try:
            return app.PDBFile(str(path))
        except Exception as exc:  # OpenMM raises bare Exceptions for bad PDBs
            raise BgkitError(f"system '{self.name}': unreadable PDB {path}: {one_line_error(exc)}") from None

    @property
    def openmm_topology(self):
        return self._pdb.topology

    @cached_property
    def topology(self):
        """mdtraj.Topology of the system (atom order = data order)."""
        import mdtraj

        return mdtraj.Topology.from_openmm(self.openmm_topology)

    @cached_property
    def positions(self) -> np.ndarray:
        """Reference positions from the PDB, nm, shape [N, 3] float64."""
        from openmm import unit

        return np.asarray(self._pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)

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

    def forcefield_files(self) -> list[str]:
        """Force-field XMLs, resolved: a file in the system folder, else an OpenMM bundled name."""
        files = []
        for entry in self.spec.forcefield:
            local = self.folder / entry
            files.append(str(local) if local.is_file() else entry)
        return files

    def forcefield(self):
        from openmm import app

        files = self.forcefield_files()
        try:
            return app.ForceField(*files)
        except ValueError as exc:  # "Could not locate file ..."
            raise BgkitError(f"system '{self.name}': unknown force-field file: {one_line_error(exc)}") from None
        except Exception as exc:
            raise BgkitError(f"system '{self.name}': cannot read force field {files}: {one_line_error(exc)}") from None

    def openmm_system(self):
        """A fresh ``openmm.System`` built from the force field and topology."""
        from openmm import app, unit

        kwargs: dict[str, Any] = {
            "nonbondedMethod": getattr(app, self.spec.nonbonded_method),
            "constraints": getattr(app, self.spec.constraints) if self.spec.constraints else None,
            "rigidWater": False,
            "removeCMMotion": False,
        }
        if self.spec.nonbonded_cutoff_nm is not None:
            kwargs["nonbondedCutoff"] = self.spec.nonbonded_cutoff_nm * unit.nanometer
        try:
            return self.forcefield().createSystem(self.openmm_topology, **kwargs)
        except BgkitError:
            raise
        except Exception as exc:
            raise BgkitError(f"system '{self.name}': force field does not match topology: {one_line_error(exc)}") from None

    @cached_property
    def system_xml(self) -> str:
        """The serialised OpenMM System (what energy workers deserialise)."""
        import openmm

        return openmm.XmlSerializer.serialize(self.openmm_system())

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
        """φ and ψ atom indices (mdtraj), ``{"phi": [k, 4], "psi": [k, 4]}``."""
        import mdtraj

        traj = mdtraj.Trajectory(self.positions[None].astype(np.float32), self.topology)
        phi, _ = mdtraj.compute_phi(traj)
        psi, _ = mdtraj.compute_psi(traj)
        return {"phi": np.asarray(phi), "psi": np.asarray(psi)}

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
            "forcefield": list(self.spec.forcefield),
            "nonbonded_method": self.spec.nonbonded_method,
            "nonbonded_cutoff_nm": self.spec.nonbonded_cutoff_nm,
            "constraints": self.spec.constraints,
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


def load_system(name_or_path: str | os.PathLike | System) -> System:
    """A shipped system by name, or a user system from a folder (or its system.yaml)."""
    if isinstance(name_or_path, System):
        return name_or_path
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        path = path.parent
    if path.is_dir():
        yaml_path = path / "system.yaml"
        if not yaml_path.is_file():
            raise BgkitError(f"{path} is not a system folder: it has no system.yaml")
        return System(SystemSpec.from_yaml(yaml_path), path)
    if text in shipped_systems():
        folder = systems_dir() / text
        return System(SystemSpec.from_yaml(folder / "system.yaml"), folder)
    choices = ", ".join(shipped_systems()) or "none found"
    raise BgkitError(f"unknown system '{text}': not a shipped system ({choices}) nor a folder with a system.yaml")


def one_line_error(exc: BaseException) -> str:
    """An exception as one line of at most 300 characters; an HDF5 back trace as its innermost cause."""
    text = str(exc)
    if "HDF5 error back trace" in text:
        text = _hdf5_cause(text)
    text = " ".join(text.split())
    return text[:300] if text else exc.__class__.__name__


def _hdf5_cause(text: str) -> str:
    """The innermost cause of an HDF5 back trace ("file signature not found", "truncated file: ...")."""
    trace = text.split("End of HDF5 error back trace")[0].splitlines()
    causes = [line.strip() for line in trace if line.startswith("    ") and line.strip()]
    if not causes:
        return text
    cause = causes[-1]
    if cause == "file signature not found":
        return "not an HDF5 file (file signature not found)"
    return f"corrupted HDF5 file ({cause})"


def pdb_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a PDB file (empty, no ATOM/HETATM records, not text), or None."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return exc.strerror or str(exc)
    if not data.strip():
        return "the file is empty"
    if b"\x00" in data:
        return "not a PDB file (binary data)"
    if not any(line.startswith(("ATOM  ", "HETATM")) for line in data.decode("latin-1").splitlines()):
        return "no ATOM/HETATM records (not a PDB file?)"
    return None
