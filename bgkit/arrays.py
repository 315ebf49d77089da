"""Array inputs: numpy arrays, torch tensors and lists as float64 numpy arrays."""
from __future__ import annotations

from typing import Any

import numpy as np

from bgkit import BgkitError

__all__ = ["as_numpy"]


def as_numpy(x: Any, name: str = "array") -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor, list) as a float64 numpy array (same shape)."""
    if hasattr(x, "detach"):  # torch tensor, converted without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BgkitError(f"{name} is not a numeric array: {exc}") from None
