"""Importance weights for Boltzmann-generator samples, and chirality checks.

A proposal q draws x; the target is p(x) ∝ exp(-u(x)) with u the *reduced*
energy (u/kT, dimensionless). The unnormalised log importance weight is

    log w(x) = -u(x) - log q(x)          (both in the same coordinate space)

Everything here works in log space (``scipy.special.logsumexp``); samples
whose energy or log-density is not finite (NaN, +inf) get ``log w = -inf``
(zero weight) and are *counted*, never dropped from the arrays, so indices
keep matching the samples.

Shapes: ``N`` samples, ``B`` frames, ``n_atoms`` atoms; positions in nm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp

from bgkit import BgkitError

__all__ = [
    "as_numpy",
    "log_weights",
    "normalized_weights",
    "kish_ess",
    "ess_fraction",
    "clip_log_weights",
    "resample",
    "snis_mean",
    "ReweightResult",
    "reweight",
    "chiral_centres",
    "chirality_signs",
    "check_chirality",
    "mirror",
]


def as_numpy(x: Any, name: str = "array") -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor, list) as a float64 numpy array."""
    if hasattr(x, "detach"):  # torch tensor, converted without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BgkitError(f"{name} is not a numeric array: {exc}") from None


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


def resample(
    log_w: Any,
    n: int | None = None,
    generator: np.random.Generator | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """Multinomial resampling: ``n`` indices (default N) drawn with probability ∝ w.

    Pass a numpy ``generator`` or a ``seed`` (not both) for reproducibility.
    Returns int64 indices [n] into the samples, sorted ascending.
    """
    p = normalized_weights(log_w)
    if generator is not None and seed is not None:
        raise BgkitError("give either generator or seed to resample, not both")
    rng = generator if generator is not None else np.random.default_rng(seed)
    n = p.size if n is None else int(n)
    if n < 0:
        raise BgkitError(f"number of resampled indices must be >= 0, got {n}")
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


# --------------------------------------------------------------------------- chirality


def chiral_centres(topology: Any) -> np.ndarray:
    """Cα chiral centres of a protein topology (mdtraj.Topology): int array [k, 4].

    Each row is (N, C, CB, CA) of one residue that has all four atoms (glycine,
    lacking CB, is skipped; caps such as ACE/NME have no CA). The signed
    volume of a row is ``(N - CA) · ((C - CA) × (CB - CA))``; L-amino acids
    give a positive volume with this ordering (checked on the openmmtools
    alanine dipeptide and the shipped ala2/ala3/ala4 PDBs).
    Returns an empty [0, 4] array when there are no such residues.
    """
    quads = []
    for res in topology.residues:
        atoms = {a.name: a.index for a in res.atoms}
        if all(name in atoms for name in ("N", "C", "CB", "CA")):
            quads.append([atoms["N"], atoms["C"], atoms["CB"], atoms["CA"]])
    return np.asarray(quads, dtype=np.int64).reshape(-1, 4)


def _frames(xyz: Any) -> np.ndarray:
    x = as_numpy(xyz, "xyz")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise BgkitError(f"positions must be [B, n_atoms, 3] or [n_atoms, 3], got {x.shape}")
    return x


def chirality_signs(xyz: Any, quads: Any) -> np.ndarray:
    """Sign (-1, 0, +1; NaN for non-finite positions) of each centre's signed volume.

    xyz: [B, n_atoms, 3] or [n_atoms, 3] (nm); quads: [k, 4] from
    ``chiral_centres``. Returns [B, k] float64.
    """
    x = _frames(xyz)
    q = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    if q.size and (q.min() < 0 or q.max() >= x.shape[1]):
        raise BgkitError(f"chiral-centre atom index out of range for {x.shape[1]} atoms")
    centre = x[:, q[:, 3]]
    a, b, c = (x[:, q[:, i]] - centre for i in range(3))
    volume = np.einsum("bki,bki->bk", a, np.cross(b, c))
    return np.sign(volume)


def check_chirality(xyz: Any, quads: Any, reference_signs: Any) -> np.ndarray:
    """Bool mask [B]: True where every chiral centre has the reference sign.

    reference_signs: [k], e.g. ``chirality_signs(system_pdb_xyz, quads)[0]``
    computed from the system's reference structure. A frame with a planar
    (zero-volume) or non-finite centre fails.
    """
    signs = chirality_signs(xyz, quads)
    ref = as_numpy(reference_signs, "reference_signs").reshape(-1)
    if ref.size != signs.shape[1]:
        raise BgkitError(f"reference_signs has {ref.size} centres, quads has {signs.shape[1]}")
    if ref.size and not np.all(np.abs(ref) == 1):
        raise BgkitError("reference_signs must be ±1 (reference structure has a planar centre)")
    return np.all(signs == ref[None, :], axis=1)


def mirror(xyz: Any) -> np.ndarray:
    """Mirror image (x → -x) of positions [..., 3]; flips every chiral centre."""
    x = as_numpy(xyz, "xyz").copy()
    if x.shape[-1:] != (3,):
        raise BgkitError(f"positions must end in a dimension of 3, got {x.shape}")
    x[..., 0] *= -1.0
    return x
