"""Free-energy differences between conformational states, all in kT.

* :mod:`~bgkit.free_energy.states`: states as boxes on backbone dihedrals (named, or from a YAML
  file) or masks, and which frames of a molecule lie in them;
* :mod:`~bgkit.free_energy.populations`: basin populations and ΔF by counting in unbiased MD
  (block-bootstrap errors, :mod:`bgkit.blocks`) and by reweighting a proposal (SNIS);
* :mod:`~bgkit.free_energy.estimators`: works of a map and ΔF from them (EXP, BAR);
* :mod:`~bgkit.free_energy.learned_map`: a learned map between two states of a molecule, its works,
  their estimates with block-bootstrap errors (trained by :mod:`bgkit.train.learned_map`).

``bgkit fep`` runs them all (:mod:`bgkit.fep_workflow`). Sign convention everywhere:
ΔF_AB = F_B − F_A = −ln(Z_B / Z_A).
"""
from __future__ import annotations

from bgkit.free_energy.estimators import (BAR_CAP_MARGIN, FepResult, bar_estimate, exp_estimate, forward_works,
                                          reverse_works)
from bgkit.free_energy.populations import Population, basin_populations, delta_f_counting, delta_f_reweighting
from bgkit.free_energy.states import ALA2_BASINS, ALA2_STATES, State, load_states, state_masks

__all__ = ["ALA2_BASINS", "ALA2_STATES", "BAR_CAP_MARGIN", "FepResult", "Population", "State", "bar_estimate",
           "basin_populations", "delta_f_counting", "delta_f_reweighting", "exp_estimate", "forward_works", "load_states",
           "reverse_works", "state_masks"]
