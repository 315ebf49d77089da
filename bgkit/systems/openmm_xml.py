"""The OpenMM-System source of a system: a serialised ``openmm.System`` (XML) with a topology PDB.

Nonbonded method, cutoff and constraints are those of the XML; the PDB gives the atoms (in the same
order), their bonds (residue templates and CONECT records) and the reference positions.
"""
from __future__ import annotations

from functools import cached_property
from typing import Any

from bgkit import BgkitError
from bgkit.systems.files import PdbTopology, one_line_error

__all__ = ["OpenMMSystemSource"]


class OpenMMSystemSource(PdbTopology):
    """System XML + topology PDB: ``openmm_system()`` deserialised from the checked XML."""

    @property
    def xml_path(self):
        return self.folder / self.spec.openmm_system["xml"]

    @cached_property
    def _xml_text(self) -> str:
        """The ``openmm_system.xml`` file, checked: an OpenMM System with one particle per topology atom."""
        import openmm

        name, path = self.spec.name, self.xml_path
        if not path.is_file():
            raise BgkitError(f"system '{name}': System XML {path} not found")
        try:
            text = path.read_text()
            system = openmm.XmlSerializer.deserialize(text)
        except Exception as exc:  # noqa: BLE001 - the deserialiser raises bare Exceptions
            raise BgkitError(f"system '{name}': unreadable System XML {path}: {one_line_error(exc)}") from None
        if not isinstance(system, openmm.System):
            raise BgkitError(f"system '{name}': {path} is a serialised {type(system).__name__}, not an OpenMM System")
        n, m = system.getNumParticles(), self.openmm_topology.getNumAtoms()
        if n != m:
            raise BgkitError(f"system '{name}': System XML {path} has {n} particles but topology "
                             f"{self.folder / self.spec.topology} has {m} atoms")
        return text

    def openmm_system(self) -> Any:
        """A fresh ``openmm.System`` read from the XML."""
        import openmm

        return openmm.XmlSerializer.deserialize(self._xml_text)

    @property
    def forcefield_names(self) -> list[str]:
        return [f"{self.spec.openmm_system['xml']} (OpenMM System XML)"]

    def definition_entries(self) -> list[str]:
        return [self.spec.openmm_system["xml"]]
