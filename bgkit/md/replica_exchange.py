"""Parallel tempering (temperature replica exchange) for reference MD, through openmmtools.multistate.

One parallel-tempering run is what ``bgkit simulate --replica-exchange N`` runs
in each of its ``--replicas`` folders: N copies of the system at temperatures
geometrically spaced from the system's temperature to ``--t-max``, each
propagated with OpenMM's LangevinMiddleIntegrator (openmmtools
``LangevinDynamicsMove``) for one frame interval, then temperature swaps
accepted with the Metropolis criterion (openmmtools
``ParallelTemperingSampler``, its default "swap-all" Gibbs mixing: any pair
may swap, not only neighbours; :func:`acceptance` reports the neighbours'). Only the configurations at the lowest (the
system's) temperature are exported, in exactly the chunk format of plain MD
(see :mod:`bgkit.md.chunks`), so every dataset tool reads them unchanged::

    OUT/rep000/chunk00000.xtc       target-temperature frames (nm), one per exchange iteration
    OUT/rep000/chunk00000.npy       their reduced energies u/kT at the target temperature
    OUT/rep000/exchange_state00001.npz  positions/velocities of every temperature after chunk 0 (the one
                                        progress.json names)
    OUT/rep000/progress.json        {"chunks_done": k, "state": ..., "exchange": swap counts}, written last
    OUT/rep000/exchange.json        temperatures and swap counts (a copy for reading, after each commit)

openmmtools' own netCDF storage is scratch space for one chunk: it is created
fresh from the committed state when a chunk starts and deleted when the
chunk's files are written, so a run killed at any moment resumes from its last
completed chunk with no lost or duplicated frames. Unlike plain MD the
resumed trajectory is statistically, not bitwise, equal to an uninterrupted
one: openmmtools seeds its Langevin integrators at random.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
from pathlib import Path

import numpy as np

from bgkit import BgkitError
from bgkit.md.chunks import (Chunk, chunk_seed, commit_state, open_replica, resume_state, run_chunks, state_name,
                             state_path)
from bgkit.provenance import atomic_write_json


def temperature_ladder(t_min: float, t_max: float, n: int) -> list[float]:
    """``n`` temperatures (K) geometrically spaced from ``t_min`` to ``t_max`` (both included)."""
    if n < 2:
        raise BgkitError("replica exchange needs at least 2 temperatures")
    if not math.isfinite(t_max):
        raise BgkitError(f"--t-max must be a finite temperature (K), got {t_max}")
    if not t_max > t_min:
        raise BgkitError(f"--t-max ({t_max} K) must exceed the system's temperature ({t_min} K)")
    return [float(t) for t in np.geomspace(t_min, t_max, n)]


@contextlib.contextmanager
def _quiet():
    """openmmtools prints citations, pymbar a banner and both warnings; keep the user's terminal clean."""
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental.*")
        warnings.filterwarnings("ignore", message=".*statistical inefficiency.*")
        yield


def run_iterations(omm_system, temperatures: list[float], positions: np.ndarray, velocities: np.ndarray | None,
                   n_iterations: int, steps_per_iteration: int, friction_per_ps: float, step_fs: float,
                   platform: str, scratch: Path, seed: int) -> dict:
    """Run ``n_iterations`` parallel-tempering iterations from one configuration per temperature.

    Args:
        positions: [T, N, 3] nm, configuration at each temperature (ascending order).
        velocities: [T, N, 3] nm/ps, or None to draw them from each temperature's Maxwell-Boltzmann distribution.
        scratch: folder for openmmtools' netCDF storage (deleted afterwards).
        seed: seeds numpy's global generator, which openmmtools uses for the swap decisions.

    Returns:
        dict with ``frames`` [n_iterations, N, 3] (the configuration at the lowest
        temperature after each iteration's swaps), ``positions``/``velocities``
        [T, N, 3] after the last iteration, and ``accepted``/``proposed`` [T, T]
        swap counts.
    """
    import openmm
    from openmm import unit

    with _quiet():
        from openmmtools import cache, mcmc, multistate, states

    n_temp = len(temperatures)
    scratch.mkdir(parents=True, exist_ok=True)
    storage = scratch / "pt.nc"
    for f in scratch.glob("pt*.nc"):
        f.unlink()
    props = {"Threads": "1"} if platform == "CPU" else {}
    plat = openmm.Platform.getPlatformByName(platform)
    reference = states.ThermodynamicState(system=omm_system, temperature=temperatures[0] * unit.kelvin)
    if velocities is None:
        masses = np.array([omm_system.getParticleMass(i).value_in_unit(unit.dalton)
                           for i in range(omm_system.getNumParticles())])
        kt = np.asarray(temperatures)[:, None, None] * unit.MOLAR_GAS_CONSTANT_R.value_in_unit(
            unit.kilojoule_per_mole / unit.kelvin)  # kJ/mol
        sigma = np.sqrt(kt / np.where(masses > 0, masses, np.inf)[None, :, None])  # nm/ps
        velocities = sigma * np.random.default_rng(seed).standard_normal((n_temp, len(masses), 3))
    sampler_states = []
    for i in range(n_temp):
        sampler_states.append(states.SamplerState(positions[i] * unit.nanometer,
                                                  velocities=velocities[i] * unit.nanometer / unit.picosecond))
    move = mcmc.LangevinDynamicsMove(timestep=step_fs * unit.femtosecond, collision_rate=friction_per_ps / unit.picosecond,
                                     n_steps=steps_per_iteration, reassign_velocities=False)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with _quiet():
            sampler = multistate.ParallelTemperingSampler(mcmc_moves=move, number_of_iterations=n_iterations)
            sampler.energy_context_cache = cache.ContextCache(capacity=None, time_to_live=None, platform=plat,
                                                              platform_properties=props)
            sampler.sampler_context_cache = cache.ContextCache(capacity=None, time_to_live=None, platform=plat,
                                                               platform_properties=props)
            reporter = multistate.MultiStateReporter(str(storage), checkpoint_interval=1)
            # openmmtools 0.27 needs n_temperatures even when the list is given
            sampler.create(reference, sampler_states, reporter, temperatures=[t * unit.kelvin for t in temperatures],
                           n_temperatures=n_temp)
            sampler.run()
            reporter.close()
            reader = multistate.MultiStateReporter(str(storage), open_mode="r")
            try:
                frames = np.empty((n_iterations, omm_system.getNumParticles(), 3))
                for it in range(1, n_iterations + 1):
                    assignment = np.asarray(reader.read_replica_thermodynamic_states(it))
                    snapshot = reader.read_sampler_states(it)
                    frames[it - 1] = snapshot[int(np.flatnonzero(assignment == 0)[0])].positions.value_in_unit(
                        unit.nanometer)
                last_pos = np.empty((n_temp,) + frames.shape[1:])
                last_vel = np.empty_like(last_pos)
                for replica, t_index in enumerate(assignment):
                    last_pos[t_index] = snapshot[replica].positions.value_in_unit(unit.nanometer)
                    last_vel[t_index] = snapshot[replica].velocities.value_in_unit(unit.nanometer / unit.picosecond)
                accepted, proposed = reader.read_mixing_statistics(slice(1, n_iterations + 1))
            finally:
                reader.close()
    finally:
        np.random.set_state(state)
    shutil.rmtree(scratch, ignore_errors=True)
    return {"frames": frames, "positions": last_pos, "velocities": last_vel,
            "accepted": np.asarray(accepted).sum(axis=0), "proposed": np.asarray(proposed).sum(axis=0)}


def run_exchange_replica(folder: str, replica: int, settings_dict: dict, progress_queue=None) -> int:
    """Run (or resume) one parallel-tempering run to completion; returns the number of exported frames."""
    import openmm

    rf = open_replica(folder, replica, settings_dict)
    settings, system, platform, rep, progress, omm_system, scorer = rf
    temperatures = list(settings.temperatures_K)
    parent = os.getppid()
    scratch = rep / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    common = dict(steps_per_iteration=settings.steps_per_frame, friction_per_ps=settings.friction_per_ps,
                  step_fs=settings.step_fs, platform=platform, scratch=scratch)

    def saver(result: dict):
        return lambda fh: np.savez(fh, positions=result["positions"], velocities=result["velocities"])

    if progress is None:  # fresh start: minimise, equilibrate every temperature (not saved)
        from openmm import unit

        scorer.setPositions(system.positions)  # the scoring Context doubles as the minimiser
        openmm.LocalEnergyMinimizer.minimize(scorer, 1.0, 0)
        start = scorer.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        n_eq = max(1, int(round(settings.equilibrate_ps / settings.save_every_ps)))
        result = run_iterations(omm_system, temperatures, np.repeat(start[None], len(temperatures), 0), None, n_eq,
                                seed=chunk_seed(settings.seed, replica, -1), **common)
        stats = {"temperatures_K": temperatures, "accepted": np.zeros((len(temperatures),) * 2, int).tolist(),
                 "proposed": np.zeros((len(temperatures),) * 2, int).tolist(), "note":
                 "swap counts [i, j] between temperature i and j over the exported chunks (equilibration excluded)"}
        commit_state(rep, 0, 0, state_name("exchange", 0), saver(result), exchange=stats)
        atomic_write_json(stats, rep / "exchange.json")
    else:
        resume_state(rep, progress)

    def run_chunk(k: int, frames_done: int, n_frames: int, committed: dict) -> Chunk:
        saved = np.load(state_path(rep, committed))
        stats = committed["exchange"]
        result = run_iterations(omm_system, temperatures, saved["positions"], saved["velocities"], n_frames,
                                seed=chunk_seed(settings.seed, replica, k), **common)
        times = settings.save_every_ps * np.arange(frames_done + 1, frames_done + n_frames + 1)
        stats = {**stats, "accepted": (np.asarray(stats["accepted"]) + result["accepted"]).tolist(),
                 "proposed": (np.asarray(stats["proposed"]) + result["proposed"]).tolist()}
        return Chunk(result["frames"], times.astype(np.float32), state_name("exchange", k + 1), saver(result),
                     {"exchange": stats}, after_commit=lambda: atomic_write_json(stats, rep / "exchange.json"))

    return run_chunks(rf, replica, parent, run_chunk, progress_queue)


def acceptance(stats: dict) -> list[float]:
    """Swap acceptance rate between neighbouring temperatures i and i+1 (NaN where none was proposed)."""
    a, p = np.asarray(stats["accepted"], float), np.asarray(stats["proposed"], float)
    rates = []
    for i in range(len(a) - 1):
        n = p[i, i + 1] + p[i + 1, i]
        rates.append(float((a[i, i + 1] + a[i + 1, i]) / n) if n else float("nan"))
    return rates
