"""Replica processes: a spawn pool whose workers die with the command, and the progress bar.

Replica processes die with the command (Linux ``PR_SET_PDEATHSIG``), even when
it is killed with SIGKILL, and no multiprocessing Manager is used (its server
process would outlive a killed run).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from typing import Callable

__all__ = ["run_replicas", "die_with_parent"]

#: the progress queue of a pool worker (set by :func:`_init_worker`)
_QUEUE = None


def run_replicas(worker: Callable[..., int], folder: str, replicas: int, settings_dict: dict, total_ns: float,
                 progress: bool = True) -> int:
    """Run ``worker(folder, replica, settings_dict, progress_queue)`` for every replica in parallel processes.

    ``worker`` must be a module-level function (it is pickled by name). Shows a
    progress bar in ns when ``progress``. Returns the sum of what the workers return.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue() if progress else None  # no Manager: its server process would outlive a killed run
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        with ctx.Pool(min(replicas, os.cpu_count() or 1), initializer=_init_worker,
                      initargs=(queue, os.getpid())) as pool:  # terminated on any exit path
            results = [pool.apply_async(_run_worker, (worker, folder, r, settings_dict)) for r in range(replicas)]
            _follow(results, queue, total_ns, replicas)
            return sum(r.get() for r in results)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


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


def _run_worker(worker: Callable[..., int], folder: str, replica: int, settings_dict: dict) -> int:
    """Run one replica in a pool worker, reporting to the pool's progress queue."""
    return worker(folder, replica, settings_dict, _QUEUE)


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
