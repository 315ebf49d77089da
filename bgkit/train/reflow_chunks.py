"""Computing reflow chunks: the teacher's pairs of one chunk, and the processes that compute and write them.

Chunk k is a pure function of (teacher, seed, k) (:func:`teacher_pairs`): its prior draws come from a
generator seeded with (seed, k + 1) and are integrated in batches of fixed size. :func:`run_chunks`
computes a list of chunks in this process or in a pool of ``workers`` spawned processes, which die
with the command (``PR_SET_PDEATHSIG``), even when it is killed with SIGKILL; every file is written
atomically and its SHA-256 recorded in the manifest as it is written.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgkit import BgkitError
from bgkit.train.reflow_folder import MANIFEST, logdet_name

__all__ = ["run_chunks", "teacher_pairs"]

#: the teacher flow of a worker process (set by :func:`_init_worker`)
_WORKER: dict[str, Any] = {}


def _generator(seed: int, key: int) -> torch.Generator:
    state = int(np.random.SeedSequence([seed, key]).generate_state(1, dtype=np.uint64)[0] % (2**63))
    return torch.Generator().manual_seed(state)


@torch.no_grad()
def teacher_pairs(flow: torch.nn.Module, n: int, seed: int, key: int, batch_size: int, method: str,
                  steps: int, logdet: bool = False, divergence: str = "exact") -> tuple[np.ndarray, np.ndarray | None]:
    """([2, n, D] float32, [n] float64 or None): prior draws (generator (seed, key)) and their images under
    the teacher flow, and with ``logdet`` the teacher's log|det dx1/dx0| of each pair.

    A CNF is integrated with ``method`` and ``steps`` (with ``logdet``, the divergence — "exact", or
    "hutchinson": one Rademacher probe per pair, its draws seeded by (seed, key) — is integrated in the same
    solve); another flow applies ``forward``.
    """
    gen = _generator(seed, key)
    x0 = flow.prior_sample(n, gen, dtype=torch.float32)
    probe_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    out = np.empty((2, n, flow.dim), dtype=np.float32)
    ld = np.empty(n, dtype=np.float64) if logdet else None
    out[0] = x0.numpy()
    for start in range(0, n, batch_size):
        z = x0[start:start + batch_size]
        if getattr(flow, "arch", "") == "cnf":
            with torch.random.fork_rng(devices=[]):  # the CNF draws its probes from the global RNG
                torch.manual_seed(probe_seed + start)
                x1, ld_b = flow.integrate(z, 0.0, 1.0, logdet=logdet, method=method, steps=steps,
                                          divergence=divergence)
        else:
            x1, ld_b = flow(z)
        out[1, start:start + batch_size] = x1.numpy()
        if ld is not None:
            ld[start:start + batch_size] = ld_b.double().numpy()
    if not np.isfinite(out).all() or (ld is not None and not np.isfinite(ld).all()):
        raise BgkitError(f"the teacher produced non-finite pairs in chunk {key - 1}: integrate with more --steps")
    return out, ld


def _init_worker(teacher: str, threads: int, parent_pid: int | None = None) -> None:
    from bgkit.proposal import Proposal  # noqa: PLC0415

    if parent_pid is not None:  # a pool worker dies with the command, even when it is SIGKILLed
        from bgkit.md.pool import die_with_parent  # noqa: PLC0415

        die_with_parent(parent_pid)
    torch.set_num_threads(threads)
    _WORKER["flow"] = Proposal.load(teacher).flow.float()


def _write_chunk(folder: str, manifest: dict[str, Any], key: int, name: str, n: int) -> tuple[str, dict[str, str]]:
    """Compute and write pairs file ``name`` (and its log-dets); returns (name, {file: sha256})."""
    from bgkit.provenance import atomic_write  # noqa: PLC0415

    arr, ld = teacher_pairs(_WORKER["flow"], n, manifest["seed"], key, manifest["batch_size"], manifest["method"],
                            manifest["steps"], logdet=bool(manifest.get("logdet")),
                            divergence=manifest["logdet_divergence"])
    sums = {}
    if ld is not None:  # first: a chunk counts as done once its pairs file exists
        sums[logdet_name(name)] = _write_npy(Path(folder) / logdet_name(name), ld, atomic_write)
    sums[name] = _write_npy(Path(folder) / name, arr, atomic_write)
    return name, sums


def _write_npy(path: Path, arr: np.ndarray, atomic_write) -> str:
    """Write ``arr`` as .npy atomically; returns the SHA-256 of the bytes written."""
    import io  # noqa: PLC0415

    buf = io.BytesIO()
    np.save(buf, arr)
    data = buf.getvalue()
    atomic_write(path, lambda fh: fh.write(data))
    return hashlib.sha256(data).hexdigest()


def _write_chunk_star(args: tuple) -> tuple[str, dict[str, str]]:
    return _write_chunk(*args)



def run_chunks(teacher: str, out: str, manifest: dict[str, Any], todo: list[tuple[str, int, int]], workers: int,
         progress: bool) -> None:
    """Compute the chunks ``todo``, recording each file's checksum in the manifest as it is written (at most once
    a second, and when the run ends, however it ends)."""
    import time  # noqa: PLC0415

    from bgkit.provenance import atomic_write_json  # noqa: PLC0415

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(todo), desc="reflow chunks", unit="chunk", dynamic_ncols=True)
    sums = manifest.setdefault("sha256", {})
    path = Path(out) / MANIFEST
    work = {k: manifest[k] for k in ("seed", "batch_size", "method", "steps", "logdet", "logdet_divergence")}
    last = [time.monotonic(), 0]  # time of the last manifest write, files written since

    def done(result: tuple[str, dict[str, str]]) -> None:
        sums.update(result[1])
        last[1] += 1
        if bar is not None:
            bar.update(1)
        if time.monotonic() - last[0] >= 1.0:
            atomic_write_json(manifest, path)
            last[0], last[1] = time.monotonic(), 0

    try:
        if workers == 1 or len(todo) <= 1:
            _init_worker(teacher, torch.get_num_threads())
            for name, key, rows in todo:
                done(_write_chunk(out, work, key, name, rows))
            return
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(todo)), initializer=_init_worker,  # terminated on any exit path
                      initargs=(teacher, max(1, (os.cpu_count() or 1) // workers), os.getpid())) as pool:
            for result in pool.imap_unordered(_write_chunk_star,
                                              [(out, work, key, name, rows) for name, key, rows in todo]):
                done(result)
    finally:
        if last[1]:
            atomic_write_json(manifest, path)
        if bar is not None:
            bar.close()
