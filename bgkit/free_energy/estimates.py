"""Free-energy differences between states (kT): counting in unbiased MD and reweighting a proposal.

* Counting: ΔF_AB = −ln(N_B / N_A), errors by a bootstrap over contiguous
  time blocks (blocks must be longer than the correlation time).
* Reweighting: ΔF_AB = −ln(Σ_B w / Σ_A w) in log space, with a delta-method
  error (independent samples).

Sign convention: ΔF_AB = F_B − F_A = −ln(Z_B / Z_A).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import logsumexp

from bgkit import BgkitError
from bgkit.arrays import as_numpy
from bgkit.free_energy.states import as_mask, time_blocks

__all__ = ["delta_f_counting", "delta_f_reweighting"]


def _neg_log_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -(np.log(num) - np.log(den))


def _bootstrap_std(values: np.ndarray) -> float:
    if not np.all(np.isfinite(values)):
        return math.inf
    return float(np.std(values, ddof=1))


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
    blocks = time_blocks(a.size, block_size, n_blocks)
    count_a = np.array([a[i].sum() for i in blocks], dtype=np.float64)
    count_b = np.array([b[i].sum() for i in blocks], dtype=np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(blocks), size=(int(n_boot), len(blocks)))
    boot = _neg_log_ratio(count_b[pick].sum(axis=1), count_a[pick].sum(axis=1))
    delta_f = float(_neg_log_ratio(np.float64(b.sum()), np.float64(a.sum())))
    return delta_f, _bootstrap_std(boot)


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
