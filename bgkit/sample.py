"""Draw samples from a proposal, score them with the system's energy and reweight.

Flow sampling (torch, main process) and energy evaluation (OpenMM worker
processes) are pipelined: the energies of one batch are computed while the
next batch is drawn. Under torchrun each rank draws its share with its own
seed and energy workers; rank 0 gathers everything (the process group is
:mod:`bgkit.distributed`'s).
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgkit import BgkitError
from bgkit.proposal import Proposal
from bgkit.chirality import check_chirality, chiral_centres, chirality_signs
from bgkit.distributed import Group, process_group
from bgkit.provenance import file_sha256
from bgkit.reweight import ReweightResult, reweight
from bgkit.systems import System, load_system


@dataclass
class SampleResult:
    xyz: np.ndarray  #: [n, N, 3] float64 nm
    log_q: np.ndarray  #: [n] log proposal density (nm coordinates)
    energy_kt: np.ndarray  #: [n] reduced energies (+inf: invalid)
    wrong_chirality: np.ndarray  #: [n] bool, samples with a mirrored chiral centre
    weights: ReweightResult
    seconds: float  #: wall time of drawing + energies
    flow_seconds: float  #: time spent waiting for the flow (sampling and log q)
    energy_seconds: float  #: time spent waiting for energies (overlaps flow time)
    n_invalid_energy: int

    def summary(self) -> dict[str, Any]:
        n = len(self.energy_kt)
        return {
            "n": n,
            "ess": self.weights.ess,
            "ess_fraction": self.weights.ess_fraction,
            "ess_fraction_clipped": self.weights.ess_fraction_clipped,
            "n_nonfinite": self.weights.n_nonfinite,
            "n_invalid_energy": self.n_invalid_energy,
            "n_wrong_chirality": int(self.wrong_chirality.sum()),
            "n_clipped": self.weights.n_clipped,
            "clip_fraction": self.weights.clip_fraction,
            "n_resampled": int(self.weights.indices.size),
            "seconds": self.seconds,
            "samples_per_second": n / self.seconds if self.seconds > 0 else float("nan"),
            "flow_seconds": self.flow_seconds,
            "energy_seconds": self.energy_seconds,
        }


LOW_ESS_FRACTION = 0.01  #: below this ESS/N, reweighted results are flagged as unreliable


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The lines ``bgkit sample`` prints for a :meth:`SampleResult.summary`."""
    s = summary
    return [
        f"samples        {s['n']}",
        f"ESS            {s['ess']:.1f}  ({s['ess_fraction']:.4f} of N; {s['ess_fraction_clipped']:.4f} after clipping)",
        f"non-finite     {s['n_nonfinite']} zero-weight samples (invalid energy {s['n_invalid_energy']}, "
        f"wrong chirality {s['n_wrong_chirality']})",
        f"clipped        {s['n_clipped']} largest log-weights ({100 * s['clip_fraction']:.2f} %)",
        f"time           {s['seconds']:.2f} s  ({s['samples_per_second']:.0f} samples/s; flow {s['flow_seconds']:.2f} s, "
        f"waiting for energies {s['energy_seconds']:.2f} s)",
    ]


def low_ess_warning(summary: dict[str, Any]) -> str | None:
    """A warning when ESS/N is below :data:`LOW_ESS_FRACTION`, else None."""
    if summary["ess_fraction"] >= LOW_ESS_FRACTION:
        return None
    return (f"ESS/N {summary['ess_fraction']:.4f} < {LOW_ESS_FRACTION}: a few samples carry the weight; "
            "reweighted averages and free energies from these samples are unreliable")


def check_sizes(n: int, batch_size: int, n_atoms: int | None = None, out: str | Path | None = None,
                option: str = "--n") -> None:
    """Raise BgkitError unless the sample count and batch size are positive and within their bounds
    (:mod:`bgkit.limits`): with ``n_atoms``, the samples must fit in the memory available (they are held in
    memory until they are weighted) and, with ``out``, their files on the disk there."""
    from bgkit.limits import MAX_BATCH, MAX_COUNT, check_disk, check_int, check_memory

    if isinstance(n, int) and not isinstance(n, bool) and n < 1:
        raise BgkitError(f"{option} must be a positive number of samples, got {n}")
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size < 1:
        raise BgkitError(f"--batch-size must be positive, got {batch_size}")
    check_int(option, n, 1, MAX_COUNT)
    check_int("--batch-size", batch_size, 1, MAX_BATCH)
    if n_atoms is not None:
        per_sample = n_atoms * 3 * 8 * 2 + n_atoms * 3 * 4 + 96  # positions (batches + joined), float32 copy, scalars
        check_memory(option, n, n * per_sample, f"{n} samples of {n_atoms} atoms")
        check_memory("--batch-size", batch_size, min(batch_size, n) * n_atoms * 3 * 8 * 64,
                     f"flow batches of {batch_size} samples")
        if out is not None:
            check_disk(option, n, n * (n_atoms * 3 * 4 + 64), out, "samples")


def load_proposal(system: System | str, model: str | Path | None = None, device: str = "cpu") -> Proposal:
    """The proposal ``model`` (default: the system's shipped proposal.pt), checked against ``system`` (a
    ``System``; a name or folder is resolved here) and bound to it."""
    system = system if isinstance(system, System) else load_system(system)
    path = Path(model) if model is not None else system.folder / "proposal.pt"
    if model is None and not path.is_file():
        raise BgkitError(f"system '{system.name}' ships no proposal ({path} missing): pass --model")
    return Proposal.load(path, system=system, device=device)


def draw(proposal: Proposal, system: System | str | None = None, n: int = 10000, batch_size: int = 2000,
         seed: int = 0, n_workers: int | None = None, chirality: str = "drop", clip_fraction: float = 0.002,
         progress: bool = True, energy_model: Any = None) -> SampleResult | None:
    """n samples with log q, energies and importance weights (rank 0 gets the result; other ranks None).

    system: the ``System`` to weight by (a name or folder is resolved here; default: the system the proposal
    was loaded for), checked against the proposal unless the proposal was loaded for this very ``System``.
    chirality: "drop" gives samples with a mirrored chiral centre zero weight (counted);
    "keep" leaves them in (they have the same energy as their mirror image).
    energy_model: an open :class:`~bgkit.energy.EnergyModel` of ``system`` to use (and leave open), e.g.
    across the many draws of a refinement; by default one is started and closed here.
    """
    check_sizes(n, batch_size)
    if chirality not in ("drop", "keep"):
        raise BgkitError(f"chirality must be 'drop' or 'keep', got {chirality!r}")
    system = proposal.bind(system)
    with process_group() as group:
        xyz_all, log_q_all, e_all, flow_s, energy_s, n_invalid, seconds = \
            _draw_shares(proposal, system, n, batch_size, seed, n_workers, progress, energy_model, group)
    if group.rank != 0:
        return None
    quads = chiral_centres(system.topology)
    reference = chirality_signs(system.positions, quads)[0]
    wrong = ~check_chirality(xyz_all, quads, reference) if len(quads) else np.zeros(len(e_all), dtype=bool)
    e_for_weights = np.where(wrong, np.inf, e_all) if chirality == "drop" else e_all
    weights = reweight(e_for_weights, log_q_all, clip_fraction=clip_fraction, seed=seed)
    return SampleResult(xyz_all, log_q_all, e_all, wrong, weights, seconds, flow_s, energy_s, n_invalid)


def _draw_shares(proposal: Proposal, system: System, n: int, batch_size: int, seed: int, n_workers: int | None,
                 progress: bool, energy_model: Any, group: Group) -> tuple:
    """This rank's share of the n draws, scored; on rank 0 every rank's, joined (rank order): (xyz, log q,
    energies, flow s, energy s, invalid count, wall s); other ranks get their own share back."""
    from contextlib import nullcontext

    from tqdm import tqdm

    from bgkit.energy import EnergyModel

    rank, world = group.rank, group.world
    share = n // world + (1 if rank < n % world else 0)
    generator = torch.Generator(device=proposal.device).manual_seed(int(seed) * 1000003 + rank)
    workers = n_workers or max(1, (os.cpu_count() or 1) // world)
    xyz, log_q, energies = [], [], []
    flow_s = energy_s = 0.0
    t0 = time.perf_counter()
    n_invalid = 0
    own_model = energy_model is None
    sizes = [min(batch_size, share - i) for i in range(0, share, batch_size)]
    with EnergyModel(system, n_workers=workers) if own_model else nullcontext(energy_model) as model, \
            _flow_threads(proposal) as (pool, depth):
        flows: deque = deque()  # (batch size, Future of (x, log q)), in draw order, at most `depth`
        scored: deque = deque()  # Futures of EnergyBatch, in draw order, at most 2

        def collect() -> None:
            nonlocal energy_s, n_invalid
            t = time.perf_counter()
            batch = scored.popleft().result()
            energy_s += time.perf_counter() - t
            energies.append(batch.energy_kt)
            n_invalid += batch.n_invalid

        def score_oldest() -> None:
            nonlocal flow_s
            b, fut = flows.popleft()
            t = time.perf_counter()
            x, lq = fut.result()
            flow_s += time.perf_counter() - t
            if len(scored) >= 2:
                collect()
            scored.append(model.submit(x))
            xyz.append(x)
            log_q.append(lq)
            bar.update(b)

        bar = tqdm(total=share, unit="samples", desc="sample", disable=not progress or rank != 0, dynamic_ncols=True)
        for b in sizes:
            # prior draws in order from the one generator: the same samples for any number of flow threads
            flows.append((b, pool.submit(proposal.from_prior, proposal.prior_sample(b, generator))))
            if len(flows) >= depth:
                score_oldest()
        while flows:
            score_oldest()
        while scored:
            collect()
        bar.close()
    seconds = time.perf_counter() - t0
    local = (np.concatenate(xyz), np.concatenate(log_q), np.concatenate(energies), flow_s, energy_s, n_invalid, seconds)
    if not group.active:
        return local
    import torch.distributed as dist

    gathered = [None] * world if rank == 0 else None
    dist.gather_object(local, gathered, dst=0)
    if rank != 0:
        return local
    return (np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered]),
            np.concatenate([g[2] for g in gathered]), sum(g[3] for g in gathered), sum(g[4] for g in gathered),
            sum(g[5] for g in gathered), max(g[6] for g in gathered))


@contextmanager
def _flow_threads(proposal: Proposal):
    """(pool, depth): threads that push prior draws through the flow, and how many batches to keep in flight. On CPU, one per torch thread, each running torch with one
    intra-op thread: independent batches in parallel keep both cores busy while an energy worker takes its
    share, where one batch on two intra-op threads stalls whenever a worker preempts one of them."""
    threads = torch.get_num_threads() if proposal.device.type == "cpu" else 1
    if threads == 1:
        with ThreadPoolExecutor(1, thread_name_prefix="bgkit-flow") as pool:
            yield pool, 1
        return
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="bgkit-flow") as pool:
            yield pool, threads
    finally:
        torch.set_num_threads(threads)


def write_sample_folder(result: SampleResult, system: System, out: str | Path, force: bool = False,
                        extra: dict[str, Any] | None = None, kind: str = "bgkit.samples",
                        more_files: tuple[str, ...] = ()) -> Path:
    """Write samples.h5, weights.npz and summary.json into ``out`` (complete or not at all).

    An existing ``out`` is replaced only with ``force`` and only if bgkit wrote it
    (:mod:`bgkit.outputs`). The folder's ``.bgkit-output`` marker lists the files
    written here and ``more_files``, the names the caller will add (e.g. metrics.json).
    """
    import mdtraj

    from bgkit.outputs import check_output_folder, write_output_folder
    from bgkit.provenance import dumps_json, provenance

    out = Path(os.path.abspath(out))
    check_output_folder(out, force)

    def write(tmp: Path) -> list[str]:
        mdtraj.Trajectory(result.xyz.astype(np.float32), system.topology).save_hdf5(str(tmp / "samples.h5"))
        np.savez(tmp / "weights.npz", log_q=result.log_q, energy_kt=result.energy_kt, log_w=result.weights.log_w,
                 log_w_clipped=result.weights.log_w_clipped, resampled=result.weights.indices,
                 wrong_chirality=result.wrong_chirality)
        summary = {**result.summary(), "system": system.name, "system_folder": str(Path(system.folder).resolve()),
                   "topology_hash": system.topology_hash,
                   "units": {"energy_kt": "kT (reduced)", "log_q": "log density in nm^-(3N-3), centroid-free",
                             "positions": "nm"},
                   **(extra or {}), "provenance": provenance(system=system.name),
                   "sha256": {name: file_sha256(tmp / name) for name in ("samples.h5", "weights.npz")}}
        (tmp / "summary.json").write_text(dumps_json(summary) + "\n")
        return ["samples.h5", "weights.npz", "summary.json", *more_files]

    return write_output_folder(out, kind, write, force)


def sample_folder_system(summary: dict[str, Any]) -> System:
    """The system of a sample folder's summary: its recorded system folder where that still holds the same
    topology, else the system of its name (folders written before the folder was recorded)."""
    folder = summary.get("system_folder")
    if folder and (Path(folder) / "system.yaml").is_file():
        system = load_system(folder)
        if system.topology_hash == summary.get("topology_hash", system.topology_hash):
            return system
    return load_system(summary["system"])


def load_sample_folder(folder: str | Path) -> dict[str, Any]:
    """Arrays and summary of a folder written by ``bgkit sample``."""
    folder = Path(folder)
    for name in ("weights.npz", "summary.json", "samples.h5"):
        if not (folder / name).is_file():
            raise BgkitError(f"{folder} is not a bgkit sample folder: {name} missing")
    from bgkit.io import verify_zip

    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise BgkitError(f"sample folder file {folder / 'summary.json'} is damaged ({type(exc).__name__}: {exc})") \
            from None
    sums = summary.get("sha256") if isinstance(summary, dict) else None
    for name, want in (sums.items() if isinstance(sums, dict) else ()):
        if (folder / name).is_file() and file_sha256(folder / name) != want:
            raise BgkitError(f"sample folder file {folder / name} is damaged (its SHA-256 does not match "
                             "summary.json): draw the samples again")
    verify_zip(folder / "weights.npz", "sample weights file")
    with np.load(folder / "weights.npz") as z:
        data = {k: z[k] for k in z.files}
    data["summary"] = summary
    data["samples"] = folder / "samples.h5"
    return data


