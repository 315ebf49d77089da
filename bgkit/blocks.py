"""Statistics of time-correlated series: contiguous time blocks and the block bootstrap (pure numpy).

Frames of MD (and works computed on them) are correlated in time, so resampling single frames
underestimates errors. A block bootstrap cuts each series into contiguous blocks, which must be
longer than the correlation time, and resamples whole blocks with replacement (Künsch, Ann. Stat. 17,
1217 (1989)). Every bootstrap of correlated data in bgkit goes through :func:`block_bootstrap`, and
:func:`bootstrap_std` turns its replicates into an error.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from bgkit import BgkitError

__all__ = ["DEFAULT_BLOCKS", "block_bootstrap", "block_sums", "bootstrap_fractions", "bootstrap_std", "time_blocks"]

#: number of contiguous blocks when neither a block count nor a block size is given
DEFAULT_BLOCKS = 20


def time_blocks(n: int, block_size: int | None = None, n_blocks: int | None = None) -> list[np.ndarray]:
    """Indices of ``n`` frames cut into contiguous time blocks (``np.array_split``): blocks of
    ``block_size`` frames (the remainder spread over them), or ``n_blocks`` blocks (default 20).

    BgkitError unless 2 <= number of blocks <= n, or if both are given.
    """
    if block_size is not None and n_blocks is not None:
        raise BgkitError("give block_size or n_blocks, not both")
    if block_size is not None:
        if block_size < 1:
            raise BgkitError(f"block_size must be >= 1, got {block_size}")
        n_blocks = n // int(block_size)
    n_blocks = DEFAULT_BLOCKS if n_blocks is None else int(n_blocks)
    if n_blocks < 2 or n_blocks > n:
        raise BgkitError(f"need 2 <= n_blocks <= n_frames ({n}), got {n_blocks}")
    return np.array_split(np.arange(n), n_blocks)


def block_sums(values: Any, blocks: list[np.ndarray]) -> np.ndarray:
    """Sums of ``values`` [n, ...] over each block (index arrays): float64 [n_blocks, ...].

    A statistic of sums over frames (counts in a state, frames in all) resamples these instead of the
    frames: pass them to :func:`block_bootstrap` as a series of one-element blocks (``n_blocks=len(sums)``).
    """
    values = np.asarray(values)
    return np.stack([values[i].sum(axis=0) for i in blocks]).astype(np.float64)


def block_bootstrap(statistic: Callable[..., Any], *series: np.ndarray, blocks: list[list[np.ndarray]] | None = None,
                    n_blocks: int = DEFAULT_BLOCKS, n_boot: int = 1000, seed: int | None = None) -> np.ndarray:
    """Replicates of ``statistic(*resampled)`` over a bootstrap of contiguous time blocks: [n_boot, ...].

    Args:
        statistic: maps one resampled array per series to a number or an array (the same shape every time).
        series: arrays [n_j, ...] in time order (axis 0 is time); each is resampled on its own.
        blocks: per series, its blocks as index arrays (e.g. from :func:`time_blocks`); default: series j cut
            into ``min(n_blocks, n_j)`` contiguous blocks.
        n_boot: number of replicates.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        float64 [n_boot, ...]: replicate r holds ``statistic`` of series j rebuilt from as many of its blocks as
        it has, drawn with replacement (block indices drawn replicate by replicate, series by series).
    """
    arrays = [np.asarray(s) for s in series]
    if not arrays:
        raise BgkitError("block_bootstrap needs at least one series")
    if int(n_boot) < 1:
        raise BgkitError(f"n_boot must be >= 1, got {n_boot}")
    if blocks is None:
        blocks = [np.array_split(np.arange(len(a)), max(1, min(int(n_blocks), len(a)))) for a in arrays]
    if len(blocks) != len(arrays) or not all(len(b) for b in blocks):
        raise BgkitError(f"need one non-empty list of blocks per series, got {len(blocks)} for {len(arrays)} series")
    layouts = [_Layout(b) for b in blocks]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(n_boot)):
        picked = [a[layout.draw(rng)] for a, layout in zip(arrays, layouts)]
        out.append(np.asarray(statistic(*picked), dtype=np.float64))
    return np.stack(out)


class _Layout:
    """A series' blocks (index arrays) laid end to end, to draw a replicate's indices without a Python loop."""

    def __init__(self, blocks: list[np.ndarray]) -> None:
        self.n_blocks = len(blocks)
        self.flat = np.concatenate([np.asarray(b, dtype=np.int64).reshape(-1) for b in blocks])
        self.sizes = np.array([np.size(b) for b in blocks], dtype=np.int64)
        self.starts = np.cumsum(self.sizes) - self.sizes

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """Indices of one replicate: as many blocks as there are, drawn with replacement, joined in draw order."""
        pick = rng.integers(0, self.n_blocks, self.n_blocks)
        sizes = self.sizes[pick]
        begin = np.cumsum(sizes) - sizes  # where each drawn block begins in the replicate
        return self.flat[np.repeat(self.starts[pick] - begin, sizes) + np.arange(int(sizes.sum()))]


def bootstrap_fractions(masks: Any, blocks: list[np.ndarray], n_boot: int = 1000, seed: int | None = None
                        ) -> np.ndarray:
    """Block-bootstrap replicates [n_boot, k] of the fraction of frames in each of k states.

    masks: bool [n, k], time-ordered frames by state; blocks: index arrays of contiguous frames (e.g. from
    :func:`time_blocks`). Every replicate resamples whole blocks, the same ones for every state, and divides the
    frames drawn that lie in each state by all frames drawn.
    """
    columns = np.asarray(masks, dtype=bool)
    counts = block_sums(np.column_stack([columns, np.ones(len(columns), dtype=bool)]), blocks)  # [blocks, k + 1]
    return block_bootstrap(lambda s: s[:, :-1].sum(axis=0) / s[:, -1].sum(), counts, n_blocks=len(counts),
                           n_boot=n_boot, seed=seed)


def bootstrap_std(replicates: Any) -> float:
    """Standard deviation (ddof 1) of bootstrap replicates [n_boot]; inf if any replicate is not finite."""
    values = np.ascontiguousarray(replicates, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        return math.inf
    return float(np.std(values, ddof=1))
