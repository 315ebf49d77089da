"""Free-energy differences between conformational states, all in kT.

* :mod:`~bgkit.free_energy.states`: states as boxes on backbone dihedrals (named, or from a YAML
  file) or masks, basin populations;
* :mod:`~bgkit.free_energy.estimates`: ΔF by counting in unbiased MD (block bootstrap)
  and by reweighting a proposal (SNIS);
* :mod:`~bgkit.free_energy.fep`: targeted free-energy perturbation from works (EXP, BAR);
* :mod:`~bgkit.free_energy.tfep`: a learned map between two states on molecules, its works, block-bootstrap errors.

Sign convention everywhere: ΔF_AB = F_B − F_A = −ln(Z_B / Z_A).
"""
from __future__ import annotations

from bgkit.free_energy.estimates import delta_f_counting, delta_f_reweighting
from bgkit.free_energy.fep import BAR_CAP_MARGIN, FepResult, bar_estimate, exp_estimate, forward_works, reverse_works
from bgkit.free_energy.states import (ALA2_BASINS, ALA2_STATES, Population, State, basin_populations, load_states,
                                      state_masks)

__all__ = [
    "State",
    "ALA2_BASINS",
    "ALA2_STATES",
    "load_states",
    "state_masks",
    "delta_f_counting",
    "delta_f_reweighting",
    "Population",
    "basin_populations",
    "forward_works",
    "reverse_works",
    "FepResult",
    "exp_estimate",
    "bar_estimate",
    "BAR_CAP_MARGIN",
]
