"""Conformational states in (φ, ψ), state masks, and basin populations with block-bootstrap errors.

States are boxes in (φ, ψ) (radians, periodic) or any boolean mask. Populations
are fractions of unbiased, time-ordered frames, their errors a bootstrap over
contiguous time blocks (blocks must be longer than the correlation time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from bgkit import BgkitError
from bgkit.arrays import as_numpy

__all__ = ["TWO_PI", "State", "ALA2_STATES", "state_masks", "as_mask", "time_blocks", "Population",
           "basin_populations"]

TWO_PI = 2.0 * math.pi


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


# --------------------------------------------------------------------------- populations


def as_mask(m: Any, name: str) -> np.ndarray:
    """``m`` (numpy array, torch tensor, list) as a 1-D boolean numpy mask [n] (BgkitError otherwise)."""
    arr = np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m)
    if arr.ndim != 1 or arr.dtype != bool:
        raise BgkitError(f"{name} must be a 1-D boolean mask, got {arr.dtype} {arr.shape}")
    return arr


def time_blocks(n: int, block_size: int | None, n_blocks: int | None) -> list[np.ndarray]:
    """Indices of ``n`` frames cut into contiguous time blocks: ``block_size`` frames, or ``n_blocks`` (default 20)."""
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
    arrays = {k: as_mask(m, k) for k, m in masks.items()}
    if not arrays:
        raise BgkitError("no states given")
    n = {m.size for m in arrays.values()}
    if len(n) != 1:
        raise BgkitError(f"state masks differ in length: {sorted(n)}")
    n_frames = n.pop()
    blocks = time_blocks(n_frames, block_size, n_blocks)
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
