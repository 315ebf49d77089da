"""The contents of a ``system.yaml``, validated: :class:`SystemSpec`.

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

Both give the same :class:`~bgkit.systems.system.System` as a force-field system, so every command
works on them unchanged; each source is read by its own module (:mod:`~bgkit.systems.forcefield`,
:mod:`~bgkit.systems.amber`, :mod:`~bgkit.systems.openmm_xml`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgkit import BgkitError

__all__ = ["CONSTRAINTS", "IMPLICIT_SOLVENTS", "NONBONDED_METHODS", "SOURCES", "SystemSpec"]

NONBONDED_METHODS = ("NoCutoff", "CutoffNonPeriodic")
CONSTRAINTS = (None, "HBonds", "AllBonds", "HAngles")
#: implicit-solvent models of ``amber.implicit_solvent`` (OpenMM ``app`` names)
IMPLICIT_SOLVENTS = ("OBC1", "OBC2", "HCT", "GBn", "GBn2")
#: the keys of system.yaml that say where the Hamiltonian comes from (exactly one is given)
SOURCES = ("forcefield", "amber", "openmm_system")
_AMBER_KEYS = ("prmtop", "coordinates", "implicit_solvent", "implicit_solvent_salt_molar", "solute_dielectric",
               "solvent_dielectric")


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
