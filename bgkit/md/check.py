"""Convergence check of a reference dataset: basin populations in both halves of the data.

For every residue with both φ and ψ, the frames are assigned to the coarse
C7eq/β, α_R and α_L (φ > 0) basins of ``bgkit.free_energy.states.ALA2_BASINS``; the
populations of the first and the second half of every replica's trajectory
are compared, each with a bootstrap error over contiguous time blocks. Two
halves agree when they differ by less than 3 combined standard errors.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from bgkit.free_energy.states import ALA2_BASINS, basin_populations, state_masks
from bgkit.md.dataset import load_dataset
from bgkit.metrics import phi_psi_pairs

__all__ = ["check_dataset"]


def _halves(replica_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first, second = [], []
    for rep in np.unique(replica_index):
        idx = np.flatnonzero(replica_index == rep)
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2:])
    return np.concatenate(first), np.concatenate(second)


def check_dataset(name_or_path: str, n_blocks: int = 20, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Report (plain data) of basin populations per half with block-bootstrap errors."""
    import mdtraj

    ds = load_dataset(name_or_path)
    angles = phi_psi_pairs(mdtraj.Trajectory(np.asarray(ds.xyz, dtype=np.float32), ds.system.topology))
    labels = list(angles)
    phi, psi = (np.stack([angles[k][i] for k in labels], 1) for i in (0, 1))
    first, second = _halves(ds.replica_index)
    rows = []
    for k, label in enumerate(labels):
        masks = state_masks(ALA2_BASINS, phi[:, k], psi[:, k])
        halves = []
        for idx in (first, second):
            pops = basin_populations({b: m[idx] for b, m in masks.items()}, n_blocks=n_blocks, n_boot=n_boot, seed=seed)
            halves.append(pops)
        for basin in ALA2_BASINS:
            a, b = halves[0][basin], halves[1][basin]
            err = math.hypot(a.stderr, b.stderr)
            rows.append({"residue": label, "basin": basin, "first_half": [a.fraction, a.stderr],
                         "second_half": [b.fraction, b.stderr], "agree": bool(abs(a.fraction - b.fraction) <= 3 * err),
                         "frames_in_basin": int(masks[basin].sum())})
    return {"summary": ds.summary(), "n_blocks_per_half": n_blocks, "basins": rows,
            "all_agree": all(r["agree"] for r in rows),
            "definition": "ALA2_BASINS boxes per residue (C7eq_beta: phi<0, psi in [50,180]u[-180,-120); "
                          "alpha_R: phi<0, psi in [-120,50); alpha_L: phi>0); errors: bootstrap over contiguous blocks"}
