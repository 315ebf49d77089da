"""Evaluate a proposal against the system's reference MD test split: metrics and figures.

Metrics (DESIGN.md definitions): Kish ESS; E-W2 (kT) of the raw proposal and
of the resampled set against the MD test energies; T-W2 (rad) over all
backbone φ/ψ, exact OT on up to 10k vs 10k samples; NLL of the test frames
(nats per sample, density in nm^-(3N-3) on the centroid-free subspace);
samples/s of drawing + energies. "Resampled" follows the published recipe: the top
0.2 % of log-weights are dropped before resampling; the same metrics from
unclipped weights are reported beside them (``*_resampled_unclipped``): when the
largest weights sit on the proposal's high-energy tail, clipping biases the
resampled energies low. The noise floor is the same E-W2 and T-W2
between the test split and a disjoint block of MD frames of the same size (the
dataset's first frames outside the test split): how far MD is from itself, the
best a proposal can be expected to reach on this reference.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bgkit.data import Dataset
from bgkit.proposal import Proposal
from bgkit.sample import SampleResult
from bgkit.systems import System


def torsions(xyz: np.ndarray, system: System) -> np.ndarray:
    """All backbone φ and ψ (rad), [n, k]."""
    import mdtraj

    from bgkit.metrics import backbone_torsions

    return backbone_torsions(mdtraj.Trajectory(np.asarray(xyz, dtype=np.float32), system.topology))[0]


def pairs(xyz: np.ndarray, system: System) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """φ/ψ of each residue that has both: phi [n, k], psi [n, k], labels."""
    import mdtraj

    from bgkit.metrics import phi_psi_pairs

    d = phi_psi_pairs(mdtraj.Trajectory(np.asarray(xyz, dtype=np.float32), system.topology))
    labels = list(d)
    return np.stack([d[k][0] for k in labels], 1), np.stack([d[k][1] for k in labels], 1), labels


def compute_metrics(result: SampleResult, proposal: Proposal, dataset: Dataset, max_ot: int = 10000,
                    seed: int = 0) -> dict[str, Any]:
    """metrics.json content for one sample set against the dataset's test split."""
    from bgkit.metrics import energy_w2_with_counts, torsion_w2

    system = dataset.system
    test_idx = dataset.split_indices()["test"]
    test_xyz = dataset.xyz[test_idx]
    e_md = dataset.energies_kt[test_idx]
    from bgkit.reweight import resample

    idx = result.weights.indices
    idx_all = resample(result.weights.log_w, len(idx), seed=seed)  # no clipping: unbiased, noisier
    e_w2_prop, _, n_drop = energy_w2_with_counts(e_md, result.energy_kt)
    e_w2_res = energy_w2_with_counts(e_md, result.energy_kt[idx])[0]
    t_md = torsions(test_xyz, system)
    ok = np.isfinite(result.xyz).all(axis=(1, 2))
    t_prop = torsions(result.xyz[ok], system)
    t_res = torsions(result.xyz[idx], system)
    t_res_all = torsions(result.xyz[idx_all], system)
    log_q_test = proposal.log_prob(test_xyz)
    floor = noise_floor(dataset, t_md, max_ot=max_ot, seed=seed)
    return {
        "system": system.name,
        "n_samples": int(len(result.energy_kt)),
        "ess": result.weights.ess,
        "ess_fraction": result.weights.ess_fraction,
        "e_w2_proposal": e_w2_prop,
        "e_w2_resampled": e_w2_res,
        "t_w2_proposal": torsion_w2(t_md, t_prop, max_samples=max_ot, seed=seed),
        "t_w2_resampled": torsion_w2(t_md, t_res, max_samples=max_ot, seed=seed),
        "e_w2_resampled_unclipped": energy_w2_with_counts(e_md, result.energy_kt[idx_all])[0],
        "t_w2_resampled_unclipped": torsion_w2(t_md, t_res_all, max_samples=max_ot, seed=seed),
        "ess_fraction_clipped": result.weights.ess_fraction_clipped,
        "nll_test": float(-np.mean(log_q_test)),
        "samples_per_second": result.summary()["samples_per_second"],
        "n_nonfinite": result.weights.n_nonfinite,
        "n_nonfinite_energy_dropped_from_e_w2": n_drop,
        "n_wrong_chirality": int(result.wrong_chirality.sum()),
        "n_clipped": result.weights.n_clipped,
        "noise_floor": floor,
        "coords": proposal.transform.kind,
        "reference": {"dataset": str(dataset.folder), "split": "test", "frames": int(len(test_idx))},
        "units": {"e_w2": "kT", "t_w2": "rad", "nll_test": "nats per sample, nm^-(3N-3) density, centroid-free"},
    }


def noise_floor(dataset: Dataset, t_test: np.ndarray | None = None, max_ot: int = 10000,
                seed: int = 0) -> dict[str, Any] | None:
    """E-W2 (kT) and T-W2 (rad) between the test split and an equal-size disjoint block of the same MD.

    The block is the first ``n_test`` frames outside the test split (time-separated from it).
    None when the dataset holds fewer than twice the test frames.
    """
    from bgkit.metrics import energy_w2_with_counts, torsion_w2

    test_idx = dataset.split_indices()["test"]
    other = np.setdiff1d(np.arange(dataset.n_frames), test_idx)
    if len(other) < len(test_idx) or len(test_idx) == 0:
        return None
    block = other[: len(test_idx)]
    t_test = torsions(dataset.xyz[test_idx], dataset.system) if t_test is None else t_test
    t_block = torsions(dataset.xyz[block], dataset.system)
    return {"e_w2": energy_w2_with_counts(dataset.energies_kt[test_idx], dataset.energies_kt[block])[0],
            "t_w2": torsion_w2(t_test, t_block, max_samples=max_ot, seed=seed),
            "block_frames": [int(block[0]), int(block[-1]) + 1], "frames": int(len(block))}


def write_figures(result: SampleResult, dataset: Dataset, out: Path) -> list[str]:
    """Ramachandran (MD | proposal | reweighted), energy histograms, log-weight histogram."""
    from bgkit import plots

    system = dataset.system
    test_idx = dataset.split_indices()["test"]
    md_phi, md_psi, labels = pairs(dataset.xyz[test_idx], system)
    ok = np.isfinite(result.xyz).all(axis=(1, 2))
    q_phi, q_psi, _ = pairs(result.xyz[ok], system)
    w = np.exp(result.weights.log_w_clipped[ok] - np.max(result.weights.log_w_clipped[ok]))
    plots.ramachandran_panels({"reference MD": (md_phi, md_psi), "proposal": (q_phi, q_psi),
                               "reweighted": (q_phi, q_psi, w)}, out / "ramachandran.png",
                              title=f"{system.name}: Ramachandran", pair_labels=labels)
    w_all = np.exp(result.weights.log_w_clipped - np.max(result.weights.log_w_clipped))
    plots.energy_histograms({"reference MD": dataset.energies_kt[test_idx], "proposal": result.energy_kt,
                             "reweighted": (result.energy_kt, w_all)}, out / "energies.png",
                            title=f"{system.name}: energies")
    plots.log_weight_histogram(result.weights.log_w, out / "log_weights.png", title=f"{system.name}: log-weights")
    return ["ramachandran.png", "energies.png", "log_weights.png"]


def write_metrics(metrics: dict[str, Any], out: Path) -> Path:
    from bgkit.provenance import atomic_write_json, provenance

    return atomic_write_json({**metrics, "provenance": provenance(system=metrics["system"])}, out / "metrics.json")
