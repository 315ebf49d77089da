"""Benchmark metrics of Boltzmann generators: E-W2, T-W2, NLL.

Definitions follow the published BG benchmarks:

* E-W2 = sqrt(ot.emd2_1d(E_ref, E_model)), energies reduced (kT);
* T-W2 = sqrt of the exact optimal-transport cost (``ot.emd2``) between sets
  of backbone torsions (:func:`bgkit.dihedrals.torsions`) with the periodic cost
  Σ_k min(|Δ_k|, 2π − |Δ_k|)²; angles in radians, result in radians;
* NLL = mean of −log q over held-out data.

Weights, where accepted, are linear and non-negative (they need not sum to
one); from log-weights use ``bgkit.reweight.normalized_weights(log_w)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bgkit import BgkitError
from bgkit.arrays import as_numpy

__all__ = [
    "RAMA_TV_BINS",
    "energy_w2_with_counts",
    "nll",
    "ramachandran_tv",
    "torsion_cost_matrix",
    "torsion_w2",
]

#: Iteration limit for the network-simplex solver in ``ot.emd2`` (POT's default,
#: 1e5, is too small for 10k x 10k problems).
EMD_MAX_ITER = 100_000_000


def _weights(w: Any, n: int, name: str) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    arr = as_numpy(w, name).reshape(-1)
    if arr.size != n:
        raise BgkitError(f"{name} has {arr.size} entries for {n} samples")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise BgkitError(f"{name} must be finite and non-negative")
    if arr.sum() <= 0:
        raise BgkitError(f"{name} are all zero")
    return arr / arr.sum()


def energy_w2_with_counts(
    e_ref_kt: Any, e_model_kt: Any, weights: Any = None
) -> tuple[float, int, int]:
    """E-W2 plus the number of non-finite energies dropped from each set.

    e_ref_kt: [n] reference (MD) energies, e_model_kt: [m] model energies (kT);
    weights: optional [m] non-negative weights of the model samples (the
    reweighted set). Non-finite energies (NaN, ±inf) and their weights are
    dropped before the transport. Returns (E-W2 in kT, n_dropped_ref,
    n_dropped_model).
    """
    import ot

    e_ref = as_numpy(e_ref_kt, "e_ref_kt").reshape(-1)
    e_mod = as_numpy(e_model_kt, "e_model_kt").reshape(-1)
    w_mod = None if weights is None else _weights(weights, e_mod.size, "weights")
    ok_ref, ok_mod = np.isfinite(e_ref), np.isfinite(e_mod)
    if not ok_ref.any() or not ok_mod.any():
        raise BgkitError("E-W2 needs at least one finite energy in each set")
    b = None if w_mod is None else w_mod[ok_mod]
    if b is not None:
        if b.sum() <= 0:
            raise BgkitError("all model samples with finite energy have zero weight")
        b = b / b.sum()
    a = np.full(int(ok_ref.sum()), 1.0 / ok_ref.sum())
    b = np.full(int(ok_mod.sum()), 1.0 / ok_mod.sum()) if b is None else b
    cost = ot.emd2_1d(e_ref[ok_ref], e_mod[ok_mod], a, b, metric="sqeuclidean")
    value = float(np.sqrt(max(float(cost), 0.0)))
    return value, int((~ok_ref).sum()), int((~ok_mod).sum())


def torsion_cost_matrix(angles_a: np.ndarray, angles_b: np.ndarray) -> np.ndarray:
    """Periodic squared cost [n, m]: Σ_k min(|Δ_k|, 2π − |Δ_k|)² for angles [n, k], [m, k] (rad)."""
    cost = np.zeros((angles_a.shape[0], angles_b.shape[0]))
    for k in range(angles_a.shape[1]):
        d = np.abs(np.subtract.outer(angles_a[:, k], angles_b[:, k]))
        d = np.remainder(d, 2.0 * np.pi)
        np.minimum(d, 2.0 * np.pi - d, out=d)
        cost += d * d
    return cost


def _subsample(
    x: np.ndarray, w: np.ndarray | None, max_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if x.shape[0] > max_samples:
        idx = np.sort(rng.choice(x.shape[0], size=max_samples, replace=False))
        x = x[idx]
        w = None if w is None else w[idx]
    if w is None:
        return x, np.full(x.shape[0], 1.0 / x.shape[0])
    if w.sum() <= 0:
        raise BgkitError("the subsampled weights are all zero")
    return x, w / w.sum()


def torsion_w2(
    angles_ref: Any,
    angles_model: Any,
    max_samples: int = 10_000,
    seed: int | None = None,
    weights: Any = None,
) -> float:
    """Torsion 2-Wasserstein distance (rad) by exact OT on the torus.

    angles_ref: [n, k], angles_model: [m, k] (rad, any branch); weights:
    optional [m] non-negative model weights (reweighted set). Each set is
    subsampled uniformly without replacement to ``max_samples`` (weights
    carried along and renormalised). Cost matrix and solver memory grow as
    max_samples² (10k x 10k: ~0.8 GB per matrix); runtime ~n^2.8. Rows with
    non-finite angles raise BgkitError.
    """
    import ot

    a_ref = as_numpy(angles_ref, "angles_ref")
    a_mod = as_numpy(angles_model, "angles_model")
    a_ref = a_ref[:, None] if a_ref.ndim == 1 else a_ref
    a_mod = a_mod[:, None] if a_mod.ndim == 1 else a_mod
    if a_ref.ndim != 2 or a_mod.ndim != 2 or a_ref.shape[1] != a_mod.shape[1]:
        raise BgkitError(f"angle arrays must be [n, k] and [m, k], got {a_ref.shape}, {a_mod.shape}")
    if a_ref.shape[0] == 0 or a_mod.shape[0] == 0:
        raise BgkitError("T-W2 needs at least one sample in each set")
    if not (np.all(np.isfinite(a_ref)) and np.all(np.isfinite(a_mod))):
        raise BgkitError("torsion angles contain non-finite values")
    w_mod = None if weights is None else _weights(weights, a_mod.shape[0], "weights")
    rng = np.random.default_rng(seed)
    x, a = _subsample(a_ref, None, int(max_samples), rng)
    y, b = _subsample(a_mod, w_mod, int(max_samples), rng)
    cost = torsion_cost_matrix(x, y)
    w2 = ot.emd2(a, b, cost, numItermax=EMD_MAX_ITER)
    return float(np.sqrt(max(float(w2), 0.0)))


def nll(log_q_nm: Any) -> float:
    """Mean negative log-likelihood −⟨log q(x)⟩ of held-out data (nats per sample).

    log_q_nm: [N] log-densities of the proposal at data points, in the
    original Cartesian coordinates in nm (units of log nm^-D, D the number of
    coordinates the density is defined on — the same space as used for the
    importance weights). A sample with log q = −inf gives +inf; NaN raises.
    """
    lq = as_numpy(log_q_nm, "log_q_nm").reshape(-1)
    if lq.size == 0:
        raise BgkitError("nll needs at least one log-density")
    if np.isnan(lq).any():
        raise BgkitError(f"log_q contains {int(np.isnan(lq).sum())} NaN values")
    return float(-np.mean(lq))


#: Ramachandran histogram bins per angle for :func:`ramachandran_tv` (10° wide)
RAMA_TV_BINS = 36


def ramachandran_tv(phi_a: Any, psi_a: Any, phi_b: Any, psi_b: Any, weights_a: Any = None,
                    weights_b: Any = None, bins: int = RAMA_TV_BINS) -> float:
    """Total-variation distance ½ Σ |p_a − p_b| between two (weighted) φ/ψ histograms on [−π, π)².

    Angles [n] in rad, ``bins`` × ``bins`` bins (default 36: 10°); weights linear, non-negative
    (None: uniform). 0 for identical histograms, 1 for disjoint ones. A finite sample's histogram is
    noisy, so two samples of the same distribution give TV > 0: compare with the same value between
    two blocks of MD (the noise floor).
    """
    def histogram(phi: Any, psi: Any, w: Any) -> np.ndarray:
        phi, psi = np.asarray(phi, dtype=np.float64), np.asarray(psi, dtype=np.float64)
        wrap = lambda a: (a + np.pi) % (2 * np.pi) - np.pi  # noqa: E731
        h, _, _ = np.histogram2d(wrap(phi), wrap(psi), bins=bins, range=[[-np.pi, np.pi], [-np.pi, np.pi]],
                                 weights=None if w is None else _weights(w, len(phi), "weights"))
        total = h.sum()
        if not total > 0:
            raise BgkitError("a Ramachandran histogram for the TV distance is empty (no samples with weight)")
        return h / total

    return float(0.5 * np.abs(histogram(phi_a, psi_a, weights_a) - histogram(phi_b, psi_b, weights_b)).sum())
