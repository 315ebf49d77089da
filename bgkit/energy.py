"""Batched reduced energies u(x)/kT and forces of a System, in parallel processes.

``EnergyModel`` keeps a pool of worker processes (spawned, so safe with CUDA,
Jupyter and threads), each owning its own OpenMM Context, and hands them
chunks of frames. Frames with non-finite positions, overlapping atoms
(closer than ``min_distance``) or a non-finite OpenMM energy get energy
``+inf`` and zero force, and are counted in the returned ``EnergyBatch``.

Units: positions nm; energies reduced (kT); forces reduced (kT/nm).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import warnings
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from bgkit import BgkitError
from bgkit._energy_worker import NONFINITE_ENERGY, NONFINITE_POSITIONS, OVERLAP, worker_main
from bgkit.systems import System, load_system


class EnergyWorkerError(RuntimeError):
    """An energy worker process failed (could not start, or died repeatedly)."""


@dataclass
class EnergyBatch:
    """Result of one evaluation of B frames."""

    energy_kt: np.ndarray  #: [B] float64 reduced energies, +inf where invalid
    forces_kt_per_nm: np.ndarray | None  #: [B, N, 3] float64 reduced forces (−∇u/kT), 0 where invalid
    n_nonfinite_positions: int
    n_overlapping: int
    n_nonfinite_energy: int

    @property
    def n_invalid(self) -> int:
        """Frames given +inf energy, for any reason."""
        return self.n_nonfinite_positions + self.n_overlapping + self.n_nonfinite_energy


def default_n_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


class _Worker:
    def __init__(self, ctx, system_xml: str, platform: str):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=worker_main, args=(child, system_xml, platform), daemon=True)
        self.process.start()
        child.close()
        self.jobs: list[int] = []

    def wait_ready(self, timeout: float) -> str:
        if not self.conn.poll(timeout):
            raise EnergyWorkerError(f"energy worker did not start within {timeout:.0f} s")
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            raise EnergyWorkerError(f"energy worker exited during start-up (exit code {self.process.exitcode})") from None
        if kind != "ready":
            raise EnergyWorkerError(f"energy worker could not create an OpenMM Context: {payload}")
        return payload

    def stop(self, timeout: float = 2.0) -> None:
        try:
            self.conn.send(("stop",))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.conn.close()


def _shutdown(workers: list[_Worker]) -> None:
    for w in workers:
        w.stop()
    workers.clear()


class EnergyModel:
    """Reduced energies and forces of a system, evaluated by a pool of processes.

    Parameters
    ----------
    system: a ``System`` (a shipped name or a system folder is resolved here).
    n_workers: worker processes (default: the CPU cores available).
    platform: OpenMM platform name (default: ``system.preferred_platform()``).
    chunk_size: most frames sent to a worker at a time.
    min_distance: frames with two atoms closer than this (nm) count as overlapping (+inf).
    """

    def __init__(self, system: System | str, n_workers: int | None = None, platform: str | None = None,
                 chunk_size: int = 1024, min_distance: float = 0.02, start_timeout: float = 120.0):
        self.system = system if isinstance(system, System) else load_system(system)
        self.n_workers = default_n_workers() if n_workers is None else int(n_workers)
        if self.n_workers < 1:
            raise BgkitError(f"n_workers must be at least 1 (None: all cores), got {n_workers}")
        if self.n_workers > default_n_workers():
            warnings.warn(f"{self.n_workers} energy workers asked for, {default_n_workers()} cores available: "
                          f"using {default_n_workers()}", stacklevel=2)
            self.n_workers = default_n_workers()
        self.platform = platform or self.system.preferred_platform()
        self.chunk_size = int(chunk_size)
        self.min_distance = float(min_distance)
        self.start_timeout = start_timeout
        self.kT = self.system.kT
        self.n_atoms = self.system.n_atoms
        self._xml = self.system.system_xml
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        # test hooks: the next submitted chunk's worker exits after this many frames (every chunk if sticky)
        self._crash_next: int | None = None
        self._crash_sticky = False
        self._pool = None  # one thread that runs ``submit``ted evaluations
        self._start_workers()

    # ------------------------------------------------------------ lifecycle
    def _start_workers(self) -> None:
        new = [_Worker(self._ctx, self._xml, self.platform) for _ in range(self.n_workers - len(self._workers))]
        self._workers.extend(new)
        try:
            for w in new:
                w.wait_ready(self.start_timeout)
        except BaseException:
            _shutdown(self._workers)
            raise

    def _replace(self, worker: _Worker) -> None:
        worker.stop(timeout=0.5)
        self._workers.remove(worker)
        self._start_workers()

    def close(self) -> None:
        """Stop the worker processes (also done at exit and by garbage collection)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        _shutdown(self._workers)

    def __enter__(self) -> "EnergyModel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    # ----------------------------------------------------------- evaluation
    def as_positions(self, x: Any) -> np.ndarray:
        """Validate and convert a batch to float64 numpy [B, N, 3] (nm)."""
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise BgkitError(f"positions must be floating point (nm), got dtype {x.dtype}")
        n = self.n_atoms
        if x.ndim == 2 and x.shape[1] == 3 * n:
            x = x.reshape(len(x), n, 3)
        if x.ndim != 3 or x.shape[1:] != (n, 3):
            raise BgkitError(
                f"positions have shape {tuple(x.shape)}; system '{self.system.name}' needs [batch, {n}, 3] or [batch, {3 * n}] (nm)"
            )
        return np.ascontiguousarray(x, dtype=np.float64)

    def evaluate(self, x: Any, forces: bool = False) -> EnergyBatch:
        """Reduced energies (and forces) of a batch of positions [B, N, 3] or [B, 3N] in nm."""
        pos = self.as_positions(x)
        b = len(pos)
        energies = np.empty(b)
        flags = np.zeros(b, dtype=np.int8)
        out_forces = np.empty_like(pos) if forces else None
        if b:
            self._run(pos, forces, energies, out_forces, flags)
        energies /= self.kT
        if out_forces is not None:
            out_forces /= self.kT
        return EnergyBatch(energies, out_forces, int((flags == NONFINITE_POSITIONS).sum()),
                           int((flags == OVERLAP).sum()), int((flags == NONFINITE_ENERGY).sum()))

    def submit(self, x: Any, forces: bool = False) -> Future:
        """``evaluate(x, forces)`` in the background: a Future of its EnergyBatch, so that the caller's
        own work (a flow's next batch, another loss term) overlaps the workers'. Submissions run in order."""
        pos = self.as_positions(x).copy()  # checked and copied now: the caller may reuse x
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="bgkit-energy")
        return self._pool.submit(self.evaluate, pos, forces)

    def __call__(self, x: Any) -> np.ndarray:
        """Reduced energies u(x)/kT, float64 [B]."""
        return self.evaluate(x).energy_kt

    def _run(self, pos, want_forces, energies, out_forces, flags) -> None:
        if len(self._workers) < self.n_workers:
            self._start_workers()
        b = len(pos)
        size = max(1, min(self.chunk_size, math.ceil(b / self.n_workers)))
        chunks = [(s, min(s + size, b)) for s in range(0, b, size)]
        pending = list(range(len(chunks)))[::-1]  # a stack, popped from the end
        deaths = [0] * len(chunks)
        remaining = len(chunks)

        def submit(w: _Worker) -> bool:
            job = pending.pop()
            s, e = chunks[job]
            try:
                if self._crash_next is not None:
                    w.conn.send(("crash", self._crash_next))
                    if not self._crash_sticky:
                        self._crash_next = None
                w.conn.send(("eval", job, pos[s:e], want_forces, self.min_distance))
            except (BrokenPipeError, OSError):
                pending.append(job)
                return False
            w.jobs.append(job)
            return True

        try:
            for w in list(self._workers):  # up to two jobs in flight per worker
                for _ in range(2):
                    if pending and not submit(w):
                        break
            while remaining:
                by_conn = {w.conn: w for w in self._workers}
                by_sentinel = {w.process.sentinel: w for w in self._workers}
                ready = wait(list(by_conn) + list(by_sentinel))
                for obj in ready:
                    w = by_conn.get(obj)
                    if w is not None:
                        try:
                            _, job, e_chunk, f_chunk, fl = w.conn.recv()
                        except (EOFError, OSError):
                            continue  # the sentinel reports the death
                        w.jobs.remove(job)
                        s, e = chunks[job]
                        energies[s:e], flags[s:e] = e_chunk, fl
                        if out_forces is not None:
                            out_forces[s:e] = f_chunk
                        remaining -= 1
                        if pending:
                            submit(w)
                for obj in ready:
                    w = by_sentinel.get(obj)
                    if w is None or w not in self._workers or w.process.is_alive():
                        continue
                    lost, code = list(w.jobs), w.process.exitcode
                    for job in lost:
                        deaths[job] += 1
                        if deaths[job] > 1:
                            s, e = chunks[job]
                            raise EnergyWorkerError(
                                f"energy worker died twice (exit code {code}) evaluating frames {s}..{e - 1}; giving up"
                            )
                    pending.extend(lost)
                    self._replace(w)
                    new = self._workers[-1]
                    for _ in range(2):
                        if pending and not submit(new):
                            break
        except BaseException:
            # KeyboardInterrupt or an error: results in flight are stale, so stop every worker;
            # the next call starts a fresh pool.
            _shutdown(self._workers)
            raise

    # ---------------------------------------------------------------- torch
    def torch_energy(self, x):
        """Reduced energies [B, 1] of a torch batch, differentiable (gradient = −forces)."""
        return _TorchEnergy.apply(x, self)


def _make_torch_function():
    import torch

    class TorchEnergy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, model: EnergyModel):
            batch = model.evaluate(x, forces=True)
            f = torch.as_tensor(batch.forces_kt_per_nm, dtype=x.dtype, device=x.device).reshape(x.shape)
            ctx.save_for_backward(f)
            return torch.as_tensor(batch.energy_kt, dtype=x.dtype, device=x.device).unsqueeze(-1)

        @staticmethod
        def backward(ctx, grad_output):
            (f,) = ctx.saved_tensors
            shape = (-1,) + (1,) * (f.dim() - 1)
            return -f * grad_output.reshape(shape), None

    return TorchEnergy


class _LazyTorchEnergy:
    _fn = None

    def apply(self, *args):
        if self._fn is None:
            type(self)._fn = _make_torch_function()
        return self._fn.apply(*args)


_TorchEnergy = _LazyTorchEnergy()
