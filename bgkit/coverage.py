"""Mode coverage: conformational-basin populations of reweighted draws against a reference, and lost basins.

A high ESS from a flow that has dropped a basin is no success. :func:`basin_report` compares the
reweighted (self-normalised) basin populations of draws with those of reference MD frames (block
bootstrap errors) and names every basin the draws have lost; :func:`bgkit.evaluate.ramachandran_distance`
is the histogram-level check beside it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from bgkit.systems import System

__all__ = ["basin_masks", "basin_report", "BASIN_MIN_FRACTION", "BASIN_LOSS_RATIO", "BASIN_Z"]

#: a basin holding at least this fraction of the reference frames ...
BASIN_MIN_FRACTION = 0.01
#: ... is reported lost when its reweighted population falls below this fraction of the reference's
BASIN_LOSS_RATIO = 0.1
#: a basin at under half its reference population and this many combined standard errors below it is under-weighted
BASIN_Z = 3.0


def basin_masks(xyz: np.ndarray, system: System) -> dict[str, np.ndarray]:
    """Conformational basins of frames [n, N, 3] nm (:func:`bgkit.free_energy.states.basin_masks`)."""
    from bgkit.dihedrals import labelled_torsions
    from bgkit.free_energy.states import basin_masks as masks_of_torsions

    return masks_of_torsions(*labelled_torsions(xyz, system))


def basin_report(xyz: np.ndarray, log_w: np.ndarray, reference_xyz: np.ndarray, system: System,
                 n_blocks: int = 20) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Reweighted basin populations of draws (SNIS, with standard errors) beside the reference's (block
    bootstrap over ``n_blocks`` time blocks of its frames), and a warning for every basin that holds
    ≥ :data:`BASIN_MIN_FRACTION` of the reference frames but less than :data:`BASIN_LOSS_RATIO` of that
    population in the reweighted draws (lost), or less than half of it and more than
    :data:`BASIN_Z` combined standard errors below it (under-weighted). ``z`` in the report is
    (reweighted − reference) / combined standard error.

    xyz [n, N, 3] nm with log_w [n] (−inf: zero weight); reference_xyz [m, N, 3] nm, time-ordered.
    """
    from bgkit.free_energy.populations import basin_populations
    from bgkit.reweight import snis_mean

    ok = np.isfinite(log_w)
    mine = basin_masks(xyz[ok], system)
    ref = basin_populations(basin_masks(reference_xyz, system), n_blocks=min(n_blocks, len(reference_xyz)), seed=0)
    report, warnings = {}, []
    for name, mask in mine.items():
        p, err = snis_mean(mask.astype(np.float64), log_w[ok])
        r = ref[name]
        combined = float(np.hypot(err, r.stderr))
        z = (p - r.fraction) / combined if combined > 0 else None
        report[name] = {"reweighted": p, "reweighted_stderr": err, "reference": r.fraction,
                        "reference_stderr": r.stderr, "proposal_unweighted": float(mask.mean()), "z": z}
        if r.fraction >= BASIN_MIN_FRACTION and p < BASIN_LOSS_RATIO * r.fraction:
            warnings.append(f"basin {name} holds {100 * r.fraction:.1f} % of the reference frames but "
                            f"{100 * p:.2f} % of the reweighted draws: the proposal has lost it")
        elif r.fraction >= BASIN_MIN_FRACTION and p < 0.5 * r.fraction and z is not None and z < -BASIN_Z:
            warnings.append(f"basin {name} holds {100 * r.fraction:.2f} ± {100 * r.stderr:.2f} % of the reference "
                            f"frames but {100 * p:.2f} ± {100 * err:.2f} % of the reweighted draws (z = {z:.1f}): "
                            "the proposal under-weights it")
    return report, warnings
