"""ΔF from works: forward and reverse works of a map, EXP and BAR (pymbar 4) with overlap diagnostics, in kT.

With a map M: A → B (Jarzynski, PRE 65, 046122 (2002); Wirnsberger et al.,
J. Chem. Phys. 153, 144112 (2020)): W_F(x) = u_B(M(x)) − u_A(x) − ln|det J_M(x)|
for x ~ A, and the reverse works with M⁻¹ on samples of B. :func:`exp_estimate` is bgkit's one
EXP estimator (also inside the block bootstrap of :func:`bgkit.free_energy.learned_map.works_block_errors`).

Sign convention: ΔF_AB = F_B − F_A = −ln(Z_B / Z_A).
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from bgkit import BgkitError
from bgkit.arrays import as_numpy
from bgkit.reweight import kish_ess

__all__ = ["BAR_CAP_MARGIN", "FepResult", "bar_estimate", "exp_estimate", "forward_works", "reverse_works"]


def _works_input(x: Any, name: str) -> np.ndarray:
    return as_numpy(x, name).reshape(-1)


def forward_works(u_a_x: Any, u_b_mx: Any, logdet_m: Any) -> np.ndarray:
    """Forward works W_F = u_B(M(x)) − u_A(x) − ln|det J_M(x)| [N] (kT) for x ~ A.

    u_a_x: [N] reduced energies of the samples of A; u_b_mx: [N] reduced
    B-energies of the mapped samples; logdet_m: [N] ln|det J_M(x)|. A
    non-finite u_B(M(x)) gives a non-finite work (zero weight, counted by the
    estimators); a non-finite u_A(x) is an error (corrupt sample of A).
    """
    return _works(u_a_x, u_b_mx, logdet_m, "u_a_x", "u_b_mx", "logdet_m")


def reverse_works(u_b_y: Any, u_a_minv_y: Any, logdet_minv: Any) -> np.ndarray:
    """Reverse works W_R = u_A(M⁻¹(y)) − u_B(y) − ln|det J_{M⁻¹}(y)| [N] (kT) for y ~ B.

    ln|det J_{M⁻¹}(y)| = −ln|det J_M(M⁻¹(y))|. Same conventions as ``forward_works``.
    """
    return _works(u_b_y, u_a_minv_y, logdet_minv, "u_b_y", "u_a_minv_y", "logdet_minv")


def _works(u_start: Any, u_end: Any, logdet: Any, n0: str, n1: str, n2: str) -> np.ndarray:
    u0, u1, ld = _works_input(u_start, n0), _works_input(u_end, n1), _works_input(logdet, n2)
    if not (u0.shape == u1.shape == ld.shape):
        raise BgkitError(f"{n0} {u0.shape}, {n1} {u1.shape}, {n2} {ld.shape} differ in length")
    if not np.all(np.isfinite(u0)):
        raise BgkitError(f"{n0} has {int((~np.isfinite(u0)).sum())} non-finite energies of the sampled state")
    with np.errstate(invalid="ignore"):
        return u1 - u0 - ld


@dataclass
class FepResult:
    """A free-energy estimate ΔF_AB = F_B − F_A with its diagnostics (all kT).

    ess_fraction_forward / _reverse: Kish ESS / N of exp(−W) in each direction
    (overlap diagnostic; nan where that direction was not used);
    n_nonfinite: works that were NaN/+inf (given zero Boltzmann factor);
    hysteresis_kt (BAR only, else nan): forward-EXP ΔF minus reverse-EXP ΔF;
    |hysteresis| much larger than the error means the two sets barely overlap,
    which the ESS fractions alone miss when the works are large but similar.
    """

    delta_f_kt: float
    stderr_kt: float
    method: str
    n_forward: int
    n_reverse: int
    ess_fraction_forward: float
    ess_fraction_reverse: float
    n_nonfinite: int
    hysteresis_kt: float = math.nan


def _clean_works(w: Any, name: str) -> tuple[np.ndarray, int]:
    """Works with NaN mapped to +inf (zero weight); −inf (infinite weight) is an error."""
    arr = _works_input(w, name)
    if arr.size == 0:
        raise BgkitError(f"{name} is empty")
    if np.isneginf(arr).any():
        raise BgkitError(f"{name} contains -inf (an infinite Boltzmann factor)")
    bad = ~np.isfinite(arr)
    if bad.all():
        raise BgkitError(f"every work in {name} is non-finite: no overlap")
    return np.where(bad, np.inf, arr), int(bad.sum())


def _overlap(w: np.ndarray) -> float:
    return kish_ess(-w) / w.size


@contextlib.contextmanager
def _quiet_pymbar() -> Iterator[Any]:
    """Import pymbar.other_estimators without its JAX / timeseries banners; guard numpy state.

    pymbar's bar_zero calls ``np.seterr(over="raise")`` and may leave it set on
    failure; ``np.errstate`` restores the caller's settings.
    """
    logger = logging.getLogger("pymbar")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            from pymbar import other_estimators

            yield other_estimators
    finally:
        logger.setLevel(level)


def exp_estimate(works: Any, reverse: bool = False) -> FepResult:
    """One-sided exponential averaging (EXP, Zwanzig/Jarzynski) via ``pymbar.other_estimators.exp``.

    works: [N] forward works (samples of A), or reverse works with
    ``reverse=True`` (samples of B; then ΔF_AB = +ln⟨exp(−W_R)⟩_B). The
    error is pymbar's asymptotic estimate for independent samples.
    """
    w, n_bad = _clean_works(works, "works")
    with _quiet_pymbar() as oe:
        res = oe.exp(w)
    sign = -1.0 if reverse else 1.0
    ess = _overlap(w)
    return FepResult(
        delta_f_kt=sign * float(res["Delta_f"]),
        stderr_kt=float(res["dDelta_f"]),
        method="EXP reverse" if reverse else "EXP forward",
        n_forward=0 if reverse else w.size,
        n_reverse=w.size if reverse else 0,
        ess_fraction_forward=math.nan if reverse else ess,
        ess_fraction_reverse=ess if reverse else math.nan,
        n_nonfinite=n_bad,
    )


#: Extra margin (kT) above the largest finite |work| used in place of non-finite
#: works for BAR: their Fermi factor is then < exp(−100), i.e. zero.
BAR_CAP_MARGIN = 100.0


def bar_estimate(w_f: Any, w_r: Any) -> FepResult:
    """Bennett acceptance ratio from forward [N_F] and reverse [N_R] works via ``pymbar.other_estimators.bar``.

    Non-finite works are replaced by max finite |work| + 100 kT (zero Fermi
    factor) because pymbar silently returns 0 ± 0 for +inf works. Works that
    are constant to rounding (an exact map) return that value with error 0
    (pymbar's bracketing fails there). Uses pymbar's false-position solver,
    falling back to self-consistent iteration; raises BgkitError when BAR
    cannot be solved (no overlap). stderr may be nan if pymbar's variance
    formula breaks down.
    """
    wf, bad_f = _clean_works(w_f, "w_f")
    wr, bad_r = _clean_works(w_r, "w_r")
    ess_f, ess_r = _overlap(wf), _overlap(wr)
    finite = np.concatenate([wf[np.isfinite(wf)], wr[np.isfinite(wr)]])
    cap = float(np.max(np.abs(finite))) + BAR_CAP_MARGIN
    wf_c, wr_c = np.minimum(wf, cap), np.minimum(wr, cap)
    result = dict(
        method="BAR",
        n_forward=wf.size,
        n_reverse=wr.size,
        ess_fraction_forward=ess_f,
        ess_fraction_reverse=ess_r,
        n_nonfinite=bad_f + bad_r,
    )
    scale = 1.0 + float(np.max(np.abs(finite)))
    if bad_f + bad_r == 0 and np.ptp(wf) <= 1e-10 * scale and np.ptp(wr) <= 1e-10 * scale:
        df_f, df_r = float(np.mean(wf)), -float(np.mean(wr))
        if abs(df_f - df_r) <= 1e-8 * scale:
            return FepResult(0.5 * (df_f + df_r), 0.0, hysteresis_kt=df_f - df_r, **result)
    res = None
    with _quiet_pymbar() as oe:
        result["hysteresis_kt"] = float(oe.exp(wf)["Delta_f"] + oe.exp(wr)["Delta_f"])
        for method in ("false-position", "self-consistent-iteration"):
            try:
                res = oe.bar(wf_c, wr_c, method=method)
            except Exception:  # pymbar raises BoundsError, ConvergenceError, FloatingPointError
                res = None
                continue
            silent_failure = res["Delta_f"] == 0.0 and res["dDelta_f"] == 0.0
            if math.isfinite(res["Delta_f"]) and not silent_failure:
                break
            res = None
    if res is None:
        raise BgkitError(
            f"BAR could not be solved (overlap ESS fraction forward {ess_f:.2g}, reverse {ess_r:.2g})"
        )
    return FepResult(delta_f_kt=float(res["Delta_f"]), stderr_kt=float(res["dDelta_f"]), **result)
