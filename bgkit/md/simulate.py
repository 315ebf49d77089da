"""Reference molecular dynamics: resumable Langevin MD in parallel replicas.

Each replica runs OpenMM's LangevinMiddleIntegrator (no constraints, the
system's temperature) after energy minimisation and an equilibration period,
and writes its trajectory in chunks (the protocol of :mod:`bgkit.md.chunks`)::

    OUT/dataset.json               provenance + settings (written first, checked on resume)
    OUT/.bgkit-output              bgkit's marker of the folders it creates (:mod:`bgkit.outputs`)
    OUT/topology.pdb               the system's topology (mdtraj: md.load(xtcs, top=...))
    OUT/rep000/chunk00000.xtc      frames of chunk 0 (positions, nm; time in ps)
    OUT/rep000/chunk00000.npy      reduced energies u/kT of the *stored* (XTC-rounded) frames, float64
    OUT/rep000/state00001.xml      OpenMM State after chunk 0 (one file: the one progress.json names)
    OUT/rep000/progress.json       {"chunks_done": k, "state": "state0000k.xml", ...}, written last

A run killed at any moment resumes from its last completed chunk. The Langevin
noise of chunk k is seeded with (seed, replica, k), so a resumed run equals
an uninterrupted one.

``--out`` must be a dataset folder to resume, or a new or empty folder. A
larger ``ns`` extends every replica with new chunks (also after a last chunk
that was shorter than ``chunk_ps``); a smaller ``ns`` or fewer replicas are
refused. Replica processes die with the command (:mod:`bgkit.md.pool`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bgkit import BgkitError
from bgkit.md.dataset import HAMILTONIAN_FIELDS, hamiltonian_mismatch, hamiltonian_record
from bgkit.md.chunks import Chunk, chunk_seed, commit_state, open_replica, resume_state, run_chunks, state_name
from bgkit.md.pool import run_replicas
from bgkit.md.replica_exchange import run_exchange_replica, temperature_ladder
from bgkit.md.settings import DEFAULT_FRICTION, MDSettings
from bgkit.outputs import MARKER, check_writable, write_marker
from bgkit.provenance import atomic_write_json
from bgkit.systems import System, load_system

__all__ = ["simulate", "prepare", "run_replica"]


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


def run_replica(folder: str, replica: int, settings_dict: dict, progress_queue=None) -> int:
    """Run (or resume) one replica to completion; returns the number of frames it holds."""
    import openmm
    from openmm import unit

    rf = open_replica(folder, replica, settings_dict)
    settings, system, platform, rep, progress, omm_system, _ = rf
    parent = os.getppid()
    if progress is None:  # fresh start: minimise, equilibrate (not saved)
        ctx, integrator = _make_context(system, omm_system, settings, platform, chunk_seed(settings.seed, replica, -1))
        ctx.setPositions(system.positions)
        openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 0)
        ctx.setVelocitiesToTemperature(system.temperature * unit.kelvin, chunk_seed(settings.seed, replica, -1))
        n_eq = int(round(settings.equilibrate_ps * 1000.0 / settings.step_fs))
        if n_eq:
            integrator.step(n_eq)
        ctx.setTime(0.0)
        ctx.setStepCount(0)
        state_xml = openmm.XmlSerializer.serialize(ctx.getState(getPositions=True, getVelocities=True))
        commit_state(rep, 0, 0, state_name("md", 0), lambda fh: fh.write(state_xml.encode()))
        del ctx, integrator
    else:
        state_xml = resume_state(rep, progress).read_text()

    def run_chunk(k: int, frames_done: int, n_frames: int, committed: dict) -> Chunk:
        # every chunk starts from the serialised state with freshly seeded noise, so an interrupted and
        # resumed run is bit-identical to an uninterrupted one
        nonlocal state_xml
        ctx, integrator = _make_context(system, omm_system, settings, platform, chunk_seed(settings.seed, replica, k))
        ctx.setState(openmm.XmlSerializer.deserialize(state_xml))
        xyz = np.empty((n_frames, system.n_atoms, 3), dtype=np.float32)
        times = np.empty(n_frames, dtype=np.float32)
        for i in range(n_frames):
            if os.getppid() != parent:  # the run was stopped: never write into a folder nobody watches
                raise SystemExit(1)
            integrator.step(settings.steps_per_frame)
            st = ctx.getState(getPositions=True)
            xyz[i] = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            times[i] = st.getTime().value_in_unit(unit.picosecond)
        state_xml = openmm.XmlSerializer.serialize(ctx.getState(getPositions=True, getVelocities=True))
        end = state_xml.encode()
        return Chunk(xyz, times, state_name("md", k + 1), lambda fh: fh.write(end), {})

    return run_chunks(rf, replica, parent, run_chunk, progress_queue)


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
        problem = hamiltonian_mismatch(meta, system, out)  # a run is never extended with another Hamiltonian
        if problem:
            raise BgkitError(problem + "; use another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, "bgkit.md_dataset")  # a dataset grows and is never replaced: no file list
        meta = {}
    (out / "system").mkdir(exist_ok=True)
    for f in system.definition_files():  # a frozen copy of the system definition, relative paths kept
        try:
            rel = f.resolve().relative_to(system.folder.resolve())
        except ValueError:  # a file outside the folder: system.yaml names it by its absolute path
            continue
        (out / "system" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, out / "system" / rel)
    system.write_topology_pdb(out / "topology.pdb")
    import openmm

    hamiltonian = hamiltonian_record(system)  # forcefield ... temperature_K, system_xml (hash of the OpenMM System)
    meta.update({
        "kind": "bgkit.md_dataset",
        "system": system.name,
        "topology_hash": system.topology_hash,
        "n_atoms": system.n_atoms,
        **{k: hamiltonian[k] for k in HAMILTONIAN_FIELDS if k != "constraints"},
        "kT_kJ_per_mol": system.kT,
        "integrator": "LangevinMiddleIntegrator",
        "replica_exchange": None if settings.temperatures_K is None else {
            "method": "parallel tempering (openmmtools.multistate.ParallelTemperingSampler, LangevinDynamicsMove)",
            "temperatures_K": list(settings.temperatures_K),
            "exported_temperature_K": settings.temperatures_K[0],
            "exchange_every_ps": settings.save_every_ps,
        },
        "constraints": hamiltonian["constraints"],
        "system_xml": hamiltonian["system_xml"],
        "platform": settings.platform or system.preferred_platform(),
        "settings": asdict(settings),
        "energy_unit": "kT (reduced, of the stored XTC coordinates)",
        "position_unit": "nm (XTC, precision 0.001 nm)",
        "provenance": meta.get("provenance", []) + [provenance(system=system.name, seed=settings.seed,
                                                                openmm_platforms=openmm.Platform.getNumPlatforms())],
    })
    atomic_write_json(meta, meta_path)


def simulate(system: str | System, out: str | os.PathLike, ns: float, replicas: int = 1, seed: int = 0,
             friction_per_ps: float | None = None, save_every_ps: float = 1.0, chunk_ps: float = 1000.0,
             equilibrate_ps: float = 100.0, step_fs: float = 1.0, platform: str | None = None,
             exchange_temperatures: int = 0, t_max: float | None = None, progress: bool = True) -> int:
    """Run or resume reference MD of ``replicas`` independent replicas in parallel processes.

    With ``exchange_temperatures`` N >= 2 each replica is a parallel-tempering run
    over N temperatures geometrically spaced from the system's temperature to
    ``t_max`` (K), exchanging every frame interval, and only the system's
    temperature is exported (:mod:`bgkit.md.replica_exchange`).

    ``system``: a ``System`` (a shipped name or a system folder is resolved here). Returns the total number
    of frames stored. Re-running the same call after an interruption continues where it stopped; a larger
    ``ns`` extends it (a smaller one is refused). Every setting is checked before anything is written.
    """
    sys_ = system if isinstance(system, System) else load_system(system)
    temperatures = None
    if exchange_temperatures and exchange_temperatures != 1:
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
    settings.validate()
    from bgkit.limits import check_disk

    have = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if (out / "dataset.json").is_file() else 0
    check_disk("--ns", settings.ns, settings.total_frames * settings.replicas * (sys_.n_atoms * 12 + 16) - have, out,
               f"frames ({settings.replicas} replica(s), XTC and energies)")
    prepare(out, sys_, settings)
    worker = run_replica if temperatures is None else run_exchange_replica
    return run_replicas(worker, str(out), settings.replicas, asdict(settings), settings.ns * settings.replicas,
                        progress)
