"""Convergence check of a reference dataset: state populations in both halves of the data.

For every residue with both φ and ψ (:func:`bgkit.dihedrals.phi_psi`), the frames are assigned to
the given states — ``bgkit data check`` passes the coarse C7eq/β, α_R and α_L (φ > 0) basins of
:data:`bgkit.free_energy.states.ALA2_BASINS` —; the populations of the first and the second half of
every replica's trajectory are compared, each with a bootstrap error over contiguous time blocks
(:mod:`bgkit.blocks`). Two halves agree when they differ by less than 3 combined standard errors.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from bgkit.blocks import bootstrap_fractions, bootstrap_std, time_blocks
from bgkit.dihedrals import phi_psi
from bgkit.md.dataset import load_dataset

__all__ = ["check_dataset"]


def _halves(replica_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first, second = [], []
    for rep in np.unique(replica_index):
        idx = np.flatnonzero(replica_index == rep)
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2:])
    return np.concatenate(first), np.concatenate(second)


def _populations(masks: Mapping[str, np.ndarray], n_blocks: int = 20, n_boot: int = 1000,
                seed: int | None = None) -> dict[str, tuple[float, float]]:
    """{state: (fraction of frames, block-bootstrap standard error)} of bool masks [n] over time-ordered frames.

    The frames are cut into ``n_blocks`` contiguous blocks; every replicate resamples whole blocks, the
    same ones for every state, and takes the fraction of the frames drawn that lie in the state.
    """
    names = list(masks)
    columns = np.stack([np.asarray(masks[k], dtype=bool) for k in names], axis=1)
    replicates = bootstrap_fractions(columns, time_blocks(len(columns), n_blocks=n_blocks), n_boot, seed)
    return {k: (float(columns[:, j].mean()), bootstrap_std(replicates[:, j])) for j, k in enumerate(names)}


def _definition(states: Mapping[str, Any]) -> str:
    """The states' (φ, ψ) boxes in words, in degrees."""
    def arc(a: Any) -> str:
        return "any" if a is None else f"[{math.degrees(a[0]):g}, {math.degrees(a[1]):g})"

    boxes = "; ".join(f"{name}: phi {arc(getattr(s, 'phi', None))}, psi {arc(getattr(s, 'psi', None))}"
                      for name, s in states.items())
    return (f"boxes per residue ({boxes}; arcs counter-clockwise from lo to hi, degrees); "
            "errors: bootstrap over contiguous blocks")


def check_dataset(name_or_path: str, states: Mapping[str, Any], n_blocks: int = 20, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, Any]:
    """Report (plain data) of the populations of ``states`` per half with block-bootstrap errors.

    states: {name: state}, each with ``mask(phi [n], psi [n]) -> bool [n]`` (rad) and its (φ, ψ) arcs
    ``phi``, ``psi`` ((lo, hi) rad, None: any), as :class:`bgkit.free_energy.states.State`.
    """
    ds = load_dataset(name_or_path)
    phi, psi, labels = phi_psi(ds.xyz, ds.system)
    first, second = _halves(ds.replica_index)
    rows = []
    for k, label in enumerate(labels):
        masks = {name: s.mask(phi[:, k], psi[:, k]) for name, s in states.items()}
        halves = [_populations({b: m[idx] for b, m in masks.items()}, n_blocks=n_blocks, n_boot=n_boot, seed=seed)
                  for idx in (first, second)]
        for name in states:
            (fa, ea), (fb, eb) = halves[0][name], halves[1][name]
            err = math.hypot(ea, eb)
            rows.append({"residue": label, "basin": name, "first_half": [fa, ea], "second_half": [fb, eb],
                         "agree": bool(abs(fa - fb) <= 3 * err), "frames_in_basin": int(masks[name].sum())})
    return {"summary": ds.summary(), "n_blocks_per_half": n_blocks, "basins": rows,
            "all_agree": all(r["agree"] for r in rows), "definition": _definition(states)}
