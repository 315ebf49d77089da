"""Reference molecular dynamics: resumable Langevin MD in parallel replicas.

Each replica runs OpenMM's LangevinMiddleIntegrator (no constraints, the
system's temperature) after energy minimisation and an equilibration period,
and writes its trajectory in chunks::

    OUT/dataset.json               provenance + settings (written first, checked on resume)
    OUT/.bgkit-output              bgkit's marker of the folders it creates (:mod:`bgkit.outputs`)
    OUT/topology.pdb               the system's topology (mdtraj: md.load(xtcs, top=...))
    OUT/rep000/chunk00000.xtc      frames of chunk 0 (positions, nm; time in ps)
    OUT/rep000/chunk00000.npy      reduced energies u/kT of the *stored* (XTC-rounded) frames, float64
    OUT/rep000/state00001.xml      OpenMM State after chunk 0 (one file: the one progress.json names)
    OUT/rep000/progress.json       {"chunks_done": k, "state": "state0000k.xml", ...}, written last

Every file is written atomically (temporary file, then rename) and
``progress.json`` -- the commit point -- only after a chunk's frames,
energies and end state exist, so a run killed at any moment resumes from its
last completed chunk and from the state that ended it; files of a chunk that
was not completed, and states it wrote, are removed on resume. The Langevin
noise of chunk k is seeded with (seed, replica, k), so a resumed run equals
an uninterrupted one. (Datasets written before this scheme keep a single
``state.xml``, which progress.json implies.)

``--out`` must be a dataset folder to resume, or a new or empty folder. A
larger ``ns`` extends every replica with new chunks (also after a last chunk
that was shorter than ``chunk_ps``); a smaller ``ns`` or fewer replicas are
refused. Replica processes die with the command (Linux ``PR_SET_PDEATHSIG``),
even when it is killed with SIGKILL, and no multiprocessing Manager is used.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bgkit import BgkitError
from bgkit.outputs import MARKER, check_writable, write_marker
from bgkit.systems import System, load_system

#: friction (1/ps) for systems whose system.yaml sets no md.friction_per_ps
DEFAULT_FRICTION = 1.0


@dataclass(frozen=True)
class MDSettings:
    """Settings of one reference-MD dataset (all replicas)."""

    system: str
    ns: float  #: production length per replica, ns
    replicas: int = 1
    seed: int = 0
    step_fs: float = 1.0
    friction_per_ps: float = 1.0
    save_every_ps: float = 1.0
    chunk_ps: float = 1000.0
    equilibrate_ps: float = 100.0
    platform: str | None = None
    #: parallel tempering: ascending temperatures (K), the first the system's; None for plain MD
    temperatures_K: list[float] | None = None

    @property
    def steps_per_frame(self) -> int:
        return int(round(self.save_every_ps * 1000.0 / self.step_fs))

    @property
    def frames_per_chunk(self) -> int:
        return int(round(self.chunk_ps / self.save_every_ps))

    @property
    def total_frames(self) -> int:
        """Frames per replica that ``ns`` asks for."""
        return int(round(self.ns * 1000.0 / self.save_every_ps))

    def chunk_frames(self, frames_done: int) -> int:
        """Frames of the next chunk of a replica that holds ``frames_done`` frames (0: complete)."""
        return max(0, min(self.frames_per_chunk, self.total_frames - frames_done))

    def validate(self) -> None:
        """Raise BgkitError naming the first bad setting (before anything is written)."""
        numbers = {"--ns": self.ns, "--step": self.step_fs, "--friction": self.friction_per_ps,
                   "--save-every": self.save_every_ps, "--chunk": self.chunk_ps, "--equilibrate": self.equilibrate_ps}
        for option, value in numbers.items():
            if not math.isfinite(value):
                raise BgkitError(f"{option} must be a finite number, got {value}")
        if not self.ns > 0:
            raise BgkitError("--ns must be positive")
        if self.replicas < 1:
            raise BgkitError("--replicas must be at least 1")
        if self.seed < 0:
            raise BgkitError(f"--seed must be >= 0, got {self.seed}")
        if self.friction_per_ps < 0:
            raise BgkitError(f"--friction must be >= 0 (1/ps), got {self.friction_per_ps}")
        if self.step_fs <= 0 or self.save_every_ps <= 0 or self.chunk_ps <= 0 or self.equilibrate_ps < 0:
            raise BgkitError("step, save interval and chunk length must be positive")
        for what, ratio in (("--save-every / --step", self.save_every_ps * 1000.0 / self.step_fs),
                            ("--ns / --save-every", self.ns * 1000.0 / self.save_every_ps),
                            ("--chunk / --save-every", self.chunk_ps / self.save_every_ps),
                            ("--equilibrate / --step", self.equilibrate_ps * 1000.0 / self.step_fs)):
            if not ratio < 1e15:
                raise BgkitError(f"{what} is {ratio:.3g}: too many steps or frames")
        if self.total_frames < 1:
            raise BgkitError(f"--ns {self.ns} is shorter than one frame (--save-every {self.save_every_ps} ps)")
        if abs(self.steps_per_frame * self.step_fs - self.save_every_ps * 1000.0) > 1e-6:
            raise BgkitError(f"--save-every {self.save_every_ps} ps is not a whole number of {self.step_fs} fs steps")
        if abs(self.frames_per_chunk * self.save_every_ps - self.chunk_ps) > 1e-6:
            raise BgkitError(f"chunk length {self.chunk_ps} ps is not a whole number of frames")
        t = self.temperatures_K
        if t is not None and not all(math.isfinite(x) for x in t):
            raise BgkitError(f"replica-exchange temperatures must be finite, got {t}")
        if t is not None and (len(t) < 2 or any(b <= a for a, b in zip(t, t[1:]))):
            raise BgkitError("replica-exchange temperatures must be at least 2 and strictly increasing")


def _atomic(path: Path, write) -> None:
    from bgkit.provenance import atomic_write

    atomic_write(path, write)


def _write_json(path: Path, obj: Any) -> None:
    from bgkit.provenance import atomic_write_json

    atomic_write_json(obj, path)


def _make_context(system, omm_system, settings: MDSettings, platform: str, seed: int):
    """A Langevin Context whose noise is seeded with ``seed`` (OpenMM reads the seed at Context creation)."""
    import openmm
    from openmm import unit

    integrator = openmm.LangevinMiddleIntegrator(system.temperature * unit.kelvin,
                                                 settings.friction_per_ps / unit.picosecond,
                                                 settings.step_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(seed)
    props = {"Threads": "1"} if platform == "CPU" else {}
    return openmm.Context(omm_system, integrator, openmm.Platform.getPlatformByName(platform), props), integrator


def _chunk_seed(seed: int, replica: int, chunk: int) -> int:
    """Positive 31-bit seed for the Langevin noise of one chunk (0 would mean 'random' to OpenMM)."""
    return int(np.random.SeedSequence([seed, replica, chunk + 1]).generate_state(1)[0] % (2**31 - 2)) + 1


def _progress(rep: Path) -> dict | None:
    """The last committed progress of a replica folder, or None before its equilibration was committed."""
    path = rep / "progress.json"
    return json.loads(path.read_text()) if path.exists() else None


def frames_held(progress: dict | None, settings: MDSettings) -> int:
    """Frames a replica's committed chunks hold (full chunks in datasets that did not record it)."""
    if progress is None:
        return 0
    return int(progress.get("frames", progress["chunks_done"] * settings.frames_per_chunk))


def _state_path(rep: Path, progress: dict) -> Path:
    """The state file the committed progress names (``state.xml`` in datasets written before names were kept)."""
    return rep / progress.get("state", "state.xml")


def _commit(rep: Path, chunks_done: int, frames: int, state_name: str, **extra: Any) -> None:
    """Record ``chunks_done`` chunks and their end state (already written) as complete, then drop older states."""
    _write_json(rep / "progress.json", {"chunks_done": chunks_done, "frames": frames, "state": state_name, **extra})
    _drop_states(rep, keep=state_name)


def _drop_states(rep: Path, keep: str | None) -> None:
    """Remove state files other than ``keep`` (older ones, or ones a killed chunk wrote before its commit)."""
    for f in list(rep.glob("state*.xml")) + list(rep.glob("exchange_state*.npz")):
        if f.name != keep:
            f.unlink()


def _clean_incomplete(rep: Path, done: int | None) -> None:
    """Remove the files of chunks that were started but not completed (and stray temporary files)."""
    for f in rep.glob("chunk*"):
        if f.name.endswith(".tmp") or done is None or int(f.stem[5:10]) >= done:
            f.unlink()
    for f in rep.glob(".*.tmp"):
        f.unlink()
    if done is None:
        _drop_states(rep, keep=None)


def _scorer(system: System, platform: str):
    """A Context that scores positions at the system's temperature."""
    import openmm

    props = {"Threads": "1"} if platform == "CPU" else {}
    return openmm.Context(openmm.XmlSerializer.deserialize(system.system_xml), openmm.VerletIntegrator(0.001),
                          openmm.Platform.getPlatformByName(platform), props)


def _write_chunk(rep: Path, k: int, system: System, xyz: np.ndarray, times: np.ndarray, scorer) -> None:
    """Write chunk ``k``: frames [n, N, 3] nm (XTC, atomically), then the reduced energies of the *stored* frames."""
    import mdtraj
    from openmm import unit

    xtc = rep / f"chunk{k:05d}.xtc"
    tmp = rep / f".chunk{k:05d}.xtc.tmp"
    with mdtraj.formats.XTCTrajectoryFile(str(tmp), "w") as fh:
        fh.write(xyz, time=times)
    os.replace(tmp, xtc)
    stored = mdtraj.load(str(xtc), top=system.topology).xyz.astype(np.float64)
    energies = np.empty(len(stored))
    for i, frame in enumerate(stored):  # score what is stored, so data and energies agree exactly
        scorer.setPositions(frame)
        energies[i] = scorer.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / system.kT
    _atomic(rep / f"chunk{k:05d}.npy", lambda fh: np.save(fh, energies))


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
    progress = _progress(rep)
    _clean_incomplete(rep, None if progress is None else progress["chunks_done"])
    return ReplicaFolder(settings, system, platform, rep, progress,
                         openmm.XmlSerializer.deserialize(system.system_xml), _scorer(system, platform))


def run_replica(folder: str, replica: int, settings_dict: dict, progress_queue=None) -> int:
    """Run (or resume) one replica to completion; returns the number of frames it holds."""
    import openmm
    from openmm import unit

    settings, system, platform, rep, progress, omm_system, scorer = open_replica(folder, replica, settings_dict)
    done = None if progress is None else progress["chunks_done"]
    parent = os.getppid()
    if done is None:  # fresh start: minimise, equilibrate (not saved)
        ctx, integrator = _make_context(system, omm_system, settings, platform, _chunk_seed(settings.seed, replica, -1))
        ctx.setPositions(system.positions)
        openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 0)
        ctx.setVelocitiesToTemperature(system.temperature * unit.kelvin, _chunk_seed(settings.seed, replica, -1))
        n_eq = int(round(settings.equilibrate_ps * 1000.0 / settings.step_fs))
        if n_eq:
            integrator.step(n_eq)
        ctx.setTime(0.0)
        ctx.setStepCount(0)
        state_xml = openmm.XmlSerializer.serialize(ctx.getState(getPositions=True, getVelocities=True))
        _atomic(rep / "state00000.xml", lambda fh: fh.write(state_xml.encode()))
        _commit(rep, 0, 0, "state00000.xml")
        done = 0
        del ctx, integrator
    else:
        state_path = _state_path(rep, progress)
        _drop_states(rep, keep=state_path.name)
        state_xml = state_path.read_text()
    frames_done = frames_held(progress, settings)
    if progress_queue is not None and frames_done:
        progress_queue.put((replica, frames_done * settings.save_every_ps / 1000.0))
    k = done
    while settings.chunk_frames(frames_done) > 0:  # the last chunk may be shorter; a larger --ns adds chunks
        # every chunk starts from the serialised state with freshly seeded noise, so an interrupted and
        # resumed run is bit-identical to an uninterrupted one
        ctx, integrator = _make_context(system, omm_system, settings, platform, _chunk_seed(settings.seed, replica, k))
        ctx.setState(openmm.XmlSerializer.deserialize(state_xml))
        n_frames = settings.chunk_frames(frames_done)
        xyz = np.empty((n_frames, system.n_atoms, 3), dtype=np.float32)
        times = np.empty(n_frames, dtype=np.float32)
        for i in range(n_frames):
            if os.getppid() != parent:  # the run was stopped: never write into a folder nobody watches
                raise SystemExit(1)
            integrator.step(settings.steps_per_frame)
            st = ctx.getState(getPositions=True)
            xyz[i] = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            times[i] = st.getTime().value_in_unit(unit.picosecond)
        if not np.isfinite(xyz).all():
            raise BgkitError(f"replica {replica}: the simulation blew up (non-finite positions) in chunk {k}")
        _write_chunk(rep, k, system, xyz, times, scorer)
        state_xml = openmm.XmlSerializer.serialize(ctx.getState(getPositions=True, getVelocities=True))
        state_name = f"state{k + 1:05d}.xml"
        _atomic(rep / state_name, lambda fh: fh.write(state_xml.encode()))
        del ctx, integrator
        frames_done += n_frames
        _commit(rep, k + 1, frames_done, state_name)
        k += 1
        if progress_queue is not None:
            progress_queue.put((replica, frames_done * settings.save_every_ps / 1000.0))
    return int(_progress(rep)["frames"])


def _check_platform(name: str) -> None:
    """BgkitError unless OpenMM has a platform called ``name``."""
    import openmm

    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name not in names:
        raise BgkitError(f"--platform {name} is not an OpenMM platform here (available: {', '.join(names)})")


def _read_meta(meta_path: Path) -> dict:
    """dataset.json of a dataset to resume (BgkitError if it is not one)."""
    try:
        meta = json.loads(meta_path.read_text())
        meta["settings"]["ns"], meta["settings"]["replicas"], meta["topology_hash"]
    except (ValueError, KeyError, TypeError):
        raise BgkitError(f"{meta_path} is corrupted or not a bgkit dataset.json") from None
    return meta


def prepare(out: Path, system: System, settings: MDSettings) -> None:
    """Create (or check, on resume) the dataset folder and its dataset.json."""
    import shutil

    from bgkit.provenance import provenance

    settings.validate()
    meta_path = out / "dataset.json"
    started = (out / MARKER).is_file()  # bgkit created the folder but was stopped before dataset.json
    if not meta_path.exists() and out.exists() and (not out.is_dir() or any(out.iterdir())) and not started:
        raise BgkitError(f"--out {out} exists and is not a bgkit dataset (no dataset.json): "
                         "choose a new or empty folder")
    check_writable(meta_path)
    if meta_path.exists():
        meta = _read_meta(meta_path)
        old = {"temperatures_K": None, **meta["settings"]}  # datasets written before replica exchange existed
        new = asdict(settings)
        for key, option in (("ns", "--ns"), ("replicas", "--replicas")):  # a run may be extended, not shortened
            if new[key] < old[key]:
                raise BgkitError(f"{out} holds a run with {key} = {old[key]}: {option} {new[key]} cannot shorten it "
                                 f"(pass {option} {old[key]} or more)")
            old.pop(key), new.pop(key)
        if old != new:
            diff = ", ".join(f"{k}: {old[k]} -> {new[k]}" for k in new if old.get(k) != new[k])
            raise BgkitError(f"{out} holds a run with other settings ({diff}); use another --out")
        if meta["topology_hash"] != system.topology_hash:
            raise BgkitError(f"{out} was simulated with a different topology than system '{system.name}'")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, "bgkit.md_dataset")  # a dataset grows and is never replaced: no file list
        meta = {}
    (out / "system").mkdir(exist_ok=True)
    for f in system.folder.iterdir():  # a frozen copy of the system definition
        if f.name == "system.yaml" or f.name == system.spec.topology:
            shutil.copy(f, out / "system" / f.name)
    for entry in system.forcefield_files():
        if os.path.isfile(entry):
            shutil.copy(entry, out / "system" / Path(entry).name)
    shutil.copy(system.pdb_path, out / "topology.pdb")
    import openmm

    meta.update({
        "kind": "bgkit.md_dataset",
        "system": system.name,
        "topology_hash": system.topology_hash,
        "n_atoms": system.n_atoms,
        "forcefield": list(system.spec.forcefield),
        "nonbonded_method": system.spec.nonbonded_method,
        "nonbonded_cutoff_nm": system.spec.nonbonded_cutoff_nm,
        "temperature_K": system.temperature,
        "kT_kJ_per_mol": system.kT,
        "integrator": "LangevinMiddleIntegrator",
        "replica_exchange": None if settings.temperatures_K is None else {
            "method": "parallel tempering (openmmtools.multistate.ParallelTemperingSampler, LangevinDynamicsMove)",
            "temperatures_K": list(settings.temperatures_K),
            "exported_temperature_K": settings.temperatures_K[0],
            "exchange_every_ps": settings.save_every_ps,
        },
        "constraints": system.spec.constraints,
        "platform": settings.platform or system.preferred_platform(),
        "settings": asdict(settings),
        "energy_unit": "kT (reduced, of the stored XTC coordinates)",
        "position_unit": "nm (XTC, precision 0.001 nm)",
        "provenance": meta.get("provenance", []) + [provenance(system=system.name, seed=settings.seed,
                                                                openmm_platforms=openmm.Platform.getNumPlatforms())],
    })
    _write_json(meta_path, meta)


def simulate(system: str | System, out: str | os.PathLike, ns: float, replicas: int = 1, seed: int = 0,
             friction_per_ps: float | None = None, save_every_ps: float = 1.0, chunk_ps: float = 1000.0,
             equilibrate_ps: float = 100.0, step_fs: float = 1.0, platform: str | None = None,
             exchange_temperatures: int = 0, t_max: float | None = None, progress: bool = True) -> int:
    """Run or resume reference MD of ``replicas`` independent replicas in parallel processes.

    With ``exchange_temperatures`` N >= 2 each replica is a parallel-tempering run
    over N temperatures geometrically spaced from the system's temperature to
    ``t_max`` (K), exchanging every frame interval, and only the system's
    temperature is exported (:mod:`bgkit.replica_exchange`).

    Returns the total number of frames stored. Re-running the same call after
    an interruption continues where it stopped; a larger ``ns`` extends it (a
    smaller one is refused). Every setting is checked before anything is written.
    """
    sys_ = load_system(system)
    temperatures = None
    if exchange_temperatures and exchange_temperatures != 1:
        from bgkit.replica_exchange import temperature_ladder

        if exchange_temperatures < 0:
            raise BgkitError("--replica-exchange must be a number of temperatures >= 2 (0: plain MD)")
        if t_max is None:
            raise BgkitError("--replica-exchange needs --t-max (the highest temperature, K)")
        temperatures = temperature_ladder(sys_.temperature, float(t_max), int(exchange_temperatures))
    elif t_max is not None:
        raise BgkitError("--t-max only applies with --replica-exchange N (N >= 2 temperatures)")
    if friction_per_ps is None:
        friction_per_ps = float(sys_.spec.md.get("friction_per_ps", DEFAULT_FRICTION))
    if platform is not None:
        _check_platform(platform)
    settings = MDSettings(system=sys_.name, ns=float(ns), replicas=int(replicas), seed=int(seed), step_fs=step_fs,
                          friction_per_ps=friction_per_ps, save_every_ps=save_every_ps, chunk_ps=chunk_ps,
                          equilibrate_ps=equilibrate_ps, platform=platform, temperatures_K=temperatures)
    out = Path(out)
    prepare(out, sys_, settings)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue() if progress else None  # no Manager: its server process would outlive a killed run
    total_ns = settings.ns * settings.replicas
    kind = "md" if temperatures is None else "exchange"
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        with ctx.Pool(min(settings.replicas, os.cpu_count() or 1), initializer=_init_worker,
                      initargs=(queue, os.getpid())) as pool:  # terminated on any exit path
            results = [pool.apply_async(_run_worker, (kind, str(out), r, asdict(settings)))
                       for r in range(settings.replicas)]
            _follow(results, queue, total_ns, settings.replicas)
            return sum(r.get() for r in results)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


#: the progress queue of a pool worker (set by :func:`_init_worker`)
_QUEUE = None


def _init_worker(queue, parent_pid: int) -> None:
    """Pool initializer: keep the progress queue, and die with the parent even if it is SIGKILLed."""
    global _QUEUE
    _QUEUE = queue
    die_with_parent(parent_pid)


def die_with_parent(parent_pid: int) -> None:
    """Make the kernel kill this process when its parent dies (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _run_worker(kind: str, folder: str, replica: int, settings_dict: dict) -> int:
    """Run one replica in a pool worker: plain MD (``kind`` "md") or parallel tempering ("exchange")."""
    if kind == "md":
        return run_replica(folder, replica, settings_dict, _QUEUE)
    from bgkit.replica_exchange import run_exchange_replica

    return run_exchange_replica(folder, replica, settings_dict, _QUEUE)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _follow(results, queue, total_ns: float, replicas: int) -> None:
    """Progress bar (ns simulated, ns/day) until every replica has finished."""
    from tqdm import tqdm

    if queue is None:
        for r in results:
            r.wait()
        return
    done = [0.0] * replicas
    base: dict[int, tuple[float, float]] = {}  # replica -> (time, ns) of its first report (a resumed run's start)
    with tqdm(total=round(total_ns, 3), unit="ns", desc="MD", dynamic_ncols=True) as bar:
        while not all(r.ready() for r in results):
            try:
                rep, ns_done = queue.get(timeout=0.5)
            except Exception:  # queue.Empty
                continue
            now = time.time()
            base.setdefault(rep, (now, ns_done))
            done[rep] = ns_done
            bar.n = round(sum(done), 3)
            rates = [(done[r] - ns0) / (now - t0) * 86400.0 for r, (t0, ns0) in base.items() if now > t0]
            rate = sum(rates) / len(rates) if rates else 0.0
            bar.set_postfix_str(f"{rate:.0f} ns/day per replica")
            bar.refresh()
        for r in results:
            if not r.successful():
                r.get()  # re-raise the replica's error
