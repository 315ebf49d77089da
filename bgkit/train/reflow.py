"""Reflow targets: pairs (x0, x1 = teacher(x0)) from a trained teacher flow, written in chunks.

RegFlow (Rehman et al., arXiv 2506.01158) regresses a flow onto the deterministic map of a
continuous normalizing flow: x1 = x0 + ∫₀¹ v_t(x_t) dt, x0 from the prior. Unlike finite-sample
OT pairs this map is smooth and invertible, and pairs cost only ODE solves, so millions are
affordable (docs/methods.md).

The folder's files, its manifest and reading it for training (:class:`ReflowPairs` streams the chunks)
are in :mod:`bgkit.train.reflow_folder`; computing the chunks, in one process or several, in
:mod:`bgkit.train.reflow_chunks`.

Chunk k is a pure function of (teacher, seed, k): its prior draws come from a generator seeded with
(seed, k + 1) and are integrated in batches of fixed size, so a run killed at any point and started
again with the same arguments computes only the missing chunks and yields exactly the pairs of an
uninterrupted run (every chunk file is written atomically). ``workers`` processes share the chunks; they
die with the command (``PR_SET_PDEATHSIG``), even when it is killed with SIGKILL. The folder appears with
its marker and manifest at once (never empty or unmarked), only after every size has been checked.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from bgkit import BgkitError
from bgkit.provenance import file_sha256
from bgkit.train.reflow_chunks import run_chunks
from bgkit.train.reflow_folder import (FORMAT, MANIFEST, ReflowPairs, ReflowTargets, chunk_name, complete, differences,
                                       logdet_name, open_reflow, read_manifest, verified_sums)

__all__ = ["MANIFEST", "ReflowPairs", "ReflowTargets", "make_reflow_targets", "open_reflow"]

#: at most this many chunk files per folder (a larger --n needs a larger --chunk-size)
MAX_CHUNKS = 100_000
#: at most this many fixed ODE steps per pair
MAX_ODE_STEPS = 100_000


def _stderr_note(text: str) -> None:
    import sys  # noqa: PLC0415

    print("note: " + text, file=sys.stderr, flush=True)


def _check_sizes(n: int, chunk_size: int, seed: int, steps: int, batch_size: int, n_val: int, workers: int) -> None:
    from bgkit.limits import MAX_BATCH, MAX_COUNT, check_int  # noqa: PLC0415

    check_int("--n", n, 1, MAX_COUNT)
    check_int("--chunk-size", chunk_size, 1, MAX_BATCH)
    check_int("--n-val", n_val, 1, MAX_BATCH)
    check_int("--batch-size", batch_size, 1, MAX_BATCH)
    check_int("--steps", steps, 1, MAX_ODE_STEPS)
    check_int("--seed", seed, 0, 2**63 - 1)
    check_int("--workers", workers, 1, 2**31)
    n_chunks = math.ceil(n / chunk_size)
    if n_chunks > MAX_CHUNKS:
        raise BgkitError(f"--n {n} in chunks of --chunk-size {chunk_size} makes {n_chunks:,} chunk files, more than "
                         f"{MAX_CHUNKS:,}: choose a larger --chunk-size")


def _check_resources(out: Path, dim: int, hidden: int, n_rows: int, chunk_size: int, batch_size: int, n_val: int,
                     workers: int, logdet: bool, n: int) -> None:
    """Memory of the chunks being computed and disk of the rows still to write, against the machine."""
    from bgkit.limits import check_disk, check_memory  # noqa: PLC0415

    row = 2 * dim * 4 + (8 if logdet else 0)
    check_memory("--chunk-size", chunk_size, workers * chunk_size * (row + dim * 4) * 2,
                 f"{workers} chunk(s) of pairs being computed")
    check_memory("--n-val", n_val, n_val * (row + dim * 4) * 2, "the validation pairs")
    check_memory("--batch-size", batch_size, workers * batch_size * 4 * 16 * max(dim, hidden),
                 f"{workers} ODE batch(es) being integrated")
    have = sum(f.stat().st_size for f in out.glob("*.npy")) if out.is_dir() else 0
    check_disk("--n", n, max(0, n_rows * row + 128 * (n_rows // max(chunk_size, 1)) - have), out, "reflow pairs")


def _lost_manifest(out: Path, force: bool) -> bool:
    """A bgkit reflow folder whose manifest is gone: refused with what --force would discard (False: nothing to
    discard, the folder is replaced); True when it is to be replaced with --force."""
    from bgkit.outputs import MARKER  # noqa: PLC0415

    try:
        kind = json.loads((out / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return False
    if kind != "reflow-targets":
        return False
    chunks = sorted(p.name for p in out.glob("chunk_*.npy") if not p.name.endswith(".logdet.npy"))
    if chunks and not force:
        raise BgkitError(f"{out} holds {len(chunks)} finished reflow chunk(s) but has lost its {MANIFEST} manifest, "
                         "so their settings are unknown and they cannot be resumed: --force would discard them and "
                         "start again; or choose another --out")
    return True


def make_reflow_targets(teacher: str | Path, out: str | Path, n: int, chunk_size: int = 10_000, seed: int = 0,
                        method: str = "rk4", steps: int = 20, batch_size: int = 2000, n_val: int = 2000,
                        workers: int = 1, force: bool = False, progress: bool = True,
                        logdet: bool = False, logdet_divergence: str = "exact", note=None) -> dict[str, Any]:
    """Generate (or finish, or extend) the reflow targets folder ``out``; returns its manifest.

    ``n`` pairs are rounded up to whole chunks of ``chunk_size``. ``logdet``: also store the teacher's
    log|det| of each pair (``logdet_divergence`` "exact": about D times the cost of the pairs alone for a
    CNF; "hutchinson": one probe, unbiased but noisy, about twice the cost). An existing folder made with the
    same teacher and settings is completed (missing chunks only; a larger ``n`` adds chunks, a smaller one
    is refused); different settings are an error unless ``force``, which replaces a folder bgkit wrote.
    Every file's SHA-256 is kept in the manifest; a rerun redraws the chunks whose files do not match
    (``note(text)`` is told, default: stderr). Every size is checked (stated bounds, memory, disk) before
    anything is written; ``workers`` is capped at the core count.
    """
    from bgkit.flows.cnf import DIVERGENCES  # noqa: PLC0415
    from bgkit.outputs import (check_output_folder, foreign_content, partial_folder, replace_folder,  # noqa: PLC0415
                               write_marker)
    from bgkit.proposal import Proposal  # noqa: PLC0415
    from bgkit.provenance import atomic_write_json, provenance  # noqa: PLC0415

    note = note or _stderr_note
    _check_sizes(n, chunk_size, seed, steps, batch_size, n_val, workers)
    workers = min(int(workers), os.cpu_count() or 1)
    if logdet_divergence not in DIVERGENCES:
        raise BgkitError(f"unknown log-det divergence {logdet_divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    teacher = Path(teacher)
    proposal = Proposal.load(teacher)
    flow = proposal.flow
    out = Path(out)
    n_chunks = math.ceil(n / chunk_size)
    manifest = {
        "format": FORMAT, "kind": "reflow", "teacher": str(teacher), "teacher_sha256": file_sha256(teacher),
        "teacher_arch": flow.arch, "teacher_finished": proposal.finished, "teacher_objective": proposal.info.get("training", {}).get("objective"),
        "system": proposal.system_info, "transform": proposal.transform.state_dict(),
        "coords": proposal.transform.kind, "dim": flow.dim, "periodic": list(flow.periodic), "seed": int(seed),
        "chunk_size": int(chunk_size), "n_chunks": n_chunks, "n": n_chunks * int(chunk_size), "n_val": int(n_val),
        "method": method if flow.arch == "cnf" else "flow forward", "steps": int(steps) if flow.arch == "cnf" else 0,
        "batch_size": int(batch_size), "dtype": "float32", "logdet": bool(logdet),
        "logdet_divergence": logdet_divergence if logdet else "exact",
        "layout": "chunk_KKKKKK.npy and val.npy: float32 [2, rows, D], x0 (prior draw) then x1 (teacher image)"
                  + ("; chunk_KKKKKK.logdet.npy and val.logdet.npy: float64 [rows], log|det dx1/dx0| of the teacher "
                     f"({logdet_divergence} divergence)" if logdet else ""),
        "checksums": "sha256: SHA-256 of every file written (chunks, validation pairs, log-dets), checked on reading",
    }
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()  # an empty folder holds nothing to lose: made anew below
    old = read_manifest(out) if (out / MANIFEST).is_file() and out.is_dir() else None
    resuming = old is not None and not force and not differences(old, manifest)
    replace = False
    if resuming:
        problem = foreign_content(out)
        if problem is not None:
            raise BgkitError(f"{out} was not written by bgkit alone ({problem}): not adding to it")
        if n_chunks < int(old["n_chunks"]):
            raise BgkitError(f"{out} holds {int(old['n']):,} reflow pairs ({old['n_chunks']} chunks of {chunk_size}): "
                             f"--n {n} cannot shorten it (pass --n {int(old['n'])} or more, or --force to replace it)")
    else:
        if old is not None and not force:
            raise BgkitError(f"{out} holds reflow targets made with other settings ({differences(old, manifest)}): "
                             "choose another --out or pass --force to replace them")
        if out.exists() and old is None and _lost_manifest(out, force):
            force = True  # a reflow folder with no manifest and no chunks, or --force: replaced
        check_output_folder(out, force)
        replace = out.exists()
        old = None
    hidden = int((getattr(flow, "hparams", None) or {}).get("hidden", 256) or 256)
    _check_resources(out, flow.dim, hidden, n_chunks * chunk_size + n_val, chunk_size, batch_size, n_val, workers,
                     logdet, n)
    if old is not None:
        manifest.update(created=old.get("created"))
    else:
        manifest["created"] = provenance(seed=seed)
    manifest["last_run"] = provenance(seed=seed)
    names = [chunk_name(k) for k in range(n_chunks)]
    files = ["val.npy", *names]
    listed = [MANIFEST, *files, *(map(logdet_name, files) if logdet else ())]
    sums: dict[str, str] = {}
    if old is None:  # the folder appears with its marker and manifest, or not at all
        tmp = partial_folder(out)
        try:
            manifest["sha256"] = {}
            write_marker(tmp, "reflow-targets", listed)
            atomic_write_json(manifest, tmp / MANIFEST)
            replace_folder(tmp, out, force=replace)
        except BaseException:
            import shutil  # noqa: PLC0415

            shutil.rmtree(tmp, ignore_errors=True)
            raise
    else:
        sums = verified_sums(out, old, files, logdet, note)
        manifest["sha256"] = sums
        write_marker(out, "reflow-targets", listed)
        atomic_write_json(manifest, out / MANIFEST)

    todo = [("val.npy", 0, n_val)] if not complete(out, "val.npy", logdet) else []
    todo += [(name, k + 1, chunk_size) for k, name in enumerate(names) if not complete(out, name, logdet)]
    run_chunks(str(teacher), str(out), manifest, todo, workers, progress)
    return manifest
