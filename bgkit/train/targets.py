"""Regression targets for RegFlow: optimal-transport pairs and the targets file.

RegFlow (Rehman et al., arXiv 2506.01158) regresses a flow onto a fixed
coupling (x0, x1) of prior draws x0 ~ N(0, I) and data x1. Two couplings:

* **OT** (:func:`ot_pairs`): the exact assignment minimising
  Σ_i ||x0_i − x1_σ(i)||² (uniform weights, so the optimal plan is a
  permutation). Solved with POT's network simplex ``ot.emd``; if its plan is
  not a permutation or it stopped early, scipy's ``linear_sum_assignment``
  (Jonker–Volgenant) is used instead.
* **reflow**: x1 = x0 + ∫₀¹ v_t(x_t) dt from a CNF teacher (computed
  elsewhere) — stored in the same file format with ``kind="reflow"``.

Cost of exact OT: time O(n^3) per block (network simplex / Hungarian; the
iteration count depends on the data). Measured for 66-D data on 2 busy x86-64
cores (bgkit design notes): n = 2000 ~15 s, n = 5000 ~150–185 s, growing
~n^2.8, ``ot.emd`` and ``linear_sum_assignment`` alike; re-measured with this
module (POT 0.9.7, one thread, Gaussian-like 66-D data): n = 2000 2.9 s,
n = 4096 14 s, n = 5000 23 s. Memory ~2·n² float64 (cost matrix + plan:
268 MB at n = 4096). Exact OT over a whole 100k-frame data set (~10^4 times
the n = 4096 cost, 160 GB of cost matrix) is out of reach, so
:func:`ot_pairs` shuffles the data with the seed and pairs random blocks of
at most ``block_size`` frames independently (each block an exact OT
problem); the coupling is optimal within blocks only. Default block 4096:
100k frames = 25 blocks, roughly 6–40 min on one core.
"""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bgkit import BgkitError
from bgkit.provenance import atomic_write_bytes, dumps_json

__all__ = ["pair_cost", "ot_assignment", "ot_pairs", "Targets", "save_targets", "load_targets", "TARGET_KINDS"]

TARGET_KINDS = ("ot", "reflow")
_FORMAT = "bgkit-targets"
_FORMAT_VERSION = 1


def pair_cost(x0: np.ndarray, x1: np.ndarray, periodic: tuple[int, ...] | list[int] = ()) -> np.ndarray:
    """Cost matrix [m, n]: squared Euclidean distance, with the squared geodesic (wrapped)
    difference wrap(a − b)² on the circle for the ``periodic`` dimensions (torsions, rad)."""
    import ot  # noqa: PLC0415

    per = np.zeros(x0.shape[1], dtype=bool)
    per[list(periodic)] = True
    cost = ot.dist(x0[:, ~per], x1[:, ~per], metric="sqeuclidean") if (~per).any() else np.zeros((len(x0), len(x1)))
    for d in np.flatnonzero(per):
        diff = np.remainder(x0[:, d, None] - x1[None, :, d] + np.pi, 2 * np.pi) - np.pi
        cost += diff * diff
    return cost


def ot_assignment(x0: np.ndarray, x1: np.ndarray, periodic: tuple[int, ...] | list[int] = ()) -> np.ndarray:
    """Exact OT assignment between two equal-size sets for the cost of :func:`pair_cost`.

    Args:
        x0: [m, D] source points. x1: [m, D] target points. periodic: angle dimensions.
    Returns:
        perm: [m] int64 permutation such that Σ_i c(x0[i], x1[perm[i]]) is
        minimal (c: squared Euclidean, wrapped on periodic dimensions).
    """
    import ot  # noqa: PLC0415
    from scipy.optimize import linear_sum_assignment  # noqa: PLC0415

    x0 = np.asarray(x0, dtype=np.float64)
    x1 = np.asarray(x1, dtype=np.float64)
    m = x0.shape[0]
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    cost = pair_cost(x0, x1, periodic)  # [m, m]
    w = np.full(m, 1.0 / m)
    plan, log = ot.emd(w, w, cost, numItermax=max(100_000, 50 * m * m), log=True)
    perm = plan.argmax(axis=1)
    is_perm = (
        log.get("warning") is None
        and np.unique(perm).size == m
        and np.allclose(plan[np.arange(m), perm], 1.0 / m, rtol=1e-6, atol=0.0)
    )
    if not is_perm:
        _, perm = linear_sum_assignment(cost)
    return np.asarray(perm, dtype=np.int64)


def ot_pairs(
    x1: np.ndarray,
    seed: int,
    block_size: int = 4096,
    return_index: bool = False,
    progress: bool = False,
    periodic: tuple[int, ...] | list[int] = (),
) -> tuple[np.ndarray, ...]:
    """Pair n prior draws x0 with the n data frames by blocked exact OT.

    The prior is the flows' (:mod:`bgkit.flows.base`): N(0, 1) per ordinary
    dimension, uniform on [-pi, pi) per ``periodic`` dimension; the cost is
    :func:`pair_cost` (wrapped differences on periodic dimensions).

    The frames are shuffled with ``seed`` and split into
    ceil(n / block_size) blocks of near-equal size (≤ ``block_size``); each
    block gets fresh prior draws and is paired by :func:`ot_assignment`.
    Every frame appears exactly once in the output.

    Args:
        x1: [n, D] data in flow space (already centred/scaled).
        seed: seeds the shuffle and the prior draws (numpy ``default_rng``).
        block_size: maximum frames per exact OT problem (time ~block³,
            memory ~16·block² bytes; see the module docstring).
        return_index: also return the frame index of each pair.
        progress: show a tqdm bar over blocks.
    Returns:
        ``(x0, x1_paired)`` — both [n, D], row i is a pair, dtype of x1 if it
        is floating, else float64 — plus ``index`` [n] int64 with
        ``x1_paired = x1[index]`` when ``return_index``.
    """
    x1 = np.asarray(x1)
    if x1.ndim != 2 or x1.shape[0] == 0 or x1.shape[1] == 0:
        raise BgkitError(f"ot_pairs needs data of shape [n, D] with n, D > 0, got {x1.shape}")
    if not np.all(np.isfinite(x1)):
        raise BgkitError("ot_pairs: data contain NaN or inf values")
    if int(block_size) < 1:
        raise BgkitError(f"ot_pairs: block_size must be >= 1, got {block_size}")
    from bgkit.limits import check_memory  # noqa: PLC0415

    m = min(int(block_size), x1.shape[0])  # the cost matrix and the plan of one block, float64
    check_memory("--block-size", block_size, 2 * 8 * m * m, f"the exact OT of blocks of {m} pairs")
    dtype = x1.dtype if np.issubdtype(x1.dtype, np.floating) else np.float64
    n, dim = x1.shape
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    blocks = np.array_split(order, math.ceil(n / int(block_size)))
    x0_out = np.empty((n, dim), dtype=dtype)
    index = np.empty(n, dtype=np.int64)
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        blocks_iter = tqdm(blocks, desc="OT blocks", unit="block")
    else:
        blocks_iter = blocks
    start = 0
    for block in blocks_iter:
        m = block.size
        z = rng.standard_normal((m, dim))
        if len(periodic):
            z[:, list(periodic)] = rng.uniform(-np.pi, np.pi, size=(m, len(periodic)))
        perm = ot_assignment(z, x1[block], periodic)
        x0_out[start : start + m] = z
        index[start : start + m] = block[perm]
        start += m
    x1_paired = x1[index].astype(dtype, copy=False)
    if return_index:
        return x0_out, x1_paired, index
    return x0_out, x1_paired


class Targets(NamedTuple):
    """A stored RegFlow coupling: rows of ``x0`` [n, D] map to rows of ``x1``."""

    x0: np.ndarray
    x1: np.ndarray
    kind: str
    provenance: dict[str, Any]


def save_targets(
    path: str | os.PathLike,
    x0: np.ndarray,
    x1: np.ndarray,
    provenance: dict[str, Any] | None = None,
    kind: str = "ot",
) -> Path:
    """Atomically write a targets file (uncompressed ``.npz``).

    Arrays ``x0``, ``x1`` ([n, D], flow-space units, i.e. after the coordinate
    scaling) plus 0-d strings ``format``, ``kind`` ("ot" | "reflow") and
    ``provenance`` (JSON). Readable with plain ``numpy.load``.
    """
    if kind not in TARGET_KINDS:
        raise BgkitError(f"targets kind must be one of {TARGET_KINDS}, got {kind!r}")
    x0 = np.asarray(x0)
    x1 = np.asarray(x1)
    _check_pair(x0, x1, "save_targets")
    buf = io.BytesIO()
    np.savez(
        buf,
        x0=x0,
        x1=x1,
        format=np.array(f"{_FORMAT}/{_FORMAT_VERSION}"),
        kind=np.array(kind),
        provenance=np.array(dumps_json(provenance or {}, indent=None)),
    )
    return atomic_write_bytes(buf.getvalue(), path)


def load_targets(path: str | os.PathLike) -> Targets:
    """Read a file written by :func:`save_targets`.

    Raises BgkitError if the file is missing, truncated, corrupted (zip CRC
    check of every member), not a bgkit targets file, or inconsistent.
    """
    from bgkit.io import verify_zip

    path = Path(path)
    verify_zip(path, "targets file")
    try:
        with np.load(path, allow_pickle=False) as data:
            fmt = str(data["format"])
            kind = str(data["kind"])
            prov = json.loads(str(data["provenance"]))
            x0 = np.array(data["x0"])
            x1 = np.array(data["x1"])
    except BgkitError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, KeyError, ValueError, OSError, ...
        raise BgkitError(f"cannot read targets file {path}: {type(exc).__name__}: {exc}") from None
    name, _, version = fmt.partition("/")
    if name != _FORMAT:
        raise BgkitError(f"{path} is not a bgkit targets file (format {fmt!r})")
    if not version.isdigit() or int(version) < 1:
        raise BgkitError(f"targets file {path} has a malformed format {fmt!r} (no version number): the file is "
                         "damaged or was not written by bgkit")
    if int(version) > _FORMAT_VERSION:
        raise BgkitError(f"targets file {path} has format version {version}; this bgkit reads versions up to "
                         f"{_FORMAT_VERSION}: update bgkit")
    if kind not in TARGET_KINDS:
        raise BgkitError(f"targets file {path} has unknown kind {kind!r}")
    _check_pair(x0, x1, f"targets file {path}")
    return Targets(x0=x0, x1=x1, kind=kind, provenance=prov)


def _check_pair(x0: np.ndarray, x1: np.ndarray, where: str) -> None:
    if x0.ndim != 2 or x0.shape != x1.shape or x0.shape[0] == 0:
        raise BgkitError(f"{where}: x0 and x1 must both be [n, D] with n > 0, got {x0.shape} and {x1.shape}")
    if not (np.all(np.isfinite(x0)) and np.all(np.isfinite(x1))):
        raise BgkitError(f"{where}: x0/x1 contain NaN or inf values")
