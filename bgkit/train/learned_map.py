"""Training a TFEP map M: A → B with RegFlow on exact-OT pairs between samples of two states.

No energy is evaluated: the pairs are (a, b) with a from state A and b from
state B, matched by blocked exact optimal transport in the flow space of a
coordinate representation (squared euclidean cost, wrapped on torsions), and
a flow is regressed onto them (:func:`bgkit.train.regflow.regflow_loss`,
forward–backward regulariser). The flow's forward map is then M in flow space;
:class:`bgkit.free_energy.learned_map.LearnedMap` applies it to molecules.

The map moves only the flow dimensions whose distributions differ between the
states (:func:`select_dims`: 1-D Wasserstein distance of the two marginals
above a threshold) and is the identity on the others. Exact OT between finite
samples is a noisy pairing in many dimensions; on dimensions the two states
share it pairs thermal fluctuations at random, and regression onto random
partners contracts them to their mean (a map with log|det J| of tens of nats
and unusable works, measured on ala2: 60 dimensions, works spread over 100 kT).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgkit import BgkitError
from bgkit.coords import DEFAULT_COORDS
from bgkit.free_energy.learned_map import MAP_KIND

__all__ = ["map_pairs", "select_dims", "train_map", "train_state_map"]


def select_dims(y_a: np.ndarray, y_b: np.ndarray, threshold: float = 1.0) -> list[int]:
    """Flow dimensions whose A and B marginals differ: 1-D Wasserstein-1 distance > ``threshold``.

    Units: flow units (standardised bonds and angles, radians for torsions). Torsions are
    measured along their interval, as the map transports them (see :func:`train_map`).
    Always at least the two that differ most (a coupling flow needs two dimensions).
    """
    import ot  # noqa: PLC0415

    dist = [float(ot.wasserstein_1d(y_a[:, d], y_b[:, d], p=1)) for d in range(y_a.shape[1])]
    chosen = {d for d, w in enumerate(dist) if w > threshold} | {int(d) for d in np.argsort(dist)[::-1][:2]}
    return sorted(chosen)


def _cycled(n_have: int, n_want: int, rng: np.random.Generator) -> np.ndarray:
    """``n_want`` indices into ``n_have`` items: whole random permutations, repeated as needed."""
    reps = math.ceil(n_want / n_have)
    return np.concatenate([rng.permutation(n_have) for _ in range(reps)])[:n_want]


def map_pairs(y_a: np.ndarray, y_b: np.ndarray, seed: int = 0, block_size: int = 2048,
              periodic: tuple[int, ...] | list[int] = (), wrap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (x0 from A, x1 from B), [n, D] each, n = max(n_A, n_B), by blocked exact OT.

    Every sample of the larger set is used once; the smaller set is cycled through
    random permutations. Each block of at most ``block_size`` pairs is an exact OT
    assignment (:func:`bgkit.train.targets.ot_assignment`), squared euclidean cost;
    ``periodic`` dimensions are wrapped only if ``wrap`` (see :func:`train_map`).
    """
    from bgkit.train.targets import ot_assignment

    y_a, y_b = np.asarray(y_a, dtype=np.float64), np.asarray(y_b, dtype=np.float64)
    if y_a.ndim != 2 or y_b.ndim != 2 or y_a.shape[1] != y_b.shape[1] or not len(y_a) or not len(y_b):
        raise BgkitError(f"map_pairs needs two non-empty sets [n, D] of the same D, got {y_a.shape} and {y_b.shape}")
    if not (np.isfinite(y_a).all() and np.isfinite(y_b).all()):
        raise BgkitError("map_pairs: samples contain NaN or inf")
    rng = np.random.default_rng(seed)
    n = max(len(y_a), len(y_b))
    ia, ib = _cycled(len(y_a), n, rng), _cycled(len(y_b), n, rng)
    x0, x1 = np.empty((n, y_a.shape[1])), np.empty((n, y_a.shape[1]))
    for block in np.array_split(np.arange(n), math.ceil(n / int(block_size))):
        a, b = y_a[ia[block]], y_b[ib[block]]
        x0[block], x1[block] = a, b[ot_assignment(a, b, periodic if wrap else ())]
    return x0, x1


def train_map(y_a: np.ndarray, y_b: np.ndarray, out: str | Path, val: tuple[np.ndarray, np.ndarray] | None = None,
              arch: str = "nsf", hparams: dict | None = None, periodic: tuple[int, ...] = (),
              config_overrides: dict | None = None, extra: dict | None = None, progress: bool = True,
              resume: bool = False, block_size: int = 2048, dims: list[int] | None = None):
    """Regress a flow onto OT pairs from ``y_a`` [n_A, D] to ``y_b`` [n_B, D] (flow space); returns a TrainResult.

    ``dims``: the dimensions the map moves (default all); the flow acts on ``y[:, dims]`` and
    the pairs are made there. The OT cost does not wrap torsions: two states are often
    complementary arcs of one torsion (C7eq/β and α_R of ψ), where a wrapped cost would send
    half of A clockwise and half counter-clockwise — a target no bijection can follow. Unwrapped,
    the pairing is monotone along the torsion's interval, whose ends sit at the cut the
    representation placed where the training density is lowest. ``val``: held-out (y_a, y_b) for validation pairs.
    ``config_overrides``: TrainConfig fields (steps, batch_size, lr, reg, reg_weight,
    max_seconds, seed, ...); the objective is RegFlow.
    """
    from bgkit.flows import build_flow
    from bgkit.train.config import TrainConfig, schedule_for
    from bgkit.train.loop import train

    overrides = dict(config_overrides or {})
    steps = int(overrides.pop("steps", 2000))
    cfg = TrainConfig.from_dict({**schedule_for(steps), "objective": "regflow", **overrides})
    dims = list(range(y_a.shape[1])) if dims is None else [int(d) for d in dims]
    periodic = tuple(dims.index(d) for d in periodic if d in dims)
    y_a, y_b = np.asarray(y_a)[:, dims], np.asarray(y_b)[:, dims]
    if val is not None:
        val = (np.asarray(val[0])[:, dims], np.asarray(val[1])[:, dims])
    x0, x1 = map_pairs(y_a, y_b, seed=cfg.seed, block_size=block_size, periodic=periodic)
    val_data = None
    if val is not None:
        v0, v1 = map_pairs(*val, seed=cfg.seed + 1, block_size=block_size, periodic=periodic)
        val_data = (torch.as_tensor(v0).float(), torch.as_tensor(v1).float())
    hp = dict(hparams or {})
    if periodic:
        hp["periodic"] = list(periodic)
    torch.manual_seed(cfg.seed)
    flow = build_flow(arch, y_a.shape[1], **hp)
    return train(flow, (torch.as_tensor(x0).float(), torch.as_tensor(x1).float()), val_data, cfg, out,
                 resume=resume, extra_checkpoint=extra, progress=progress)


def train_state_map(system: Any, xyz_a: np.ndarray, xyz_b: np.ndarray, out: str | Path,
                    states: dict[str, Any], coords: str = DEFAULT_COORDS,
                    val_xyz: tuple[np.ndarray, np.ndarray] | None = None, arch: str = "nsf",
                    hparams: dict | None = None, config_overrides: dict | None = None, progress: bool = True,
                    resume: bool = False, record: dict | None = None, threshold: float = 1.0):
    """Train the map M: A → B of a molecular ``system`` from frames of each state [n, N, 3] (nm).

    The representation (``coords``) is fitted on the frames of both states; the map moves the
    dimensions :func:`select_dims` picks with ``threshold``; ``states``
    ({"from": ..., "to": ...}, plain data) and ``record`` (command, dataset, ...) are stored
    in the checkpoint with the system and the representation (:func:`bgkit.checkpoint.flow_extra`).
    Returns a TrainResult.
    """
    from bgkit.checkpoint import flow_extra
    from bgkit.coords import fit_representation
    from bgkit.train.molecular import to_flow_space

    xyz_a, xyz_b = np.asarray(xyz_a, dtype=np.float64), np.asarray(xyz_b, dtype=np.float64)
    rep = fit_representation(coords, np.concatenate([xyz_a, xyz_b]), system)
    y_a, y_b = to_flow_space(rep, xyz_a), to_flow_space(rep, xyz_b)
    val = None if val_xyz is None or not len(val_xyz[0]) or not len(val_xyz[1]) else (
        to_flow_space(rep, val_xyz[0]), to_flow_space(rep, val_xyz[1]))
    dims = select_dims(y_a, y_b, threshold)
    extra = flow_extra(MAP_KIND, system, rep, dims=dims, states=states,
                       training={"command": " ".join(sys.argv), "arch": arch, "frames_a": len(xyz_a),
                                 "frames_b": len(xyz_b), "dims_threshold": threshold, **(record or {})})
    return train_map(y_a, y_b, out, val=val, arch=arch, hparams=hparams, periodic=rep.periodic,
                     config_overrides=config_overrides, extra=extra, progress=progress, resume=resume, dims=dims)
