"""Importance weights for Boltzmann-generator samples (chirality checks: :mod:`bgkit.chirality`).

A proposal q draws x; the target is p(x) ∝ exp(-u(x)) with u the *reduced*
energy (u/kT, dimensionless). The unnormalised log importance weight is

    log w(x) = -u(x) - log q(x)          (both in the same coordinate space)

Everything here works in log space (``scipy.special.logsumexp``); samples
whose energy or log-density is not finite (NaN, +inf) get ``log w = -inf``
(zero weight) and are *counted*, never dropped from the arrays, so indices
keep matching the samples.

Shapes: ``N`` samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp

from bgkit import BgkitError
from bgkit.arrays import as_numpy

__all__ = [
    "log_weights",
    "normalized_weights",
    "kish_ess",
    "ess_fraction",
    "clip_log_weights",
    "resample",
    "RESAMPLING_SCHEMES",
    "snis_mean",
    "ReweightResult",
    "reweight",
]


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = as_numpy(x, name)
    if arr.ndim != 1:
        raise BgkitError(f"{name} must be 1-D [N], got shape {arr.shape}")
    return arr


def log_weights(energy_kt: Any, log_q: Any) -> tuple[np.ndarray, int]:
    """Log importance weights ``log w = -u - log q`` and the count of non-finite ones.

    energy_kt: [N] reduced energies u(x)/kT; log_q: [N] proposal log-densities
    in the same coordinates as the target density. Where either is non-finite
    (NaN, ±inf) the log weight is ``-inf``. Returns (log_w [N], n_nonfinite).
    """
    u = _as_1d(energy_kt, "energy_kt")
    lq = _as_1d(log_q, "log_q")
    if u.shape != lq.shape:
        raise BgkitError(f"energy_kt {u.shape} and log_q {lq.shape} differ in length")
    ok = np.isfinite(u) & np.isfinite(lq)
    log_w = np.full(u.shape, -np.inf)
    log_w[ok] = -u[ok] - lq[ok]
    return log_w, int(np.count_nonzero(~ok))


def _check_log_w(log_w: Any) -> np.ndarray:
    lw = _as_1d(log_w, "log_w")
    if np.isnan(lw).any():
        raise BgkitError("log_w contains NaN; use -inf for zero weight")
    if np.isposinf(lw).any():
        raise BgkitError("log_w contains +inf (an infinite weight)")
    return lw


def normalized_weights(log_w: Any) -> np.ndarray:
    """Normalised weights ``exp(log w - LSE(log w))`` [N], summing to 1 (stable)."""
    lw = _check_log_w(log_w)
    if lw.size == 0 or np.all(np.isneginf(lw)):
        raise BgkitError("all importance weights are zero (every log_w is -inf)")
    return np.exp(lw - logsumexp(lw))


def kish_ess(log_w: Any) -> float:
    """Kish effective sample size ``exp(2 LSE(log w) - LSE(2 log w))`` (absolute, in samples).

    Returns 0.0 when every weight is zero (all ``-inf``) or the array is empty.
    """
    lw = _check_log_w(log_w)
    if lw.size == 0 or np.all(np.isneginf(lw)):
        return 0.0
    return float(np.exp(2.0 * logsumexp(lw) - logsumexp(2.0 * lw)))


def ess_fraction(log_w: Any) -> float:
    """Kish ESS divided by the number of samples N (non-finite ones included), in [0, 1]."""
    lw = _check_log_w(log_w)
    return kish_ess(lw) / lw.size if lw.size else 0.0


def clip_log_weights(log_w: Any, fraction: float = 0.002) -> tuple[np.ndarray, int]:
    """Drop the largest ``fraction`` of the finite log-weights (set them to ``-inf``).

    The number dropped is ``floor(fraction * n_finite)``; ties are broken by
    order so exactly that many are dropped. This is the published BG recipe
    (top 0.2 % removed before resampling); it trades a small bias for a much
    lower variance. Returns (clipped copy of log_w [N], n_clipped).
    """
    lw = _check_log_w(log_w).copy()
    if not 0.0 <= fraction < 1.0:
        raise BgkitError(f"clip fraction must be in [0, 1), got {fraction}")
    finite = np.flatnonzero(np.isfinite(lw))
    n_clip = int(np.floor(fraction * finite.size))
    if n_clip:
        top = finite[np.argsort(lw[finite], kind="stable")[-n_clip:]]
        lw[top] = -np.inf
    return lw, n_clip


RESAMPLING_SCHEMES = ("multinomial", "systematic")


def resample(
    log_w: Any,
    n: int | None = None,
    generator: np.random.Generator | None = None,
    seed: int | None = None,
    scheme: str = "multinomial",
) -> np.ndarray:
    """``n`` indices (default N) drawn with probability ∝ w; both schemes are unbiased.

    scheme: "multinomial" (independent draws) or "systematic" (one uniform offset u ~ U[0, 1/n),
    index i taken at every point u + k/n that falls in its share of the cumulative weight: each
    count is floor or ceil of n·w̄_i, so less resampling noise; Douc & Cappé 2005).
    Pass a numpy ``generator`` or a ``seed`` (not both) for reproducibility.
    Returns int64 indices [n] into the samples, sorted ascending.
    """
    p = normalized_weights(log_w)
    if generator is not None and seed is not None:
        raise BgkitError("give either generator or seed to resample, not both")
    if scheme not in RESAMPLING_SCHEMES:
        raise BgkitError(f"unknown resampling scheme {scheme!r}; choices: {', '.join(RESAMPLING_SCHEMES)}")
    rng = generator if generator is not None else np.random.default_rng(seed)
    n = p.size if n is None else int(n)
    if n < 0:
        raise BgkitError(f"number of resampled indices must be >= 0, got {n}")
    if scheme == "systematic":
        points = (rng.random() + np.arange(n)) / max(n, 1)
        edges = np.cumsum(p)
        edges[-1] = 1.0  # rounding: every point lands inside
        return np.minimum(np.searchsorted(edges, points, side="right"), p.size - 1).astype(np.int64)
    counts = rng.multinomial(n, p / p.sum())
    return np.repeat(np.arange(p.size, dtype=np.int64), counts)


def snis_mean(values: Any, log_w: Any) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Self-normalised importance-sampling mean of ``values`` and its standard error.

    values: [N] or [N, k]; log_w: [N]. With normalised weights
    w̄_i = exp(log w_i - LSE(log w)) the estimate is μ = Σ w̄_i f_i and the
    delta-method (linearised ratio) standard error is

        se = sqrt( Σ_i w̄_i² (f_i - μ)² ),

    valid for independent draws (e.g. from a flow), not for correlated MD.
    Samples with zero weight are ignored even if their value is NaN. Returns
    floats for [N] input, arrays [k] for [N, k] input.
    """
    f = as_numpy(values, "values")
    wbar = normalized_weights(log_w)
    if f.ndim not in (1, 2) or f.shape[0] != wbar.size:
        raise BgkitError(f"values must be [N] or [N, k] with N={wbar.size}, got {f.shape}")
    used = wbar > 0
    f_used, w_used = f[used], wbar[used]
    if not np.all(np.isfinite(f_used)):
        raise BgkitError("values are non-finite for samples with non-zero weight")
    w_b = w_used if f.ndim == 1 else w_used[:, None]
    mean = np.sum(w_b * f_used, axis=0)
    stderr = np.sqrt(np.sum(w_b**2 * (f_used - mean) ** 2, axis=0))
    if f.ndim == 1:
        return float(mean), float(stderr)
    return mean, stderr


@dataclass
class ReweightResult:
    """Everything ``bgkit sample`` reports about the importance weights.

    log_w: [N] raw log-weights (-inf where non-finite); log_w_clipped: [N]
    after clipping; ess, ess_fraction: Kish ESS of the raw weights (samples,
    fraction of N); ess_fraction_clipped: the same for the clipped weights;
    n_nonfinite: samples with non-finite energy or log q; n_clipped: weights
    removed by clipping; indices: [n_resample] resampled indices drawn from
    the clipped weights.
    """

    log_w: np.ndarray
    log_w_clipped: np.ndarray
    ess: float
    ess_fraction: float
    ess_fraction_clipped: float
    n_nonfinite: int
    n_clipped: int
    clip_fraction: float
    indices: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.log_w.size)

    def summary(self) -> dict[str, float | int]:
        """Plain-JSON summary (no arrays)."""
        return {
            "n_samples": self.n_samples,
            "ess": self.ess,
            "ess_fraction": self.ess_fraction,
            "ess_fraction_clipped": self.ess_fraction_clipped,
            "n_nonfinite": self.n_nonfinite,
            "n_clipped": self.n_clipped,
            "clip_fraction": self.clip_fraction,
            "n_resampled": int(self.indices.size),
        }


def reweight(
    energy_kt: Any,
    log_q: Any,
    clip_fraction: float = 0.002,
    n_resample: int | None = None,
    seed: int | None = None,
) -> ReweightResult:
    """Log-weights, Kish ESS, clipping and resampling in one call.

    energy_kt, log_q: [N] (reduced energies; proposal log-density in the
    target's coordinate space). ``n_resample`` defaults to N; 0 skips
    resampling. Raises BgkitError when no sample has a finite weight.
    """
    log_w, n_nonfinite = log_weights(energy_kt, log_q)
    if log_w.size == 0 or n_nonfinite == log_w.size:
        raise BgkitError(f"no sample has a finite energy and log q ({n_nonfinite} of {log_w.size})")
    clipped, n_clipped = clip_log_weights(log_w, clip_fraction)
    n = log_w.size if n_resample is None else int(n_resample)
    indices = resample(clipped, n, seed=seed) if n > 0 else np.zeros(0, dtype=np.int64)
    ess = kish_ess(log_w)
    return ReweightResult(
        log_w=log_w,
        log_w_clipped=clipped,
        ess=ess,
        ess_fraction=ess / log_w.size,
        ess_fraction_clipped=ess_fraction(clipped),
        n_nonfinite=n_nonfinite,
        n_clipped=n_clipped,
        clip_fraction=float(clip_fraction),
        indices=indices,
    )
