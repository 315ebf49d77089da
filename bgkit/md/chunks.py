"""The chunk/commit protocol of a replica folder, shared by plain MD and replica exchange.

A replica folder ``OUT/repNNN`` holds::

    chunk00000.xtc      frames of chunk 0 (positions, nm; time in ps)
    chunk00000.npy      reduced energies u/kT of the *stored* (XTC-rounded) frames, float64
    state00001.xml      the end state after chunk 0 (plain MD: an OpenMM State; replica exchange:
                        exchange_state00001.npz); only the one progress.json names is kept
    progress.json       {"chunks_done": k, "frames": n, "state": "state0000k.xml", ...}, written last

Every file is written atomically (temporary file, then rename) and
``progress.json`` -- the commit point -- only after a chunk's frames,
energies and end state exist, so a run killed at any moment resumes from its
last completed chunk and from the state that ended it; files of a chunk that
was not completed, and states it wrote, are removed on resume. (Datasets
written before this scheme keep a single ``state.xml``, which progress.json
implies.) :func:`run_chunks` is the one chunk loop; an engine supplies how
one chunk is simulated.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, NamedTuple

import numpy as np

from bgkit import BgkitError
from bgkit.md.settings import MDSettings
from bgkit.provenance import atomic_write, atomic_write_json
from bgkit.systems import System, load_system

__all__ = ["PROGRESS", "chunk_path", "state_name", "chunk_seed", "read_progress", "frames_held", "state_path",
           "commit", "commit_state", "drop_states", "clean_incomplete", "write_chunk", "ReplicaFolder",
           "open_replica", "resume_state", "Chunk", "run_chunks"]

#: the commit record of a replica folder
PROGRESS = "progress.json"

#: end-state file names after k chunks, by engine ("md": OpenMM State XML; "exchange": npz of every temperature)
_STATE_NAMES = {"md": "state{:05d}.xml", "exchange": "exchange_state{:05d}.npz"}


def chunk_path(rep: Path, k: int, suffix: str = ".xtc") -> Path:
    """File of chunk ``k`` in replica folder ``rep``: ``chunkKKKKK.xtc`` (frames) or ``.npy`` (energies)."""
    return rep / f"chunk{k:05d}{suffix}"


def state_name(kind: str, k: int) -> str:
    """Name of the end-state file after ``k`` chunks of engine ``kind`` ("md" or "exchange")."""
    return _STATE_NAMES[kind].format(k)


def chunk_seed(seed: int, replica: int, chunk: int) -> int:
    """Positive 31-bit seed for the noise of one chunk (0 would mean 'random' to OpenMM); chunk -1: equilibration."""
    return int(np.random.SeedSequence([seed, replica, chunk + 1]).generate_state(1)[0] % (2**31 - 2)) + 1


def read_progress(rep: Path) -> dict | None:
    """The last committed progress of a replica folder, or None before its equilibration was committed."""
    path = rep / PROGRESS
    return json.loads(path.read_text()) if path.exists() else None


def frames_held(progress: dict | None, settings: MDSettings) -> int:
    """Frames a replica's committed chunks hold (full chunks in datasets that did not record it)."""
    if progress is None:
        return 0
    return int(progress.get("frames", progress["chunks_done"] * settings.frames_per_chunk))


def state_path(rep: Path, progress: dict) -> Path:
    """The state file the committed progress names (``state.xml`` in datasets written before names were kept)."""
    return rep / progress.get("state", "state.xml")


def commit(rep: Path, chunks_done: int, frames: int, state: str, **extra: Any) -> None:
    """Record ``chunks_done`` chunks and their end state (already written) as complete, then drop older states."""
    atomic_write_json({"chunks_done": chunks_done, "frames": frames, "state": state, **extra}, rep / PROGRESS)
    drop_states(rep, keep=state)


def commit_state(rep: Path, chunks_done: int, frames: int, state: str, write_state: Callable[[BinaryIO], None],
                 **extra: Any) -> None:
    """Write the end state ``state`` atomically with ``write_state(file)``, then :func:`commit` it."""
    atomic_write(rep / state, write_state)
    commit(rep, chunks_done, frames, state, **extra)


def drop_states(rep: Path, keep: str | None) -> None:
    """Remove state files other than ``keep`` (older ones, or ones a killed chunk wrote before its commit)."""
    for f in list(rep.glob("state*.xml")) + list(rep.glob("exchange_state*.npz")):
        if f.name != keep:
            f.unlink()


def clean_incomplete(rep: Path, done: int | None) -> None:
    """Remove the files of chunks that were started but not completed (and stray temporary files)."""
    for f in rep.glob("chunk*"):
        if f.name.endswith(".tmp") or done is None or int(f.stem[5:10]) >= done:
            f.unlink()
    for f in rep.glob(".*.tmp"):
        f.unlink()
    if done is None:
        drop_states(rep, keep=None)


def _scorer(system: System, platform: str):
    """A Context that scores positions at the system's temperature."""
    import openmm

    props = {"Threads": "1"} if platform == "CPU" else {}
    return openmm.Context(openmm.XmlSerializer.deserialize(system.system_xml), openmm.VerletIntegrator(0.001),
                          openmm.Platform.getPlatformByName(platform), props)


def write_chunk(rep: Path, k: int, system: System, xyz: np.ndarray, times: np.ndarray, scorer) -> None:
    """Write chunk ``k``: frames [n, N, 3] nm (XTC, atomically), then the reduced energies of the *stored* frames."""
    import mdtraj
    from openmm import unit

    xtc = chunk_path(rep, k)
    tmp = rep / f".chunk{k:05d}.xtc.tmp"
    with mdtraj.formats.XTCTrajectoryFile(str(tmp), "w") as fh:
        fh.write(xyz, time=times)
    os.replace(tmp, xtc)
    stored = mdtraj.load(str(xtc), top=system.topology).xyz.astype(np.float64)
    energies = np.empty(len(stored))
    for i, frame in enumerate(stored):  # score what is stored, so data and energies agree exactly
        scorer.setPositions(frame)
        energies[i] = scorer.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / system.kT
    atomic_write(chunk_path(rep, k, ".npy"), lambda fh: np.save(fh, energies))


class ReplicaFolder(NamedTuple):
    """What a worker needs to run or resume one replica (see :func:`open_replica`)."""

    settings: MDSettings
    system: System
    platform: str
    rep: Path  #: the replica's folder, OUT/repNNN
    progress: dict | None  #: the last committed progress, None on a fresh start
    omm_system: Any  #: openmm.System
    scorer: Any  #: openmm.Context that scores frames at the system's temperature


def open_replica(folder: str, replica: int, settings_dict: dict) -> ReplicaFolder:
    """Load the frozen system of ``folder``, create ``repNNN`` and remove what an interrupted chunk left."""
    import openmm

    settings = MDSettings(**settings_dict)
    system = load_system(Path(folder) / "system")
    platform = settings.platform or system.preferred_platform()
    rep = Path(folder) / f"rep{replica:03d}"
    rep.mkdir(parents=True, exist_ok=True)
    progress = read_progress(rep)
    clean_incomplete(rep, None if progress is None else progress["chunks_done"])
    return ReplicaFolder(settings, system, platform, rep, progress,
                         openmm.XmlSerializer.deserialize(system.system_xml), _scorer(system, platform))


def resume_state(rep: Path, progress: dict) -> Path:
    """The committed end state of a resumed replica, after removing every other state file."""
    path = state_path(rep, progress)
    drop_states(rep, keep=path.name)
    return path


class Chunk(NamedTuple):
    """One simulated chunk, as an engine hands it to :func:`run_chunks`."""

    xyz: np.ndarray  #: [n, N, 3] positions, nm
    times: np.ndarray  #: [n] float32, ps
    state: str  #: file name of the end state (:func:`state_name`)
    write_state: Callable[[BinaryIO], None]  #: writes the end state into a binary file
    extra: dict  #: further fields of progress.json
    after_commit: Callable[[], None] | None = None  #: called once the chunk is committed


def run_chunks(rf: ReplicaFolder, replica: int, parent: int, run_chunk: Callable[[int, int, int, dict], Chunk],
               progress_queue=None) -> int:
    """The chunk loop of a replica whose equilibration is committed; returns the frames it holds.

    ``run_chunk(k, frames_done, n_frames, progress)`` simulates chunk ``k`` of
    ``n_frames`` frames from the committed ``progress``. The loop stops the
    process (SystemExit) when its parent ``parent`` has gone, refuses
    non-finite positions, writes the chunk and its end state, and commits.
    The last chunk may be shorter; a larger ``ns`` adds chunks.
    """
    settings, rep = rf.settings, rf.rep
    progress = read_progress(rep)
    frames_done = frames_held(progress, settings)
    if progress_queue is not None and frames_done:
        progress_queue.put((replica, frames_done * settings.save_every_ps / 1000.0))
    k = progress["chunks_done"]
    while settings.chunk_frames(frames_done) > 0:
        if os.getppid() != parent:  # the run was stopped: never write into a folder nobody watches
            raise SystemExit(1)
        n_frames = settings.chunk_frames(frames_done)
        chunk = run_chunk(k, frames_done, n_frames, progress)
        if not np.isfinite(chunk.xyz).all():
            raise BgkitError(f"replica {replica}: the simulation blew up (non-finite positions) in chunk {k}")
        write_chunk(rep, k, rf.system, chunk.xyz.astype(np.float32, copy=False), chunk.times, rf.scorer)
        frames_done += n_frames
        commit_state(rep, k + 1, frames_done, chunk.state, chunk.write_state, **chunk.extra)
        if chunk.after_commit is not None:
            chunk.after_commit()
        progress = read_progress(rep)
        k += 1
        if progress_queue is not None:
            progress_queue.put((replica, frames_done * settings.save_every_ps / 1000.0))
    return int(read_progress(rep)["frames"])
