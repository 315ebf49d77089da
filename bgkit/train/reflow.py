"""Reflow targets: pairs (x0, x1 = teacher(x0)) from a trained teacher flow, written in chunks.

RegFlow (Rehman et al., arXiv 2506.01158) regresses a flow onto the deterministic map of a
continuous normalizing flow: x1 = x0 + ∫₀¹ v_t(x_t) dt, x0 from the prior. Unlike finite-sample
OT pairs this map is smooth and invertible, and pairs cost only ODE solves, so millions are
affordable (docs/methods.md).

A targets folder holds

* ``reflow.json``: the manifest — teacher file and its SHA-256, system, coordinate representation,
  seed, chunk size, number of chunks, ODE method and steps, batch size, provenance, and ``sha256``: the
  SHA-256 of every chunk, validation and log-det file written (recorded as they are written; a rerun
  redraws a file that does not match, and reading the folder for training refuses one);
* ``chunk_000000.npy`` …: float32 arrays [2, chunk_size, D] (x0 then x1, flow space), one per chunk;
* ``val.npy``: [2, n_val, D] held-out pairs for validation;
* with ``logdet`` (``--logdet``): ``chunk_000000.logdet.npy`` …, ``val.logdet.npy``: float64 [rows], the
  teacher's log|det dx1/dx0| of each pair (the divergence — exact, or a one-probe Hutchinson estimate
  (``logdet_divergence``) — integrated along the same ODE solve), the target of the student's
  log-determinant (:func:`bgkit.train.regflow.regflow_loss`, ``logdet_weight``).

Chunk k is a pure function of (teacher, seed, k): its prior draws come from a generator seeded with
(seed, k + 1) and are integrated in batches of fixed size, so a run killed at any point and started
again with the same arguments computes only the missing chunks and yields exactly the pairs of an
uninterrupted run (every chunk file is written atomically). ``workers`` processes share the chunks; they
die with the command (``PR_SET_PDEATHSIG``), even when it is killed with SIGKILL. The folder appears with
its marker and manifest at once (never empty or unmarked), only after every size has been checked.
:class:`ReflowPairs` streams the chunks by memory-mapping them (training never loads all pairs).
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bgkit import BgkitError
from bgkit.provenance import file_sha256

__all__ = ["make_reflow_targets", "open_reflow", "ReflowPairs", "ReflowTargets", "MANIFEST"]

MANIFEST = "reflow.json"
_FORMAT = "bgkit-reflow-targets/1"
#: manifest fields that must agree before a folder is extended or resumed
_IDENTITY = ("teacher_sha256", "seed", "chunk_size", "n_val", "method", "steps", "batch_size", "dim", "logdet",
             "logdet_divergence")
_IDENTITY_DEFAULTS = {"logdet": False, "logdet_divergence": "exact"}  # folders written before a field existed


def _chunk_name(k: int) -> str:
    return f"chunk_{k:06d}.npy"


def _logdet_name(name: str) -> str:
    """The log-det file beside pairs file ``name`` (chunk_000000.npy -> chunk_000000.logdet.npy)."""
    return name[:-len(".npy")] + ".logdet.npy"


def _complete(folder: Path, name: str, logdet: bool) -> bool:
    """Whether pairs file ``name`` of ``folder`` is written, with its log-det file when the folder has them."""
    return (folder / name).is_file() and (not logdet or (folder / _logdet_name(name)).is_file())


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


# ---------------------------------------------------------------- generation (one process or several)
_WORKER: dict[str, Any] = {}
#: at most this many chunk files per folder (a larger --n needs a larger --chunk-size)
MAX_CHUNKS = 100_000
#: at most this many fixed ODE steps per pair
MAX_ODE_STEPS = 100_000


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
        sums[_logdet_name(name)] = _write_npy(Path(folder) / _logdet_name(name), ld, atomic_write)
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
        "format": _FORMAT, "kind": "reflow", "teacher": str(teacher), "teacher_sha256": file_sha256(teacher),
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
    old = _read_manifest(out) if (out / MANIFEST).is_file() and out.is_dir() else None
    resuming = old is not None and not force and not _differences(old, manifest)
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
            raise BgkitError(f"{out} holds reflow targets made with other settings ({_differences(old, manifest)}): "
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
    names = [_chunk_name(k) for k in range(n_chunks)]
    files = ["val.npy", *names]
    listed = [MANIFEST, *files, *(map(_logdet_name, files) if logdet else ())]
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
        sums = _verified(out, old, files, logdet, note)
        manifest["sha256"] = sums
        write_marker(out, "reflow-targets", listed)
        atomic_write_json(manifest, out / MANIFEST)

    todo = [("val.npy", 0, n_val)] if not _complete(out, "val.npy", logdet) else []
    todo += [(name, k + 1, chunk_size) for k, name in enumerate(names) if not _complete(out, name, logdet)]
    _run(str(teacher), str(out), manifest, todo, workers, progress)
    return manifest


def _verified(out: Path, old: dict[str, Any], files: list[str], logdet: bool, note) -> dict[str, str]:
    """The checksums of the finished files of ``out`` that match the manifest ``old``; the files of a damaged or
    unrecorded chunk are removed (to be redrawn) and the user told in one line."""
    recorded = old.get("sha256")
    legacy = not isinstance(recorded, dict)  # written by a bgkit that kept no checksums
    recorded = {} if legacy else recorded
    sums: dict[str, str] = {}
    damaged, adopted = [], 0
    for name in files:
        parts = [name, _logdet_name(name)] if logdet else [name]
        present = [p for p in parts if (out / p).is_file()]
        if not present:
            continue
        ok, got = True, {}
        for p in present:
            got[p] = file_sha256(out / p)
            if legacy:
                ok = ok and _loads(out / p)
            elif recorded.get(p) != got[p]:
                ok = False
        if ok and len(present) == len(parts):
            sums.update(got)
            adopted += legacy
        else:
            if ok is False:
                damaged.append(name)
            for p in present:
                (out / p).unlink()
    if damaged:
        shown = ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more" if len(damaged) > 3 else "")
        note(f"{out}: {len(damaged)} file(s) do not match their checksum or were not recorded ({shown}): redrawing them")
    if adopted:
        note(f"{out}: recorded the checksums of {adopted} chunk(s) written by an older bgkit (their shapes checked)")
    return sums


def _loads(path: Path) -> bool:
    """Whether the .npy file ``path`` opens with a shape its size holds (a truncated file does not)."""
    try:
        np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError):
        return False
    return True


def _run(teacher: str, out: str, manifest: dict[str, Any], todo: list[tuple[str, int, int]], workers: int,
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


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BgkitError(f"cannot read {folder / MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise BgkitError(f"{folder} is not a bgkit reflow targets folder ({MANIFEST} has another format)")
    return manifest


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    was = {k: old.get(k, _IDENTITY_DEFAULTS.get(k)) for k in _IDENTITY}
    diffs = [f"{k} {was[k]!r} -> {new.get(k)!r}" for k in _IDENTITY if was[k] != new.get(k)]
    return ", ".join(diffs)


# ---------------------------------------------------------------- reading (streamed)
class ReflowPairs:
    """The training pairs of a reflow folder, memory-mapped: ``n``, ``dim``, ``take(idx) -> (x0, x1[, logdet])``."""

    pairs = True

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.chunk_size = int(manifest["chunk_size"])
        self.dim = int(manifest["dim"])
        self.chunks = [_open_npy(folder / _chunk_name(k)) for k in range(int(manifest["n_chunks"]))]
        self.logdets = ([_open_npy(folder / _logdet_name(_chunk_name(k)))
                         for k in range(len(self.chunks))] if manifest.get("logdet") else None)
        for k, arr in enumerate(self.chunks):
            if arr.shape != (2, self.chunk_size, self.dim):
                raise BgkitError(f"{folder / _chunk_name(k)} has shape {arr.shape}, expected "
                                 f"{(2, self.chunk_size, self.dim)}: the folder is damaged; remove that file and "
                                 "rerun `bgkit targets reflow` to remake it")
            if self.logdets is not None and self.logdets[k].shape != (self.chunk_size,):
                raise BgkitError(f"{folder / _logdet_name(_chunk_name(k))} has shape {self.logdets[k].shape}, expected "
                                 f"{(self.chunk_size,)}: the folder is damaged; remove it and {_chunk_name(k)} and "
                                 "rerun `bgkit targets reflow` to remake them")
        self.n = self.chunk_size * len(self.chunks)

    def __len__(self) -> int:
        return self.n

    def take(self, idx: Tensor | np.ndarray) -> tuple[Tensor, ...]:
        """Pairs at global row indices idx [b] -> (x0 [b, D], x1 [b, D]) float32 tensors, in idx order, and the
        teacher's log-dets [b] (float32) when the folder has them."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((2, len(idx), self.dim), dtype=np.float32)
        ld = np.empty(len(idx), dtype=np.float32)
        chunk, row = np.divmod(idx, self.chunk_size)
        for k in np.unique(chunk):
            sel = np.flatnonzero(chunk == k)
            out[:, sel] = self.chunks[k][:, row[sel]]
            if self.logdets is not None:
                ld[sel] = self.logdets[k][row[sel]]
        pairs = (torch.from_numpy(out[0]), torch.from_numpy(out[1]))
        return pairs if self.logdets is None else (*pairs, torch.from_numpy(ld))


class ReflowTargets:
    """A complete reflow folder: ``train`` (:class:`ReflowPairs`), ``val`` ((x0, x1[, logdet]) arrays),
    ``provenance``."""

    kind = "reflow"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.provenance = _read_manifest(folder)
        with_ld = bool(self.provenance.get("logdet"))
        missing = [_chunk_name(k) for k in range(int(self.provenance["n_chunks"]))
                   if not _complete(folder, _chunk_name(k), with_ld)]
        val_ok = _complete(folder, "val.npy", with_ld)
        if missing or not val_ok:
            raise BgkitError(f"reflow targets {folder} are incomplete ({len(missing)} of "
                             f"{self.provenance['n_chunks']} chunks missing"
                             + ("" if val_ok else ", validation pairs missing")
                             + "): rerun the `bgkit targets reflow` command that made them to finish")
        _check_sums(folder, self.provenance, with_ld)
        self.train = ReflowPairs(folder, self.provenance)
        val = np.array(_open_npy(folder / "val.npy"))
        self.val = (val[0], val[1], np.array(_open_npy(folder / "val.logdet.npy"))) if with_ld else (val[0], val[1])


def _damaged(path: Path, why: str) -> BgkitError:
    return BgkitError(f"reflow targets file {path} is damaged ({why}): rerun the `bgkit targets reflow` command "
                      "that made the folder to redraw it")


def _open_npy(path: Path) -> np.ndarray:
    """The .npy file ``path`` memory-mapped; BgkitError naming it if it is truncated or not an array file."""
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise _damaged(path, f"{type(exc).__name__}: {exc}") from None


def _check_sums(folder: Path, manifest: dict[str, Any], with_ld: bool) -> None:
    """Every pairs and log-det file of ``folder`` against its SHA-256 in the manifest."""
    sums = manifest.get("sha256")
    if not isinstance(sums, dict):
        raise BgkitError(f"reflow targets {folder} have no checksums (written by an older bgkit): rerun the "
                         "`bgkit targets reflow` command that made them to check the files and record them")
    names = ["val.npy", *(_chunk_name(k) for k in range(int(manifest["n_chunks"])))]
    for name in names:
        for part in ([name, _logdet_name(name)] if with_ld else [name]):
            want = sums.get(part)
            if want is None:
                raise _damaged(folder / part, f"no checksum recorded in {MANIFEST}")
            if file_sha256(folder / part) != want:
                raise _damaged(folder / part, "its SHA-256 does not match the manifest")


def open_reflow(folder: str | Path) -> ReflowTargets:
    """Open a reflow targets folder for training (BgkitError if it is not one, or incomplete)."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise BgkitError(f"{folder} is not a reflow targets folder (no {MANIFEST}): make one with "
                         "`bgkit targets reflow`")
    return ReflowTargets(folder)
