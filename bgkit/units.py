"""Unit conversions of reported numbers: reduced energies (kT) to kcal/mol.

Inside bgkit every energy is reduced (u/kT); OpenMM and ``System.kT`` use kJ/mol. Reports give kcal/mol
beside kT (e.g. ``bgkit fep``'s fep.json).
"""
from __future__ import annotations

__all__ = ["KJ_PER_KCAL", "kt_to_kcal_mol"]

#: kJ per kcal (thermochemical calorie)
KJ_PER_KCAL = 4.184


def kt_to_kcal_mol(value_kt: float, kt_kj_mol: float) -> float:
    """``value_kt`` (in units of kT) in kcal/mol, kT being ``kt_kj_mol`` kJ/mol (``System.kT``)."""
    return value_kt * kt_kj_mol / KJ_PER_KCAL
