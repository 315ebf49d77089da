"""Molecular systems: a force field, a topology and a temperature.

A system lives in a folder with a ``system.yaml`` (format: :mod:`~bgkit.systems.spec`); its
Hamiltonian comes from one of three sources. The modules:

* :mod:`~bgkit.systems.spec`: ``system.yaml``, validated (:class:`SystemSpec`);
* :mod:`~bgkit.systems.system`: :class:`System` — OpenMM System, topology, positions, kT, dihedrals;
* :mod:`~bgkit.systems.forcefield`, :mod:`~bgkit.systems.amber`, :mod:`~bgkit.systems.openmm_xml`: the
  sources (force-field XMLs + PDB, AMBER prmtop + coordinates, OpenMM System XML + PDB);
* :mod:`~bgkit.systems.files`: the topology PDB, checked, and one-line errors of file readers;
* :mod:`~bgkit.systems.registry`: the shipped systems and :func:`load_system`.
"""
from __future__ import annotations

from bgkit.systems.files import one_line_error, pdb_problem
from bgkit.systems.registry import load_system, shipped_systems, systems_dir
from bgkit.systems.spec import CONSTRAINTS, IMPLICIT_SOLVENTS, NONBONDED_METHODS, SOURCES, SystemSpec
from bgkit.systems.system import MOLAR_GAS_CONSTANT, System

__all__ = ["CONSTRAINTS", "IMPLICIT_SOLVENTS", "MOLAR_GAS_CONSTANT", "NONBONDED_METHODS", "SOURCES", "System",
           "SystemSpec", "load_system", "one_line_error", "pdb_problem", "shipped_systems", "systems_dir"]
