"""Free-energy differences between conformational states, all in kT.

* States: boxes in (φ, ψ) (radians, periodic) or any boolean mask.
* Counting in unbiased MD: ΔF_AB = −ln(N_B / N_A), errors by a bootstrap over
  contiguous blocks (blocks must be longer than the correlation time).
* Reweighting a proposal: ΔF_AB = −ln(Σ_B w / Σ_A w) in log space, with a
  delta-method error (independent samples).
* Targeted free-energy perturbation (Jarzynski, PRE 65, 046122 (2002);
  Wirnsberger et al., J. Chem. Phys. 153, 144112 (2020)) with a map M: A → B:
  W_F(x) = u_B(M(x)) − u_A(x) − ln|det J_M(x)| for x ~ A, and the reverse works
  with M⁻¹ on samples of B; EXP and BAR through pymbar 4.

Sign convention everywhere: ΔF_AB = F_B − F_A = −ln(Z_B / Z_A).
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
from scipy.special import logsumexp

from bgkit import BgkitError
from bgkit.reweight import as_numpy, kish_ess

__all__ = [
    "State",
    "ALA2_STATES",
    "state_masks",
    "delta_f_counting",
    "delta_f_reweighting",
    "Population",
    "basin_populations",
    "forward_works",
    "reverse_works",
    "FepResult",
    "exp_estimate",
    "bar_estimate",
]

TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------- states


def _in_arc(angle: np.ndarray, arc: tuple[float, float] | None) -> np.ndarray:
    """True where ``angle`` lies on the arc [lo, hi) going counter-clockwise from lo."""
    if arc is None:
        return np.ones(angle.shape, dtype=bool)
    lo, hi = float(arc[0]), float(arc[1])
    if hi - lo >= TWO_PI:
        return np.ones(angle.shape, dtype=bool)
    width = (hi - lo) % TWO_PI
    if width == 0.0:
        raise BgkitError(f"empty angle range ({lo}, {hi})")
    with np.errstate(invalid="ignore"):
        return np.remainder(angle - lo, TWO_PI) < width


@dataclass(frozen=True)
class State:
    """A named conformational state: a periodic box in (φ, ψ) or a custom mask.

    phi, psi: (lo, hi) in radians meaning the arc from lo counter-clockwise to
    hi, lower end included, so (50°, −120°) runs through 180°; None means the
    whole circle. ``mask_fn(phi, psi) -> bool [n]`` overrides the boxes.
    Non-finite angles are never inside a state.
    """

    name: str
    phi: tuple[float, float] | None = None
    psi: tuple[float, float] | None = None
    mask_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    @classmethod
    def from_degrees(
        cls, name: str, phi: tuple[float, float] | None = None, psi: tuple[float, float] | None = None
    ) -> "State":
        """Build a box state from ranges given in degrees."""
        rad = lambda r: None if r is None else (math.radians(r[0]), math.radians(r[1]))  # noqa: E731
        return cls(name, rad(phi), rad(psi))

    def mask(self, phi: Any, psi: Any) -> np.ndarray:
        """Bool [n]: which frames with angles phi [n], psi [n] (rad) are in the state."""
        f = as_numpy(phi, "phi").reshape(-1)
        p = as_numpy(psi, "psi").reshape(-1)
        if f.shape != p.shape:
            raise BgkitError(f"phi {f.shape} and psi {p.shape} differ in length")
        if self.mask_fn is not None:
            m = np.asarray(self.mask_fn(f, p), dtype=bool)
            if m.shape != f.shape:
                raise BgkitError(f"mask_fn of state {self.name} returned shape {m.shape}")
            return m
        return _in_arc(f, self.phi) & _in_arc(p, self.psi)


#: Coarse alanine-dipeptide partition of the whole (φ, ψ) torus, commonly used
#: in vacuum / implicit solvent: C7eq/β is φ < 0 with ψ from 50° through 180° to
#: −120°; α_R is φ < 0 with −120° ≤ ψ < 50°; α_L is φ > 0 (it includes C7ax).
ALA2_STATES: dict[str, State] = {
    "C7eq_beta": State.from_degrees("C7eq_beta", phi=(-180.0, 0.0), psi=(50.0, -120.0)),
    "alpha_R": State.from_degrees("alpha_R", phi=(-180.0, 0.0), psi=(-120.0, 50.0)),
    "alpha_L": State.from_degrees("alpha_L", phi=(0.0, 180.0), psi=None),
}


def state_masks(states: dict[str, State], phi: Any, psi: Any) -> dict[str, np.ndarray]:
    """{name: bool mask [n]} for each state given angles phi [n], psi [n] (rad)."""
    return {name: s.mask(phi, psi) for name, s in states.items()}


# --------------------------------------------------------------------------- counting


def _bool_1d(m: Any, name: str) -> np.ndarray:
    arr = np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m)
    if arr.ndim != 1 or arr.dtype != bool:
        raise BgkitError(f"{name} must be a 1-D boolean mask, got {arr.dtype} {arr.shape}")
    return arr


def _block_edges(n: int, block_size: int | None, n_blocks: int | None) -> list[np.ndarray]:
    if block_size is not None and n_blocks is not None:
        raise BgkitError("give block_size or n_blocks, not both")
    if block_size is not None:
        if block_size < 1:
            raise BgkitError(f"block_size must be >= 1, got {block_size}")
        n_blocks = n // int(block_size)
    n_blocks = 20 if n_blocks is None else int(n_blocks)
    if n_blocks < 2 or n_blocks > n:
        raise BgkitError(f"need 2 <= n_blocks <= n_frames ({n}), got {n_blocks}")
    return np.array_split(np.arange(n), n_blocks)


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
    a, b = _bool_1d(mask_a, "mask_a"), _bool_1d(mask_b, "mask_b")
    if a.shape != b.shape:
        raise BgkitError(f"mask_a {a.shape} and mask_b {b.shape} differ in length")
    blocks = _block_edges(a.size, block_size, n_blocks)
    count_a = np.array([a[i].sum() for i in blocks], dtype=np.float64)
    count_b = np.array([b[i].sum() for i in blocks], dtype=np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(blocks), size=(int(n_boot), len(blocks)))
    boot = _neg_log_ratio(count_b[pick].sum(axis=1), count_a[pick].sum(axis=1))
    delta_f = float(_neg_log_ratio(np.float64(b.sum()), np.float64(a.sum())))
    return delta_f, _bootstrap_std(boot)


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

    masks: {name: bool [n_frames]} (e.g. from ``state_masks``). The same
    resampled blocks are used for every state. Compare ``first_half`` and
    ``second_half`` to see whether a rare basin is converged.
    """
    arrays = {k: _bool_1d(m, k) for k, m in masks.items()}
    if not arrays:
        raise BgkitError("no states given")
    n = {m.size for m in arrays.values()}
    if len(n) != 1:
        raise BgkitError(f"state masks differ in length: {sorted(n)}")
    n_frames = n.pop()
    blocks = _block_edges(n_frames, block_size, n_blocks)
    sizes = np.array([i.size for i in blocks], dtype=np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(blocks), size=(int(n_boot), len(blocks)))
    half = n_frames // 2
    out = {}
    for name, m in arrays.items():
        counts = np.array([m[i].sum() for i in blocks], dtype=np.float64)
        boot = counts[pick].sum(axis=1) / sizes[pick].sum(axis=1)
        out[name] = Population(
            fraction=float(m.mean()),
            stderr=float(np.std(boot, ddof=1)),
            first_half=float(m[:half].mean()) if half else math.nan,
            second_half=float(m[half:].mean()),
        )
    return out


# --------------------------------------------------------------------------- reweighting


def delta_f_reweighting(mask_a: Any, mask_b: Any, log_w: Any) -> tuple[float, float]:
    """ΔF_AB = −ln(Σ_B w / Σ_A w) (kT) from importance-weighted independent samples.

    mask_a, mask_b: bool [N]; log_w: [N] (−inf = zero weight). The error is
    the delta-method standard error of the log ratio of the two weighted
    means, var = N/(N−1) Σ_i (b_i p^B_i − a_i p^A_i)², with p^S_i = w_i / Σ_S w
    (≈ 1/ESS_A + 1/ESS_B for disjoint states). A state with zero total weight
    gives ΔF = ±inf (nan if both) and an error of inf.
    """
    a, b = _bool_1d(mask_a, "mask_a"), _bool_1d(mask_b, "mask_b")
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


# --------------------------------------------------------------------------- TFEP


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
