"""The checkpoint file format — training checkpoints and proposals are the same file.

A checkpoint is a plain ``torch.save`` dict, loadable with ``torch.load(weights_only=True)`` (no
pickled code). Keys: ``format`` ("bgkit-checkpoint"), ``format_version`` (checked on load: a file
from a newer bgkit is refused), ``step``, ``final`` (False while a run is unfinished), ``model``
(EMA weights — the weights to sample with), ``raw_model`` (current optimiser weights),
``optimizer``, ``scheduler``, ``ema_updates``, ``rng`` (list, one per rank), ``data_order``,
``config``, ``world_size``, ``flow`` (``class``, ``arch``, ``hparams``, ``dim``:
``build_flow(arch, dim, **hparams)`` rebuilds it), ``history``, ``loss_window`` (last ≤100 train
losses), ``metrics``, ``extra`` (the trainer's record; for a proposal: ``kind``, ``system``,
``transform``, ``training`` — see :mod:`bgkit.proposal`), ``provenance``. An exported proposal
(:func:`bgkit.proposal.export_proposal`) drops ``raw_model``, ``optimizer``, ``scheduler`` and ``rng``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bgkit import BgkitError

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "load_checkpoint", "non_finite_weight", "sanitize"]

CHECKPOINT_FORMAT = "bgkit-checkpoint"
CHECKPOINT_VERSION = 1


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a bgkit checkpoint dict (tensors on ``map_location``).

    Raises BgkitError if the file is missing, truncated or corrupted (every
    zip member's CRC is verified; torch itself does not check data CRCs), or
    not a bgkit checkpoint. Loading uses ``weights_only=True`` (no pickled code).
    """
    from bgkit.io import verify_zip

    path = Path(path)
    verify_zip(path, "checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise BgkitError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise BgkitError(f"{path} is not a bgkit checkpoint")
    version = ckpt.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BgkitError(f"checkpoint {path} has a malformed format_version {version!r} (not a version number "
                         ">= 1): the file is damaged or was not written by bgkit")
    if version > CHECKPOINT_VERSION:
        raise BgkitError(f"{path} has checkpoint format version {version!r}; this bgkit reads versions up to "
                         f"{CHECKPOINT_VERSION}: update bgkit")
    missing = [k for k in ("model", "config", "step") if k not in ckpt]
    if missing:
        raise BgkitError(f"checkpoint {path} lacks {', '.join(missing)}")
    for key in ("model", "raw_model"):
        bad = non_finite_weight(ckpt.get(key)) if isinstance(ckpt.get(key), dict) else None
        if bad:
            raise BgkitError(f"checkpoint {path} has non-finite weights ({key} {bad}): it is the state of a "
                             "diverged training run and cannot be used; train again (e.g. with a lower --lr)")
    return ckpt


def non_finite_weight(weights: Any) -> str | None:
    """The name of the first floating tensor of ``weights`` (a module or a state dict) holding NaN or inf, else None."""
    items = weights.state_dict().items() if hasattr(weights, "state_dict") else dict(weights or {}).items()
    for name, value in items:
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return str(name)
    return None


def sanitize(obj: Any, where: str) -> Any:
    """Convert to types ``torch.load(weights_only=True)`` accepts, else BgkitError."""
    if isinstance(obj, np.generic):  # before the primitives: np.float64 is a float subclass
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sanitize(asdict(obj), where)
    if isinstance(obj, dict):
        return {sanitize(k, where): sanitize(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [sanitize(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(out) if isinstance(obj, tuple) else out
    raise BgkitError(f"{where} has type {type(obj).__name__}, which a checkpoint cannot store")
