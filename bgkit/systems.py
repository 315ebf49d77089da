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
of OpenMM's bundled force fields.

Instead of ``forcefield`` + ``topology`` a system may come from the files a
scientist already has (exactly one of the three sources; docs/own_system.md):

* an AMBER parameter/topology file and its coordinates. The topology (atoms,
  residues, bonds: the bond graph of the internal coordinates) comes from the
  prmtop, so ``topology`` is not given::

    amber:
      prmtop: mol.prmtop
      coordinates: mol.inpcrd          # inpcrd / crd / rst7, or a PDB of the same atoms
      implicit_solvent: OBC1           # null (vacuum) | OBC1 | OBC2 | HCT | GBn | GBn2
      implicit_solvent_salt_molar: 0.0 # optional, mol/L
      solute_dielectric: 1.0           # optional
      solvent_dielectric: 78.5         # optional
    nonbonded_method: NoCutoff         # as above, also nonbonded_cutoff_nm, constraints
    temperature_K: 300

* a serialised OpenMM ``System`` (``openmm.XmlSerializer``) with a topology
  PDB of the same atoms in the same order (bonds from its residue templates
  and CONECT records). Nonbonded method, cutoff and constraints are those of
  the XML, so ``nonbonded_method``, ``nonbonded_cutoff_nm`` and ``constraints``
  are not given::

    openmm_system:
      xml: system.xml
    topology: mol.pdb
    temperature_K: 300

Both give the same ``System`` as a force-field system (OpenMM System,
topology, positions, kT, backbone dihedrals if any, topology hash), so every
command works on them unchanged. Constraints may be used by ``bgkit simulate``
but are refused for training (:meth:`System.check_unconstrained`). The shipped
systems are the sub-folders of the repository's ``systems/`` directory (or
``$BGKIT_SYSTEMS``); every command accepts a shipped name or the path of such a
folder.
"""
from __future__ import annotations

import hashlib
import os
import warnings
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
#: implicit-solvent models of ``amber.implicit_solvent`` (OpenMM ``app`` names)
IMPLICIT_SOLVENTS = ("OBC1", "OBC2", "HCT", "GBn", "GBn2")
#: the keys of system.yaml that say where the Hamiltonian comes from (exactly one is given)
SOURCES = ("forcefield", "amber", "openmm_system")
_AMBER_KEYS = ("prmtop", "coordinates", "implicit_solvent", "implicit_solvent_salt_molar", "solute_dielectric",
               "solvent_dielectric")


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
    topology: str | None  #: the topology PDB (None for an ``amber`` system: the prmtop is the topology)
    forcefield: tuple[str, ...]
    temperature_K: float
    nonbonded_method: str | None = "NoCutoff"  #: None for an ``openmm_system`` (the XML's own)
    nonbonded_cutoff_nm: float | None = None
    constraints: str | None = None
    description: str = ""
    build: dict[str, Any] = field(default_factory=dict)
    md: dict[str, Any] = field(default_factory=dict)
    reference: tuple[str, ...] = ("md",)
    amber: dict[str, Any] = field(default_factory=dict)  #: prmtop, coordinates, implicit_solvent, ... (validated)
    openmm_system: dict[str, Any] = field(default_factory=dict)  #: {"xml": file}

    @property
    def source(self) -> str:
        """Where the Hamiltonian comes from: "forcefield", "amber" or "openmm_system"."""
        return "amber" if self.amber else "openmm_system" if self.openmm_system else "forcefield"

    @classmethod
    def from_yaml(cls, path: Path) -> "SystemSpec":
        from bgkit.provenance import load_yaml

        raw = load_yaml(path, "system file")  # a key given twice is an error
        if not isinstance(raw, dict):
            raise BgkitError(f"malformed {path}: expected a mapping of keys to values")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "system.yaml") -> "SystemSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BgkitError(f"malformed {source}: unknown key(s) {', '.join(unknown)}")
        given = [k for k in SOURCES if raw.get(k) not in (None, "", [], {})]
        if len(given) > 1:
            raise BgkitError(f"malformed {source}: give one of {', '.join(SOURCES)}, not {' and '.join(given)}")
        kind = given[0] if given else "forcefield"
        required = {"forcefield": ("name", "topology", "forcefield", "temperature_K"),
                    "amber": ("name", "temperature_K"), "openmm_system": ("name", "topology", "temperature_K")}
        for key in required[kind]:
            if raw.get(key) in (None, "", []):
                raise BgkitError(f"malformed {source}: missing required key '{key}'"
                                 + (" (or an 'amber' or 'openmm_system' section)" if key == "forcefield" else ""))
        ff: Any = raw.get("forcefield") or []
        if isinstance(ff, str):
            ff = [ff]
        if not isinstance(ff, list) or not all(isinstance(f, str) for f in ff):
            raise BgkitError(f"malformed {source}: 'forcefield' must be a list of XML file names")
        if kind != "forcefield" and raw.get("build"):
            raise BgkitError(f"malformed {source}: 'build' makes peptide PDBs for force-field systems, not {kind} ones")
        amber = _amber_section(raw["amber"], source) if kind == "amber" else {}
        if kind == "amber" and raw.get("topology") not in (None, ""):
            raise BgkitError(f"malformed {source}: an amber system takes its topology from the prmtop; "
                             "remove 'topology'")
        omm = _openmm_system_section(raw["openmm_system"], source) if kind == "openmm_system" else {}
        if kind == "openmm_system":
            fixed = [k for k in ("nonbonded_method", "nonbonded_cutoff_nm", "constraints") if k in raw]
            if fixed:
                raise BgkitError(f"malformed {source}: {', '.join(fixed)} are fixed by the System XML; remove them")
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
            topology=None if kind == "amber" else str(raw["topology"]),
            forcefield=tuple(ff),
            temperature_K=temperature,
            nonbonded_method=None if kind == "openmm_system" else method,
            amber=amber,
            openmm_system=omm,
            nonbonded_cutoff_nm=cutoff,
            constraints=constraints,
            description=str(raw.get("description", "")),
            build=dict(build),
        )


def _file_entry(section: dict[str, Any], key: str, where: str, source: str) -> str:
    value = section.get(key)
    if value in (None, ""):
        raise BgkitError(f"malformed {source}: '{where}' needs '{key}'")
    if not isinstance(value, str):
        raise BgkitError(f"malformed {source}: '{where}.{key}' must be a file name")
    return value


def _amber_section(raw: Any, source: str) -> dict[str, Any]:
    """The validated ``amber:`` mapping (defaults filled in)."""
    if not isinstance(raw, dict):
        raise BgkitError(f"malformed {source}: 'amber' must be a mapping with keys prmtop, coordinates, implicit_solvent")
    unknown = sorted(set(raw) - set(_AMBER_KEYS))
    if unknown:
        raise BgkitError(f"malformed {source}: unknown key(s) amber.{', amber.'.join(unknown)} "
                         f"(known: {', '.join(_AMBER_KEYS)})")
    out: dict[str, Any] = {"prmtop": _file_entry(raw, "prmtop", "amber", source),
                           "coordinates": _file_entry(raw, "coordinates", "amber", source)}
    solvent = raw.get("implicit_solvent")
    if solvent is not None and solvent not in IMPLICIT_SOLVENTS:
        raise BgkitError(f"malformed {source}: amber.implicit_solvent '{solvent}' is not one of "
                         f"{', '.join(IMPLICIT_SOLVENTS)} (or null for none)")
    out["implicit_solvent"] = solvent
    for key, default, ok in (("implicit_solvent_salt_molar", 0.0, lambda v: v >= 0),
                             ("solute_dielectric", 1.0, lambda v: v > 0), ("solvent_dielectric", 78.5, lambda v: v > 0)):
        value = raw.get(key, default)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise BgkitError(f"malformed {source}: amber.{key} must be a number") from None
        if not ok(value):
            raise BgkitError(f"malformed {source}: amber.{key} must be " + ("non-negative" if default == 0 else "positive"))
        out[key] = value
    if solvent is None and out["implicit_solvent_salt_molar"] > 0:
        raise BgkitError(f"malformed {source}: amber.implicit_solvent_salt_molar needs an implicit_solvent")
    return out


def _openmm_system_section(raw: Any, source: str) -> dict[str, Any]:
    """The validated ``openmm_system:`` mapping."""
    if not isinstance(raw, dict):
        raise BgkitError(f"malformed {source}: 'openmm_system' must be a mapping with key xml")
    unknown = sorted(set(raw) - {"xml"})
    if unknown:
        raise BgkitError(f"malformed {source}: unknown key(s) openmm_system.{', openmm_system.'.join(unknown)} "
                         "(known: xml)")
    return {"xml": _file_entry(raw, "xml", "openmm_system", source)}


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

    @property
    def pdb_path(self) -> Path | None:
        """The topology PDB named in system.yaml; None for an ``amber`` system (see :meth:`write_topology_pdb`)."""
        return self.folder / self.spec.topology if self.spec.topology else None

    def _file(self, entry: str) -> Path:
        return self.folder / entry

    @cached_property
    def _pdb(self):
        from openmm import app

        path = self.pdb_path
        if path is None:
            raise BgkitError(f"system '{self.name}' has no topology PDB")
        if not path.is_file():
            hint = " (run `bgkit systems build`?)" if self.spec.build else ""
            raise BgkitError(f"system '{self.name}': topology file {path} not found{hint}")
        problem = pdb_problem(path)
        if problem is not None:
            raise BgkitError(f"system '{self.name}': unreadable PDB {path}: {problem}")
        try:
            return app.PDBFile(str(path))
        except Exception as exc:  # OpenMM raises bare Exceptions for bad PDBs
            raise BgkitError(f"system '{self.name}': unreadable PDB {path}: {one_line_error(exc)}") from None

    @cached_property
    def _prmtop(self):
        from openmm import app

        path = self._file(self.spec.amber["prmtop"])
        if not path.is_file():
            raise BgkitError(f"system '{self.name}': prmtop file {path} not found")
        try:
            prmtop = app.AmberPrmtopFile(str(path))
        except Exception as exc:  # noqa: BLE001 - the parser raises anything for a bad file
            raise BgkitError(f"system '{self.name}': unreadable prmtop {path}: {one_line_error(exc)}") from None
        if prmtop.topology.getNumAtoms() == 0:
            raise BgkitError(f"system '{self.name}': unreadable prmtop {path}: no atoms")
        return prmtop

    @cached_property
    def _amber_positions(self) -> np.ndarray:
        """Positions of the ``amber.coordinates`` file, nm [N, 3], checked against the prmtop's atoms."""
        from openmm import app, unit

        prmtop = self._prmtop
        path = self._file(self.spec.amber["coordinates"])
        what = f"system '{self.name}': coordinates {path}"
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
                    raise BgkitError(f"{what} do not match prmtop {self._file(self.spec.amber['prmtop'])}: {mismatch}")
            else:
                coords = app.AmberInpcrdFile(str(path))
            xyz = np.asarray(coords.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
        except BgkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - the readers raise anything for a bad file
            raise BgkitError(f"{what} unreadable: {one_line_error(exc)}") from None
        n = prmtop.topology.getNumAtoms()
        if xyz.shape != (n, 3):
            raise BgkitError(f"{what} hold {len(xyz)} atoms, prmtop {self._file(self.spec.amber['prmtop'])} has {n}")
        if not np.isfinite(xyz).all():
            raise BgkitError(f"{what} hold non-finite positions")
        return xyz

    @property
    def openmm_topology(self):
        return self._prmtop.topology if self.source == "amber" else self._pdb.topology

    @cached_property
    def topology(self):
        """mdtraj.Topology of the system (atom order = data order)."""
        import mdtraj

        return mdtraj.Topology.from_openmm(self.openmm_topology)

    @cached_property
    def positions(self) -> np.ndarray:
        """Reference positions from the PDB, nm, shape [N, 3] float64."""
        from openmm import unit

        if self.source == "amber":
            return self._amber_positions
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
        """A fresh ``openmm.System``: built from the force field and topology, from the prmtop, or read from the XML."""
        if self.source == "amber":
            return self._amber_system()
        if self.source == "openmm_system":
            import openmm

            return openmm.XmlSerializer.deserialize(self._xml_text)
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

    def _amber_system(self):
        from openmm import app, unit

        a = self.spec.amber
        kwargs: dict[str, Any] = {
            "nonbondedMethod": getattr(app, self.spec.nonbonded_method),
            "constraints": getattr(app, self.spec.constraints) if self.spec.constraints else None,
            "rigidWater": False,
            "removeCMMotion": False,
            "implicitSolvent": getattr(app, a["implicit_solvent"]) if a["implicit_solvent"] else None,
            "implicitSolventSaltConc": a["implicit_solvent_salt_molar"] * unit.molar,
            "temperature": self.temperature * unit.kelvin,  # only used for the Debye length of the salt
            "soluteDielectric": a["solute_dielectric"],
            "solventDielectric": a["solvent_dielectric"],
        }
        if self.spec.nonbonded_cutoff_nm is not None:
            kwargs["nonbondedCutoff"] = self.spec.nonbonded_cutoff_nm * unit.nanometer
        self.positions  # noqa: B018 - the coordinates must fit the prmtop before anything is built
        try:
            with warnings.catch_warnings():  # the prmtop's own GB radii and screening are used, as in sander
                warnings.filterwarnings("ignore", message="Non-optimal GB parameters", category=UserWarning)
                return self._prmtop.createSystem(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise BgkitError(f"system '{self.name}': cannot build a System from prmtop "
                             f"{self._file(a['prmtop'])}: {one_line_error(exc)}") from None

    @cached_property
    def _xml_text(self) -> str:
        """The ``openmm_system.xml`` file, checked: an OpenMM System with one particle per topology atom."""
        import openmm

        path = self._file(self.spec.openmm_system["xml"])
        if not path.is_file():
            raise BgkitError(f"system '{self.name}': System XML {path} not found")
        try:
            text = path.read_text()
            system = openmm.XmlSerializer.deserialize(text)
        except Exception as exc:  # noqa: BLE001 - the deserialiser raises bare Exceptions
            raise BgkitError(f"system '{self.name}': unreadable System XML {path}: {one_line_error(exc)}") from None
        if not isinstance(system, openmm.System):
            raise BgkitError(f"system '{self.name}': {path} is a serialised {type(system).__name__}, not an OpenMM System")
        n, m = system.getNumParticles(), self.n_atoms
        if n != m:
            raise BgkitError(f"system '{self.name}': System XML {path} has {n} particles but topology {self.pdb_path} "
                             f"has {m} atoms")
        return text

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
            setting = f"its System XML {self._file(self.spec.openmm_system['xml'])} has {n} constraints"
        else:
            setting = f"constraints: {self.spec.constraints} in {self.folder / 'system.yaml'}, {n} constrained bonds"
        raise BgkitError(f"system '{self.name}' cannot be used for {what}: {setting}; the flow representations "
                         "move every bond, so use a copy of the system with constraints: null "
                         "(bgkit simulate may keep them)")

    @property
    def forcefield_names(self) -> list[str]:
        """What defines the Hamiltonian, for listings: force-field XMLs, the prmtop and its solvent, or the System XML."""
        if self.source == "amber":
            a = self.spec.amber
            return [a["prmtop"], a["implicit_solvent"] or "vacuum (no implicit solvent)"]
        if self.source == "openmm_system":
            return [f"{self.spec.openmm_system['xml']} (OpenMM System XML)"]
        return list(self.spec.forcefield)

    def definition_files(self) -> list[Path]:
        """The files of the system folder that define the system (system.yaml first), for frozen copies.

        Force-field entries that are OpenMM bundled names are not files and are not listed.
        """
        entries = [self.spec.topology] if self.spec.topology else []
        if self.source == "amber":
            entries += [self.spec.amber["prmtop"], self.spec.amber["coordinates"]]
        elif self.source == "openmm_system":
            entries.append(self.spec.openmm_system["xml"])
        else:
            entries += [e for e in self.spec.forcefield if (self.folder / e).is_file()]
        files = [self.folder / "system.yaml"] + [self._file(e) for e in entries]
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


def _atoms_mismatch(found, expected) -> str | None:
    """The first difference of atom names and residue names between two OpenMM topologies, or None."""
    if found.getNumAtoms() != expected.getNumAtoms():
        return f"{found.getNumAtoms()} atoms, the prmtop has {expected.getNumAtoms()}"
    for i, (a, b) in enumerate(zip(found.atoms(), expected.atoms())):
        if (a.name, a.residue.name) != (b.name, b.residue.name):
            return f"atom {i} is {a.name} ({a.residue.name}) there, {b.name} ({b.residue.name}) in the prmtop"
    return None


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
