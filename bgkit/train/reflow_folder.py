"""A reflow targets folder: its files, its manifest and checksums, and reading it for training (streamed).

The folder (written by :func:`bgkit.train.reflow.make_reflow_targets`) holds

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

:class:`ReflowPairs` streams the chunks by memory-mapping them (training never loads all pairs).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bgkit import BgkitError
from bgkit.provenance import file_sha256

__all__ = [
    "FORMAT",
    "IDENTITY",
    "MANIFEST",
    "ReflowPairs",
    "ReflowTargets",
    "chunk_name",
    "complete",
    "differences",
    "logdet_name",
    "open_reflow",
    "read_manifest",
    "verified_sums",
]

MANIFEST = "reflow.json"
FORMAT = "bgkit-reflow-targets/1"
#: manifest fields that must agree before a folder is extended or resumed
IDENTITY = ("teacher_sha256", "seed", "chunk_size", "n_val", "method", "steps", "batch_size", "dim", "logdet",
             "logdet_divergence")
IDENTITY_DEFAULTS = {"logdet": False, "logdet_divergence": "exact"}  # folders written before a field existed


def chunk_name(k: int) -> str:
    return f"chunk_{k:06d}.npy"


def logdet_name(name: str) -> str:
    """The log-det file beside pairs file ``name`` (chunk_000000.npy -> chunk_000000.logdet.npy)."""
    return name[:-len(".npy")] + ".logdet.npy"


def complete(folder: Path, name: str, logdet: bool) -> bool:
    """Whether pairs file ``name`` of ``folder`` is written, with its log-det file when the folder has them."""
    return (folder / name).is_file() and (not logdet or (folder / logdet_name(name)).is_file())


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BgkitError(f"cannot read {folder / MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BgkitError(f"{folder} is not a bgkit reflow targets folder ({MANIFEST} has another format)")
    return manifest


def differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    was = {k: old.get(k, IDENTITY_DEFAULTS.get(k)) for k in IDENTITY}
    diffs = [f"{k} {was[k]!r} -> {new.get(k)!r}" for k in IDENTITY if was[k] != new.get(k)]
    return ", ".join(diffs)


def verified_sums(out: Path, old: dict[str, Any], files: list[str], logdet: bool, note) -> dict[str, str]:
    """The checksums of the finished files of ``out`` that match the manifest ``old``; the files of a damaged or
    unrecorded chunk are removed (to be redrawn) and the user told in one line."""
    recorded = old.get("sha256")
    legacy = not isinstance(recorded, dict)  # written by a bgkit that kept no checksums
    recorded = {} if legacy else recorded
    sums: dict[str, str] = {}
    damaged, adopted = [], 0
    for name in files:
        parts = [name, logdet_name(name)] if logdet else [name]
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


# ---------------------------------------------------------------- reading (streamed)
class ReflowPairs:
    """The training pairs of a reflow folder, memory-mapped: ``n``, ``dim``, ``take(idx) -> (x0, x1[, logdet])``."""

    pairs = True

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.chunk_size = int(manifest["chunk_size"])
        self.dim = int(manifest["dim"])
        self.chunks = [_open_npy(folder / chunk_name(k)) for k in range(int(manifest["n_chunks"]))]
        self.logdets = ([_open_npy(folder / logdet_name(chunk_name(k)))
                         for k in range(len(self.chunks))] if manifest.get("logdet") else None)
        for k, arr in enumerate(self.chunks):
            if arr.shape != (2, self.chunk_size, self.dim):
                raise BgkitError(f"{folder / chunk_name(k)} has shape {arr.shape}, expected "
                                 f"{(2, self.chunk_size, self.dim)}: the folder is damaged; remove that file and "
                                 "rerun `bgkit targets reflow` to remake it")
            if self.logdets is not None and self.logdets[k].shape != (self.chunk_size,):
                raise BgkitError(f"{folder / logdet_name(chunk_name(k))} has shape {self.logdets[k].shape}, expected "
                                 f"{(self.chunk_size,)}: the folder is damaged; remove it and {chunk_name(k)} and "
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
        self.provenance = read_manifest(folder)
        with_ld = bool(self.provenance.get("logdet"))
        missing = [chunk_name(k) for k in range(int(self.provenance["n_chunks"]))
                   if not complete(folder, chunk_name(k), with_ld)]
        val_ok = complete(folder, "val.npy", with_ld)
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
    names = ["val.npy", *(chunk_name(k) for k in range(int(manifest["n_chunks"])))]
    for name in names:
        for part in ([name, logdet_name(name)] if with_ld else [name]):
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
