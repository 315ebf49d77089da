"""Populations of states in frames and ΔF from them (kT): counting in unbiased MD, reweighting a proposal.

* Basin populations: fractions of unbiased, time-ordered frames in each state, errors by a bootstrap over
  contiguous time blocks (:func:`bgkit.blocks.block_bootstrap`; blocks must be longer than the
  correlation time), and the fractions in each half of the frames.
* Counting: ΔF_AB = −ln(N_B / N_A), errors by the same block bootstrap.
* Reweighting: ΔF_AB = −ln(Σ_B w / Σ_A w) in log space, with a delta-method
  error (independent samples).

Sign convention: ΔF_AB = F_B − F_A = −ln(Z_B / Z_A).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy.special import logsumexp

from bgkit import BgkitError
from bgkit.arrays import as_numpy
from bgkit.blocks import block_bootstrap, block_sums, bootstrap_fractions, bootstrap_std, time_blocks

__all__ = ["Population", "as_mask", "basin_populations", "delta_f_counting", "delta_f_reweighting"]


def as_mask(m: Any, name: str) -> np.ndarray:
    """``m`` (numpy array, torch tensor, list) as a 1-D boolean numpy mask [n] (BgkitError otherwise)."""
    arr = np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m)
    if arr.ndim != 1 or arr.dtype != bool:
        raise BgkitError(f"{name} must be a 1-D boolean mask, got {arr.dtype} {arr.shape}")
    return arr


def _resampled_sums(masks: list[np.ndarray], blocks: list[np.ndarray], n_boot: int, seed: int | None
                    ) -> list[np.ndarray]:
    """Per mask [n] (and in that order), its frame count in each of ``n_boot`` block-bootstrap replicates [n_boot]."""
    per_block = block_sums(np.column_stack(masks), blocks)  # [n_blocks, k]: each block is one element below
    sums = block_bootstrap(lambda s: s.sum(axis=0), per_block, n_blocks=len(per_block), n_boot=n_boot, seed=seed)
    return list(np.ascontiguousarray(sums.T))


def _neg_log_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -(np.log(num) - np.log(den))


class Population(NamedTuple):
    """Fraction of frames in a state with its block-bootstrap error and per-half fractions."""

    fraction: float
    stderr: float
    first_half: float
    second_half: float


def basin_populations(
    masks: dict[str, Any],
    n_blocks: int | None = None,
    block_size: int | None = None,
    n_boot: int = 1000,
    seed: int | None = None,
) -> dict[str, Population]:
    """Population of each state in time-ordered frames, with block-bootstrap errors.

    masks: {name: bool [n_frames]} (e.g. from :func:`bgkit.free_energy.states.state_masks`). Blocks:
    ``block_size`` frames or ``n_blocks`` blocks (default 20, :func:`bgkit.blocks.time_blocks`); the same
    resampled blocks are used for every state. Compare ``first_half`` and ``second_half`` to see whether a
    rare basin is converged.
    """
    arrays = {k: as_mask(m, k) for k, m in masks.items()}
    if not arrays:
        raise BgkitError("no states given")
    n = {m.size for m in arrays.values()}
    if len(n) != 1:
        raise BgkitError(f"state masks differ in length: {sorted(n)}")
    n_frames = n.pop()
    blocks = time_blocks(n_frames, block_size, n_blocks)
    replicates = bootstrap_fractions(np.column_stack(list(arrays.values())), blocks, n_boot, seed)
    half = n_frames // 2
    return {name: Population(fraction=float(m.mean()), stderr=bootstrap_std(replicates[:, j]),
                             first_half=float(m[:half].mean()) if half else math.nan,
                             second_half=float(m[half:].mean()))
            for j, (name, m) in enumerate(arrays.items())}


def delta_f_counting(
    mask_a: Any,
    mask_b: Any,
    block_size: int | None = None,
    n_blocks: int | None = None,
    n_boot: int = 1000,
    seed: int | None = None,
) -> tuple[float, float]:
    """ΔF_AB = −ln(N_B / N_A) (kT) from unbiased, time-ordered frames, with a block-bootstrap error.

    mask_a, mask_b: bool [n_frames] in trajectory order. Frames are split into
    contiguous blocks (``block_size`` frames, or ``n_blocks`` blocks; default
    20 blocks) that are resampled with replacement ``n_boot`` times; the error
    is the standard deviation of the bootstrap ΔF. A state never visited gives
    ΔF = ±inf; an error of inf means some bootstrap replicate missed a state.
    """
    a, b = as_mask(mask_a, "mask_a"), as_mask(mask_b, "mask_b")
    if a.shape != b.shape:
        raise BgkitError(f"mask_a {a.shape} and mask_b {b.shape} differ in length")
    count_a, count_b = _resampled_sums([a, b], time_blocks(a.size, block_size, n_blocks), n_boot, seed)
    delta_f = float(_neg_log_ratio(np.float64(b.sum()), np.float64(a.sum())))
    return delta_f, bootstrap_std(_neg_log_ratio(count_b, count_a))


def delta_f_reweighting(mask_a: Any, mask_b: Any, log_w: Any) -> tuple[float, float]:
    """ΔF_AB = −ln(Σ_B w / Σ_A w) (kT) from importance-weighted independent samples.

    mask_a, mask_b: bool [N]; log_w: [N] (−inf = zero weight). The error is
    the delta-method standard error of the log ratio of the two weighted
    means, var = N/(N−1) Σ_i (b_i p^B_i − a_i p^A_i)², with p^S_i = w_i / Σ_S w
    (≈ 1/ESS_A + 1/ESS_B for disjoint states). A state with zero total weight
    gives ΔF = ±inf (nan if both) and an error of inf.
    """
    a, b = as_mask(mask_a, "mask_a"), as_mask(mask_b, "mask_b")
    lw = as_numpy(log_w, "log_w").reshape(-1)
    if not (a.shape == b.shape == lw.shape):
        raise BgkitError(f"mask_a {a.shape}, mask_b {b.shape}, log_w {lw.shape} differ in shape")
    if np.isnan(lw).any() or np.isposinf(lw).any():
        raise BgkitError("log_w contains NaN or +inf")
    lse_a = logsumexp(lw[a]) if a.any() else -math.inf
    lse_b = logsumexp(lw[b]) if b.any() else -math.inf
    if not (math.isfinite(lse_a) and math.isfinite(lse_b)):
        return float(_neg_log_ratio(np.exp(lse_b), np.exp(lse_a))), math.inf
    n = lw.size
    p_a = np.zeros(lw.size)
    p_b = np.zeros(lw.size)
    p_a[a] = np.exp(lw[a] - lse_a)  # only inside each state: outside, lw - lse may overflow
    p_b[b] = np.exp(lw[b] - lse_b)
    var = n / (n - 1) * np.sum((p_b - p_a) ** 2) if n > 1 else math.inf
    return float(-(lse_b - lse_a)), float(math.sqrt(var))
