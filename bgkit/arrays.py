"""Array helpers: inputs (numpy arrays, torch tensors, lists) as float64 numpy arrays; evenly spaced subsets."""
from __future__ import annotations

from typing import Any

import numpy as np

from bgkit import BgkitError

__all__ = ["as_numpy", "evenly_spaced"]


def as_numpy(x: Any, name: str = "array") -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor, list) as a float64 numpy array (same shape)."""
    if hasattr(x, "detach"):  # torch tensor, converted without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BgkitError(f"{name} is not a numeric array: {exc}") from None


def evenly_spaced(n: int, limit: int | None) -> np.ndarray:
    """Indices int [min(n, limit)] of at most ``limit`` evenly spaced items of ``n`` (all ``n`` if ``limit`` is None).

    The first and the last item are always kept (``limit`` >= 2), so a subset of time-ordered frames keeps the
    time coverage of the whole: ``xyz[evenly_spaced(len(xyz), 1000)]``.
    """
    if limit is None or n <= limit:
        return np.arange(n)
    if limit < 0:
        raise BgkitError(f"limit must be >= 0, got {limit}")
    return np.linspace(0, n - 1, int(limit)).round().astype(int)
