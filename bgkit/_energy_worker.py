"""Energy worker process: owns one OpenMM Context, evaluates chunks of frames.

Imported in the child only (spawn-safe); depends on numpy and OpenMM alone so
that a worker starts in well under a second.

A reader thread takes every message off the pipe as soon as it arrives, so the
parent's send of the next job never waits on the child's send of a result
(a large result with forces and a large job in flight at once would otherwise
fill both directions of the pipe and deadlock).

Protocol over a duplex Pipe (parent -> child, then child -> parent)::

    start:   child sends ("ready", platform_name) or ("error", message)
    ("eval", job_id, positions [b, N, 3] float64 nm, want_forces, min_distance)
             -> ("done", job_id, energies [b] kJ/mol, forces [b, N, 3] kJ/mol/nm | None, flags [b] int8)
    ("crash", n_frames)   test hook: the next eval exits the process after n_frames
    ("stop",)             child exits
flags: 0 ok, 1 non-finite positions, 2 overlapping atoms, 3 non-finite energy.
"""
from __future__ import annotations

import os
import queue
import signal
import threading

import numpy as np

OK, NONFINITE_POSITIONS, OVERLAP, NONFINITE_ENERGY = 0, 1, 2, 3


def overlapping(pos: np.ndarray, min_distance: float) -> np.ndarray:
    """Mask [b] of frames with any pair of atoms closer than ``min_distance`` nm (0 disables)."""
    b, n, _ = pos.shape
    if min_distance <= 0 or n < 2:
        return np.zeros(b, dtype=bool)
    closest = np.full(b, np.inf)
    for k in range(1, n):  # all pairs (i, i + k), one shift at a time: exact and O(b n^2) with no n^2 temporaries
        d = pos[:, k:] - pos[:, :-k]
        np.minimum(closest, np.einsum("bkd,bkd->bk", d, d).min(axis=1), out=closest)
    return closest < min_distance**2


def evaluate_chunk(context, pos: np.ndarray, want_forces: bool, min_distance: float, crash_after: int | None = None):
    """Energies (kJ/mol) and optionally forces (kJ/mol/nm) of frames [b, N, 3] (nm) in one Context."""
    from openmm import OpenMMException, unit

    b, n, _ = pos.shape
    energies = np.full(b, np.inf)
    forces = np.zeros((b, n, 3)) if want_forces else None
    flags = np.zeros(b, dtype=np.int8)
    finite = np.isfinite(pos).all(axis=(1, 2))
    flags[~finite] = NONFINITE_POSITIONS
    clash = np.zeros(b, dtype=bool)
    clash[finite] = overlapping(pos[finite], min_distance)
    flags[clash] = OVERLAP
    kj = unit.kilojoule_per_mole
    kj_nm = unit.kilojoule_per_mole / unit.nanometer
    for i in np.flatnonzero(flags == OK):
        if crash_after is not None and i >= crash_after:
            os._exit(17)
        try:
            context.setPositions(pos[i])
            state = context.getState(getEnergy=True, getForces=want_forces)
            e = state.getPotentialEnergy().value_in_unit(kj)
        except OpenMMException:
            e = np.nan
        if not np.isfinite(e):
            flags[i] = NONFINITE_ENERGY
            continue
        energies[i] = e
        if want_forces:
            f = state.getForces(asNumpy=True).value_in_unit(kj_nm)
            if np.isfinite(f).all():
                forces[i] = f
            else:
                energies[i] = np.inf
                flags[i] = NONFINITE_ENERGY
    return energies, forces, flags


def make_context(system_xml: str, platform_name: str):
    import openmm

    system = openmm.XmlSerializer.deserialize(system_xml)
    platform = openmm.Platform.getPlatformByName(platform_name)
    properties = {"Threads": "1"} if platform_name == "CPU" else {}
    return openmm.Context(system, openmm.VerletIntegrator(0.001), platform, properties)


def worker_main(conn, system_xml: str, platform_name: str) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        context = make_context(system_xml, platform_name)
    except Exception as exc:  # report, then exit: the parent raises a clear error
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", context.getPlatform().getName()))
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_read_messages, args=(conn, inbox), daemon=True).start()
    crash_after = None
    while True:
        msg = inbox.get()
        if msg[0] == "stop":
            return
        if msg[0] == "crash":
            crash_after = int(msg[1])
            continue
        _, job_id, pos, want_forces, min_distance = msg
        energies, forces, flags = evaluate_chunk(context, pos, want_forces, min_distance, crash_after)
        try:
            conn.send(("done", job_id, energies, forces, flags))
        except (BrokenPipeError, OSError):
            return


def _read_messages(conn, inbox: queue.SimpleQueue) -> None:
    """Move every message from the pipe to ``inbox`` until the parent stops us or goes away."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent went away
            inbox.put(("stop",))
            return
        inbox.put(msg)
        if msg[0] == "stop":
            return
