"""Evaluate a proposal against the system's reference MD test split: metrics and figures.

The reference (:class:`Reference`) is the test split of one dataset or the joined test splits
of several datasets of the system (independent trajectories judge together, with a lower noise floor).

Metrics (definitions: docs/methods.md, "Metrics"): Kish ESS; E-W2 (kT) of the raw proposal and
of the resampled set against the MD test energies; T-W2 (rad) over all
backbone φ/ψ, exact OT on up to 10k vs 10k samples; NLL of the test frames
(nats per sample, density in nm^-(3N-3) on the centroid-free subspace);
the spread (std, nats) of the log-weight −u/kT − log q over those test frames, a pointwise measure of
the proposal's density error that, unlike the ESS, does not hinge on a few heavy samples;
samples/s of drawing + energies. "Resampled" follows the published recipe: the top
0.2 % of log-weights are dropped before resampling; the same metrics from
unclipped weights are reported beside them (``*_resampled_unclipped``): when the
largest weights sit on the proposal's high-energy tail, clipping biases the
resampled energies low. The noise floor is the same E-W2 and T-W2
between the test split and a disjoint block of MD frames of the same size (each
dataset's first frames outside its test split): how far MD is from itself, the
best a proposal can be expected to reach on this reference.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bgkit import BgkitError
from bgkit.arrays import evenly_spaced
from bgkit.dihedrals import phi_psi, torsions
from bgkit.md.dataset import Dataset
from bgkit.proposal import Proposal
from bgkit.protocols import PROTOCOLS, Protocol, protocol_ess
from bgkit.reweight import normalized_weights
from bgkit.sample import SampleResult
from bgkit.systems import System

#: metrics that ``bgkit evaluate`` prints, in order
PRINTED_METRICS = ("ess", "ess_fraction", "ess_fraction_clipped", "e_w2_proposal", "e_w2_resampled",
                   "e_w2_resampled_unclipped", "t_w2_proposal", "t_w2_resampled", "t_w2_resampled_unclipped",
                   "nll_test", "log_w_std_test", "ram_tv", "samples_per_second")
#: the figures :func:`write_figures` draws into an evaluation folder
FIGURES = ("ramachandran.png", "energies.png", "log_weights.png")
#: a reference with fewer test frames (all its datasets' test splits together) is refused: W2 and NLL of a
#: handful of correlated MD frames say nothing
MIN_TEST_FRAMES = 20


def _torsion_w2(t_ref: np.ndarray, t_model: np.ndarray, max_ot: int, seed: int) -> float | None:
    """T-W2 (rad) of two torsion sets [n, k], [m, k]; None for a molecule without backbone torsions (k = 0)."""
    from bgkit.metrics import torsion_w2

    return torsion_w2(t_ref, t_model, max_samples=max_ot, seed=seed) if t_ref.shape[1] else None


class Reference:
    """The MD frames a proposal is judged against: the test splits of one or more datasets of a system, joined.

    ``xyz`` [n, N, 3] nm and ``energies_kt`` [n] are the joined test frames, in the order the datasets are
    given. The noise-floor block is, for each dataset, its first frames outside its test split, as many
    as its test split holds (time-separated from it); ``floor_blocks`` is None when a dataset holds
    fewer than twice its test frames.
    """

    def __init__(self, datasets: Dataset | Sequence[Dataset]):
        self.datasets = [datasets] if isinstance(datasets, Dataset) else list(datasets)
        if not self.datasets:
            raise BgkitError("a reference needs at least one dataset")
        folders = [str(Path(d.folder).resolve()) for d in self.datasets]
        if len(set(folders)) < len(folders):
            raise BgkitError(f"dataset {next(f for f in folders if folders.count(f) > 1)} is given twice")
        names = {d.system.name for d in self.datasets}
        if len(names) > 1:
            raise BgkitError(f"the reference datasets are of different systems: {', '.join(sorted(names))}")
        self.system = self.datasets[0].system
        self.test_indices = [d.split_indices()["test"] for d in self.datasets]
        n_test = sum(len(i) for i in self.test_indices)
        if n_test < MIN_TEST_FRAMES:
            where = ", ".join(f"{d.folder}: {d.n_frames} frames" for d in self.datasets)
            raise BgkitError(f"the reference has {n_test} test frame(s) ({where}; the test split is the last 10% of "
                             f"each replica): evaluation needs at least {MIN_TEST_FRAMES}, use a longer dataset")
        self.xyz = np.concatenate([d.xyz[i] for d, i in zip(self.datasets, self.test_indices)])
        self.energies_kt = np.concatenate([d.energies_kt[i] for d, i in zip(self.datasets, self.test_indices)])

    @property
    def floor_blocks(self) -> list[np.ndarray] | None:
        """Per dataset, the frame indices of its noise-floor block; None if one is too short."""
        blocks = []
        for d, test in zip(self.datasets, self.test_indices):
            other = np.setdiff1d(np.arange(d.n_frames), test)
            if len(other) < len(test) or len(test) == 0:
                return None
            blocks.append(other[: len(test)])
        return blocks

    @classmethod
    def of_system(cls, system: System) -> "Reference":
        """The system's default reference: the datasets its ``system.yaml`` names (``reference``; default ``md``)."""
        from bgkit.md.dataset import load_dataset

        missing = [f for f in system.reference_folders if not (f / "dataset.json").is_file()]
        if missing:
            raise BgkitError(f"system '{system.name}' has no reference data at {missing[0]}: simulate it "
                             "(`bgkit simulate`) or pass --data")
        return cls([load_dataset(f, system) for f in system.reference_folders])

    def record(self) -> dict[str, Any]:
        """The ``reference`` entry of metrics.json: folders, split, frames (in all and per dataset)."""
        folders = [str(d.folder) for d in self.datasets]
        return {"dataset": " + ".join(folders), "datasets": folders, "split": "test", "frames": int(len(self.xyz)),
                "frames_per_dataset": [int(len(i)) for i in self.test_indices]}


def as_reference(reference: Reference | Dataset | Sequence[Dataset]) -> Reference:
    """A :class:`Reference` as it is, or one of a dataset or of several."""
    return reference if isinstance(reference, Reference) else Reference(reference)


def compute_metrics(result: SampleResult, proposal: Proposal, reference: Reference | Dataset | Sequence[Dataset],
                    max_ot: int = 10000, seed: int = 0, nll_frames: int | None = None,
                    floor: bool = True, protocol: Protocol | None = None,
                    basin_xyz: np.ndarray | None = None) -> dict[str, Any]:
    """metrics.json content for one sample set against the reference (a :class:`Reference` or its datasets).

    ``floor``: also the MD noise floors (a property of the reference alone; False skips them, e.g. when the
    same reference judges many sample sets). ``protocol``: recorded, with its ESS/N (:func:`protocol_ess`).
    ``basin_xyz`` [m, N, 3] nm: time-ordered frames whose basin populations the reweighted ones are compared
    with (default: the reference's test frames).

    ``nll_frames``: compute the test NLL on this many evenly spaced test frames (None: all).
    """
    from bgkit.metrics import energy_w2_with_counts, nll

    ref = as_reference(reference)
    system = ref.system
    test_xyz = ref.xyz
    e_md = ref.energies_kt
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
    nll_idx = evenly_spaced(len(test_xyz), nll_frames)
    log_q_test = proposal.log_prob(test_xyz[nll_idx])
    log_w_test = -e_md[nll_idx] - log_q_test
    log_w_test = log_w_test[np.isfinite(log_w_test)]
    floor = noise_floor(ref, t_md, max_ot=max_ot, seed=seed) if floor else None
    ram = ramachandran_distance(result, ref, floor=floor is not None)
    from bgkit.coverage import basin_report

    basin_ref = ref.xyz if basin_xyz is None else basin_xyz
    basins, lost = basin_report(result.xyz, result.weights.log_w, basin_ref, system) if ram else ({}, [])
    return {
        "system": system.name,
        "n_samples": int(len(result.energy_kt)),
        "ess": result.weights.ess,
        "ess_fraction": result.weights.ess_fraction,
        "e_w2_proposal": e_w2_prop,
        "e_w2_resampled": e_w2_res,
        "t_w2_proposal": _torsion_w2(t_md, t_prop, max_ot, seed),
        "t_w2_resampled": _torsion_w2(t_md, t_res, max_ot, seed),
        "e_w2_resampled_unclipped": energy_w2_with_counts(e_md, result.energy_kt[idx_all])[0],
        "t_w2_resampled_unclipped": _torsion_w2(t_md, t_res_all, max_ot, seed),
        "ess_fraction_clipped": result.weights.ess_fraction_clipped,
        "nll_test": nll(log_q_test),
        "nll_frames": int(len(nll_idx)),
        "log_w_std_test": float(np.std(log_w_test)) if len(log_w_test) > 1 else float("nan"),
        "samples_per_second": result.summary()["samples_per_second"],
        **ram,
        "basins": basins,
        "basins_lost": lost,
        "basins_note": "reweighted (unclipped weights, SNIS error) vs the reference "
                       + ("test frames" if basin_xyz is None else "basin frames") + " (block bootstrap)",
        "protocol": asdict(protocol or PROTOCOLS["bgkit"]),
        "ess_fraction_protocol": protocol_ess(result.weights.log_w, protocol or PROTOCOLS["bgkit"]),
        "n_nonfinite": result.weights.n_nonfinite,
        "n_nonfinite_energy_dropped_from_e_w2": n_drop,
        "n_wrong_chirality": int(result.wrong_chirality.sum()),
        "n_clipped": result.weights.n_clipped,
        "noise_floor": floor,
        "coords": proposal.transform.kind,
        "reference": ref.record(),
        "units": {"e_w2": "kT", "t_w2": "rad", "nll_test": "nats per sample, nm^-(3N-3) density, centroid-free",
                  "log_w_std_test": "nats: std of -u/kT - log q over the NLL frames (0 for a perfect proposal)"},
    }


def ramachandran_distance(result: SampleResult, reference: Reference, floor: bool = True) -> dict[str, Any]:
    """Ramachandran total-variation distance (:func:`bgkit.metrics.ramachandran_tv`) of the reweighted
    proposal (clipped weights) to the reference test frames, per φ/ψ pair and their mean; with its noise
    floor (the same distance between the test frames and the noise-floor block). Empty without φ/ψ pairs."""
    from bgkit.metrics import RAMA_TV_BINS, ramachandran_tv

    system = reference.system
    md_phi, md_psi, labels = phi_psi(reference.xyz, system)
    if not labels:
        return {}
    w = np.exp(result.weights.log_w_clipped - np.max(result.weights.log_w_clipped))
    ok = np.isfinite(result.xyz).all(axis=(1, 2)) & (w > 0)
    q_phi, q_psi, _ = phi_psi(result.xyz[ok], system)
    per_pair = {lab: ramachandran_tv(q_phi[:, k], q_psi[:, k], md_phi[:, k], md_psi[:, k], weights_a=w[ok])
                for k, lab in enumerate(labels)}
    out: dict[str, Any] = {"ram_tv": float(np.mean(list(per_pair.values()))), "ram_tv_per_pair": per_pair,
                           "ram_tv_bins": f"{RAMA_TV_BINS} x {RAMA_TV_BINS} (10 degrees), clipped weights",
                           "ram_tv_noise_floor": None}
    blocks = reference.floor_blocks if floor else None
    if blocks is not None:
        xyz = np.concatenate([d.xyz[b] for d, b in zip(reference.datasets, blocks)])
        b_phi, b_psi, _ = phi_psi(xyz, system)
        out["ram_tv_noise_floor"] = float(np.mean([ramachandran_tv(b_phi[:, k], b_psi[:, k], md_phi[:, k], md_psi[:, k])
                                                   for k in range(len(labels))]))
    return out


def noise_floor(reference: Reference | Dataset, t_test: np.ndarray | None = None, max_ot: int = 10000,
                seed: int = 0) -> dict[str, Any] | None:
    """E-W2 (kT) and T-W2 (rad) between the reference's test frames and its equal-size noise-floor block.

    ``block_frames``: per dataset, the [first, last + 1) frame range of its block.
    None when a dataset holds fewer than twice its test frames.
    """
    from bgkit.metrics import energy_w2_with_counts

    ref = as_reference(reference)
    blocks = ref.floor_blocks
    if blocks is None:
        return None
    xyz = np.concatenate([d.xyz[b] for d, b in zip(ref.datasets, blocks)])
    e_block = np.concatenate([d.energies_kt[b] for d, b in zip(ref.datasets, blocks)])
    t_test = torsions(ref.xyz, ref.system) if t_test is None else t_test
    return {"e_w2": energy_w2_with_counts(ref.energies_kt, e_block)[0],
            "t_w2": _torsion_w2(t_test, torsions(xyz, ref.system), max_ot, seed),
            "block_frames": [[int(b[0]), int(b[-1]) + 1] for b in blocks], "frames": int(len(xyz))}


def write_figures(result: SampleResult, reference: Reference, out: Path) -> list[str]:
    """Ramachandran (MD | proposal | reweighted), energy histograms, log-weight histogram."""
    from bgkit import plots

    system = reference.system
    md_phi, md_psi, labels = phi_psi(reference.xyz, system)
    ok = np.isfinite(result.xyz).all(axis=(1, 2))
    q_phi, q_psi, _ = phi_psi(result.xyz[ok], system)
    w = normalized_weights(result.weights.log_w_clipped[ok])
    written = list(FIGURES)
    if labels:
        plots.ramachandran_panels({"reference MD": (md_phi, md_psi), "proposal": (q_phi, q_psi),
                                   "reweighted": (q_phi, q_psi, w)}, out / "ramachandran.png",
                                  title=f"{system.name}: Ramachandran", pair_labels=labels)
    else:  # no backbone φ/ψ: no Ramachandran plot
        written.remove("ramachandran.png")
    w_all = normalized_weights(result.weights.log_w_clipped)
    plots.energy_histograms({"reference MD": reference.energies_kt, "proposal": result.energy_kt,
                             "reweighted": (result.energy_kt, w_all)}, out / "energies.png",
                            title=f"{system.name}: energies")
    plots.log_weight_histogram(result.weights.log_w, out / "log_weights.png", title=f"{system.name}: log-weights")
    return written


def write_metrics(metrics: dict[str, Any], out: Path) -> Path:
    from bgkit.provenance import atomic_write_json, provenance

    return atomic_write_json({**metrics, "provenance": provenance(system=metrics["system"])}, out / "metrics.json")


def write_evaluation(result: SampleResult, proposal: Proposal, reference: Reference | Dataset | Sequence[Dataset],
                     system: System, out: str | Path, force: bool = False, seed: int = 0,
                     nll_frames: int | None = None, protocol: Protocol | None = None) -> dict[str, Any]:
    """Metrics, samples (``bgkit.sample.write_sample_folder``), metrics.json and figures into ``out``; the metrics."""
    from bgkit.outputs import add_to_marker
    from bgkit.sample import write_sample_folder

    ref = as_reference(reference)
    metrics = compute_metrics(result, proposal, ref, seed=seed, nll_frames=nll_frames, protocol=protocol)
    out = write_sample_folder(result, system, out, force, extra={"model": str(proposal.path), "seed": seed},
                              kind="bgkit.evaluation", more_files=("metrics.json", *FIGURES))
    write_metrics(metrics, out)
    add_to_marker(out, ["metrics.json", *write_figures(result, ref, out)])
    return metrics


def metrics_lines(metrics: dict[str, Any]) -> list[str]:
    """The lines ``bgkit evaluate`` prints for a metrics dict (:data:`PRINTED_METRICS`, then the noise floor)."""
    lines = [f"{key:20s} {metrics[key]:.4f}" for key in PRINTED_METRICS if metrics.get(key) is not None]
    if metrics.get("protocol", {}).get("name", "bgkit") != "bgkit":
        p = metrics["protocol"]
        lines.append(f"{'ESS/N, protocol':20s} {metrics['ess_fraction_protocol']:.4f}  ({p['name']}: {p['description']})")
    if metrics.get("basins"):
        lines.append(f"{'basins (reweighted)':20s} " + ", ".join(
            f"{k} {b['reweighted']:.4f} ± {b['reweighted_stderr']:.4f} (ref {b['reference']:.4f})"
            for k, b in metrics["basins"].items()))
    for lost in metrics.get("basins_lost") or []:
        lines.append(f"warning: {lost}")
    if metrics.get("noise_floor"):
        f = metrics["noise_floor"]
        t_w2 = "n/a" if f["t_w2"] is None else f"{f['t_w2']:.4f}"
        lines.append(f"{'noise floor':20s} E-W2 {f['e_w2']:.4f} kT, T-W2 {t_w2} rad"
                     + (f", Ram-TV {metrics['ram_tv_noise_floor']:.4f}" if metrics.get("ram_tv_noise_floor") is not None
                        else "") + f" (MD test split vs {f['frames']} other MD frames)")
    return lines


def positions_of(source: str | Path, reweighted: bool = False) -> tuple[np.ndarray, System, np.ndarray | None, str]:
    """(xyz, system, normalised weights or None, label) of a dataset (name or folder) or a sample folder.

    Sample folder positions are checked against the system's topology; ``reweighted`` gives
    them their clipped importance weights.
    """
    from bgkit.io import load_trajectory
    from bgkit.md.dataset import load_dataset
    from bgkit.sample import load_sample_folder, sample_folder_system

    path = Path(source)
    if (path / "summary.json").is_file():
        d = load_sample_folder(path)
        system = sample_folder_system(d["summary"])
        xyz = load_trajectory(d["samples"], system)  # topology checked against the system
        if reweighted:
            return xyz, system, normalized_weights(d["log_w_clipped"]), "reweighted"
        return xyz, system, None, "proposal"
    ds = load_dataset(source)
    return ds.xyz, ds.system, None, "reference MD"


def energy_sets(sample_folder: str | Path) -> tuple[str, dict[str, Any]]:
    """(system name, {label: energies or (energies, weights)}) of a sample folder, for energy histograms.

    Labels: "reference MD" (the test frames of the system's default reference, when it has one), "proposal",
    "reweighted".
    """
    from bgkit.sample import load_sample_folder, sample_folder_system

    d = load_sample_folder(sample_folder)
    name = d["summary"]["system"]
    sets: dict[str, Any] = {}
    try:
        sets["reference MD"] = Reference.of_system(sample_folder_system(d["summary"])).energies_kt
    except BgkitError:
        pass
    sets["proposal"] = d["energy_kt"]
    sets["reweighted"] = (d["energy_kt"], normalized_weights(d["log_w_clipped"]))
    return name, sets
