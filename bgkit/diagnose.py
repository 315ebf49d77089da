"""Where a proposal loses its importance weight: the heaviest draws and the worst-covered MD frames.

An ESS far below 1 comes from points where the flow puts too little density (q ≪ p). Seen from the
draws, they are the draws with the largest weights w = exp(−u)/q, a few of which dominate every
reweighted average; seen from the data, they are the MD frames with the largest −u − log q, which the
flow under-covers. For each such point this module reports its share of the total weight, its reduced
energy, its conformational basin (:func:`bgkit.free_energy.states.basin_masks`), the flow
coordinates in which it lies in the tails of the training frames, and its distance to the nearest
training frame in the flow's standardised coordinates (torsions wrapped) beside the typical nearest-frame
distance of held-out MD frames. Many heavy draws in one basin point to a basin the flow under-covers (more
data there, or refinement); heavy draws far from every MD frame point to the flow's tails.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bgkit.arrays import evenly_spaced

if TYPE_CHECKING:
    from bgkit.coords import Representation
    from bgkit.proposal import Proposal
    from bgkit.sample import SampleResult
    from bgkit.systems import System

__all__ = ["coordinate_labels", "diagnose_weights", "TAIL_FRACTION"]

#: a coordinate is "in the tail" where fewer than this fraction of training frames lie beyond it
#: (non-periodic) or within ±0.1 rad of it (periodic torsions)
TAIL_FRACTION = 0.002
_PERIODIC_WINDOW = 0.1  # rad


def coordinate_labels(rep: Representation, topology: Any) -> list[str]:
    """Names of the flow coordinates: ``bond C1-N2`` / ``angle ...`` / ``torsion ...`` for internal
    coordinates (atom names and indices from the mdtraj ``topology``), ``x[i]`` otherwise."""
    zm = getattr(rep, "zmatrix", None)
    if zm is None:
        return [f"x[{i}]" for i in range(rep.dim)]
    atoms = list(topology.atoms)
    name = lambda i: f"{atoms[i].residue.name}{atoms[i].residue.index + 1}:{atoms[i].name}"  # noqa: E731
    rows = zm.rows
    out = [f"bond {name(r[0])}-{name(r[1])}" for r in rows[1:]]
    out += [f"angle {name(r[0])}-{name(r[1])}-{name(r[2])}" for r in rows[2:]]
    out += [f"torsion {name(r[0])}-{name(r[1])}-{name(r[2])}-{name(r[3])}" for r in rows[3:]]
    return out


def _flow_vectors(rep: Representation, xyz: np.ndarray) -> np.ndarray:
    import torch

    y, _ = rep.to_flow(torch.as_tensor(np.asarray(xyz, dtype=np.float64)))
    return y.numpy()


def _nearest_distance(y: np.ndarray, train: np.ndarray, periodic: tuple[int, ...]) -> np.ndarray:
    """Distance [n] of each row of y [n, D] to its nearest row of train [m, D] (periodic dims wrapped)."""
    per = np.zeros(y.shape[1], dtype=bool)
    per[list(periodic)] = True
    out = np.empty(len(y))
    for i, row in enumerate(y):
        d = np.abs(train - row)
        d[:, per] = np.minimum(d[:, per], 2 * np.pi - d[:, per])
        out[i] = np.sqrt(np.nanmin((d**2).sum(1)))
    return out


def _tails(y: np.ndarray, train: np.ndarray, periodic: tuple[int, ...], labels: list[str],
           most: int = 3) -> list[list[dict[str, Any]]]:
    """Per row of y, up to ``most`` coordinates where it lies in the tails of the training frames."""
    per = set(periodic)
    out = []
    for row in y:
        rare = []
        for d, v in enumerate(row):
            col = train[:, d]
            if d in per:
                gap = np.abs(col - v)
                frac = float(np.mean(np.minimum(gap, 2 * np.pi - gap) < _PERIODIC_WINDOW))
            else:
                frac = float(min(np.mean(col <= v), np.mean(col >= v)))
            if frac < TAIL_FRACTION:
                rare.append({"coordinate": labels[d], "training_fraction": frac, "value": float(v)})
        out.append(sorted(rare, key=lambda r: r["training_fraction"])[:most])
    return out


def _describe(xyz: np.ndarray, log_w: np.ndarray, energy: np.ndarray, share: np.ndarray, y: np.ndarray,
              train_y: np.ndarray, rep: Representation, labels: list[str], system: System,
              typical: float) -> list[dict[str, Any]]:
    from bgkit.dihedrals import labelled_torsions
    from bgkit.free_energy.states import basin_masks

    masks = basin_masks(*labelled_torsions(xyz, system))
    nearest = _nearest_distance(y, train_y, rep.periodic)
    tails = _tails(y, train_y, rep.periodic, labels)
    rows = []
    for i in range(len(xyz)):
        basin = next((name for name, m in masks.items() if m[i]), "other")
        rows.append({"weight_share": float(share[i]), "log_w": float(log_w[i]), "energy_kt": float(energy[i]),
                     "basin": basin, "nearest_md_distance": float(nearest[i]),
                     "nearest_md_ratio": float(nearest[i] / typical) if typical > 0 else None,
                     "tail_coordinates": tails[i]})
    return rows


def diagnose_weights(result: SampleResult, proposal: Proposal, system: System, train_xyz: np.ndarray,
                     test_xyz: np.ndarray, test_energy_kt: np.ndarray, top: int = 15,
                     max_train: int = 20_000, seed: int = 0) -> dict[str, Any]:
    """The ``top`` heaviest draws of ``result`` and the ``top`` MD test frames with the largest
    −u/kT − log q (the flow's worst-covered frames), described against the training frames.

    train_xyz [m, N, 3] nm: the flow's training frames (an evenly spaced subset of ``max_train`` is used);
    test_xyz [k, N, 3] nm with their reduced energies [k]. Returns a JSON-ready dict.
    """
    from bgkit.reweight import normalized_weights

    rep = proposal.transform
    labels = coordinate_labels(rep, system.topology)
    pick = evenly_spaced(len(train_xyz), max_train)
    train_y = _flow_vectors(rep, train_xyz[pick])
    train_y = train_y[np.isfinite(train_y).all(1)]
    rng = np.random.default_rng(seed)
    probe = test_xyz[rng.choice(len(test_xyz), min(200, len(test_xyz)), replace=False)]
    typical = float(np.median(_nearest_distance(_flow_vectors(rep, probe), train_y, rep.periodic)))

    w = normalized_weights(result.weights.log_w)
    heavy = np.argsort(-w)[:top]
    heavy_rows = _describe(result.xyz[heavy], result.weights.log_w[heavy], result.energy_kt[heavy], w[heavy],
                           _flow_vectors(rep, result.xyz[heavy]), train_y, rep, labels, system, typical)

    log_q = proposal.log_prob(test_xyz)
    log_w_md = -np.asarray(test_energy_kt) - log_q
    finite = np.flatnonzero(np.isfinite(log_w_md))
    worst = finite[np.argsort(-log_w_md[finite])[:top]]
    share_md = np.exp(log_w_md[worst] - np.logaddexp.reduce(log_w_md[finite]))
    md_rows = _describe(test_xyz[worst], log_w_md[worst] - np.median(log_w_md[finite]),
                        np.asarray(test_energy_kt)[worst], share_md, _flow_vectors(rep, test_xyz[worst]),
                        train_y, rep, labels, system, typical)
    basins = {}
    for r in heavy_rows:
        basins[r["basin"]] = basins.get(r["basin"], 0) + 1
    return {"n_samples": int(len(w)), "top": top, "heaviest_draws": heavy_rows,
            "heaviest_draws_weight_share": float(w[heavy].sum()), "heaviest_draws_by_basin": basins,
            "undercovered_md_frames": md_rows, "typical_nearest_md_distance": typical,
            "tail_fraction": TAIL_FRACTION,
            "notes": {"log_w of MD frames": "−u/kT − log q minus its median over the test frames (nats)",
                      "distances": "flow coordinates (standardised, torsions wrapped) to the nearest of "
                                   f"{len(train_y)} training frames; ratio to the median of held-out MD frames"}}


def diagnosis_lines(report: dict[str, Any]) -> list[str]:
    """A short printed summary of :func:`diagnose_weights`."""
    lines = [f"{report['top']} heaviest of {report['n_samples']} draws carry "
             f"{100 * report['heaviest_draws_weight_share']:.1f} % of the weight; by basin: "
             + ", ".join(f"{k} {v}" for k, v in sorted(report["heaviest_draws_by_basin"].items(), key=lambda kv: -kv[1]))]
    lines.append(f"{'share %':>8} {'u/kT':>9} {'basin':<12} {'NN ratio':>8}  tail coordinates (training fraction)")
    for title, rows in (("heaviest draws", report["heaviest_draws"]),
                        ("worst-covered MD test frames", report["undercovered_md_frames"])):
        lines.append(title + ":")
        for r in rows:
            tails = "; ".join(f"{t['coordinate']} ({t['training_fraction']:.4f})" for t in r["tail_coordinates"]) or "-"
            ratio = "n/a" if r["nearest_md_ratio"] is None else f"{r['nearest_md_ratio']:.2f}"
            lines.append(f"{100 * r['weight_share']:8.3f} {r['energy_kt']:9.2f} {r['basin']:<12} {ratio:>8}  {tails}")
    return lines
