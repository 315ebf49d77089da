"""The checkpoint file format — training checkpoints, proposals and TFEP maps are the same file.

A checkpoint is a plain ``torch.save`` dict, loadable with ``torch.load(weights_only=True)`` (no
pickled code). Keys: ``format`` ("bgkit-checkpoint"), ``format_version`` (checked on load: a file
from a newer bgkit is refused), ``step``, ``final`` (False while a run is unfinished), ``model``
(EMA weights — the weights to sample with), ``raw_model`` (current optimiser weights),
``optimizer``, ``scheduler``, ``ema_updates``, ``rng`` (list, one per rank), ``data_order``,
``config``, ``world_size``, ``flow`` (``class``, ``arch``, ``hparams``, ``dim``:
``build_flow(arch, dim, **hparams)`` rebuilds it), ``history``, ``loss_window`` (last ≤100 train
losses), ``metrics``, ``extra`` (the trainer's record), ``provenance``. An exported proposal
(:func:`bgkit.proposal.export_proposal`) drops ``raw_model``, ``optimizer``, ``scheduler`` and ``rng``.

The ``extra`` of a flow for a molecular system (a proposal, a TFEP map; :func:`flow_extra`) holds its
``kind``, its ``system`` (:func:`system_record`), its coordinate representation under ``coords`` (the
representation's state, ``kind`` included: the one place a checkpoint stores it) and the entries of
its kind (``training``, ...). Format version 1 stored the representation under ``extra["transform"]``
(and its kind again in ``extra["training"]["coords"]``); such files still load (:func:`coords_state`).

:func:`write_checkpoint` is the one writer and :func:`load_checkpoint` the one reader of the file;
:func:`load_flow_checkpoint` rebuilds its flow and representation.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from bgkit import BgkitError

if TYPE_CHECKING:
    from bgkit.coords import Representation

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "COORDS_KEY", "FlowCheckpoint", "coords_state",
           "current_extra", "flow_extra", "load_checkpoint", "load_flow_checkpoint", "non_finite_weight", "sanitize",
           "system_record", "write_checkpoint"]

CHECKPOINT_FORMAT = "bgkit-checkpoint"
CHECKPOINT_VERSION = 2  #: 2: the coordinate representation stored once, under ``extra["coords"]``
#: the ``extra`` key of the coordinate representation's state
COORDS_KEY = "coords"
_OLD_COORDS_KEY = "transform"  # format version 1


# ------------------------------------------------------------------------------------------- writing


def write_checkpoint(contents: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``contents`` (the keys of the module docstring) to ``path`` as a checkpoint of this format,
    atomically (the old file, if any, stays until the new one is complete)."""
    from bgkit.provenance import atomic_save

    stamp = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION}
    return atomic_save({**stamp, **{k: v for k, v in contents.items() if k not in stamp}}, path)


def system_record(system: Any) -> dict[str, Any]:
    """What a flow for a molecular system remembers about it (``system``: a :class:`bgkit.systems.System`)."""
    return {"name": system.name, "topology_hash": system.topology_hash, "n_atoms": system.n_atoms,
            "temperature_K": system.temperature}


def flow_extra(kind: str, system: Any, coords: Representation, **more: Any) -> dict[str, Any]:
    """The ``extra`` record of a flow of ``kind`` trained for ``system`` in the representation ``coords``,
    with the kind's own entries ``more`` (e.g. ``training``)."""
    return {"kind": kind, "system": system_record(system), COORDS_KEY: coords.state_dict(), **more}


def current_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored ``extra`` in the current form: a version-1 representation moved to ``coords``, the
    copy of its kind in ``training`` dropped."""
    out = dict(extra)
    if _OLD_COORDS_KEY in out:
        out.setdefault(COORDS_KEY, out.pop(_OLD_COORDS_KEY))
        if isinstance(out.get("training"), dict):
            out["training"] = {k: v for k, v in out["training"].items() if k != "coords"}
    return out


def coords_state(extra: dict[str, Any]) -> dict[str, Any] | None:
    """The stored state of the coordinate representation in a checkpoint's ``extra`` (either format), or None."""
    state = extra.get(COORDS_KEY)
    return state if isinstance(state, dict) else extra.get(_OLD_COORDS_KEY)


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


# ------------------------------------------------------------------------------------------- reading


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


@dataclass
class FlowCheckpoint:
    """A flow checkpoint loaded by :func:`load_flow_checkpoint`."""

    flow: torch.nn.Module  #: rebuilt with the EMA weights, in eval mode
    coords: Representation  #: the coordinate representation the flow works in
    extra: dict[str, Any]  #: the file's ``extra`` (in the current form, :func:`current_extra`)
    checkpoint: dict[str, Any]  #: the whole file (step, final, config, flow, metrics, provenance, ...)
    path: Path


def load_flow_checkpoint(path: str | os.PathLike, kind: str, what: str, device: str | torch.device = "cpu"
                         ) -> FlowCheckpoint:
    """Load the flow checkpoint ``path`` of ``extra["kind"] == kind`` (a proposal, a TFEP map): the flow with its
    EMA weights on ``device`` (float64 where ``extra["dtype"]`` says so, else float32), its coordinate
    representation, and the file. BgkitError, naming the file as not ``what`` (e.g. "a bgkit proposal"),
    for a checkpoint of another kind; BgkitError for weights that do not fit the flow's architecture."""
    from bgkit.coords import representation_from_state
    from bgkit.flows import build_flow

    path = Path(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    extra = current_extra(ckpt.get("extra") or {})
    if extra.get("kind") != kind:
        found = f"a {extra['kind']} checkpoint" if extra.get("kind") else \
            "a training checkpoint without system information"
        raise BgkitError(f"{path} is {found}, not {what}")
    state = coords_state(extra)
    if state is None:
        raise BgkitError(f"{path} stores no coordinate representation: the file is damaged")
    coords = representation_from_state(state)
    flow_info = ckpt["flow"]
    flow = build_flow(flow_info["arch"], int(flow_info["dim"]), **flow_info["hparams"])
    try:
        flow.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        raise BgkitError(f"{path}: flow weights do not fit its architecture: {_state_dict_error(exc)}") from None
    dtype = torch.float64 if extra.get("dtype") == "float64" else torch.float32
    return FlowCheckpoint(flow.to(device=device, dtype=dtype).eval(), coords, extra, ckpt, path)


def non_finite_weight(weights: Any) -> str | None:
    """The name of the first floating tensor of ``weights`` (a module or a state dict) holding NaN or inf, else None."""
    items = weights.state_dict().items() if hasattr(weights, "state_dict") else dict(weights or {}).items()
    for name, value in items:
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return str(name)
    return None


def _state_dict_error(exc: BaseException) -> str:
    """The first specific line of torch's load_state_dict error (not its 'Error(s) in loading' header)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = [ln for ln in lines if not ln.startswith("Error(s) in loading")]
    more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
    return (detail[0] if detail else lines[0] if lines else type(exc).__name__) + more
