"""Training proposals for molecular systems: data -> flow space -> targets -> training loop.

This is what ``bgkit targets ot`` and ``bgkit train`` run. Frames of the
dataset's train split are centred and scaled by a :class:`CoordinateTransform`
fitted on them; OT targets store that transform so training uses exactly the
same flow space; random SO(3) rotations augment every batch (one rotation per
row, the same for x0 and x1 of a RegFlow pair: it keeps the OT cost and the
N(0, I) prior law).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgkit import BgkitError
from bgkit.coords import CoordinateTransform, random_rotations
from bgkit.data import Dataset, load_dataset
from bgkit.proposal import PROPOSAL_KIND, system_record
from bgkit.systems import load_system


def _frames(dataset: Dataset, split: str, max_frames: int | None, seed: int) -> np.ndarray:
    xyz = dataset.split(split)
    if max_frames is not None and len(xyz) > max_frames:  # an evenly spaced subset keeps the time coverage
        xyz = xyz[np.linspace(0, len(xyz) - 1, max_frames).round().astype(int)]
    return xyz.astype(np.float64)


def rotate_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Apply one uniform random rotation per row to every flow-space tensor [b, 3(N-1)] alike."""
    b = tensors[0].shape[0]
    R = random_rotations(b, dtype=tensors[0].dtype, device=tensors[0].device)
    return tuple(torch.einsum("bij,bnj->bni", R, t.reshape(b, -1, 3)).reshape(b, -1) for t in tensors)


def make_ot_targets(system: str, out: str | Path, data: str | None = None, n: int | None = None,
                    block_size: int = 4096, seed: int = 0, align: bool = True) -> dict[str, Any]:
    """Exact-OT RegFlow targets for the train split of ``data`` (default: the system's shipped data).

    With ``align`` (default) the equivalent terminal atoms of each target frame (methyl
    hydrogens, ...) are relabelled to the permutation nearest to its prior draw
    (:mod:`bgkit.symmetry`); the groups, checked for energy invariance, are recorded.
    """
    from bgkit.provenance import provenance
    from bgkit.train.targets import ot_pairs, save_targets

    sys_ = load_system(system)
    dataset = load_dataset(data or sys_.name)
    dataset.system.check_positions(dataset.xyz[:1])
    if dataset.meta["topology_hash"] != sys_.topology_hash:
        raise BgkitError(f"dataset {dataset.folder} was simulated for another topology than system '{sys_.name}'")
    xyz = _frames(dataset, "train", n, seed)
    transform = CoordinateTransform.fit(xyz)
    y = transform.to_flow(torch.as_tensor(xyz)).numpy()
    t0 = time.time()
    x0, x1 = ot_pairs(y, seed=seed, block_size=block_size)
    seconds = time.time() - t0
    groups, rejected, relabelled = [], [], 0
    if align:
        from bgkit.symmetry import align_groups, equivalent_groups

        groups, rejected = equivalent_groups(sys_, xyz[np.linspace(0, len(xyz) - 1, 4).round().astype(int)])
        x1, relabelled = align_groups(x0, x1, groups)
    info = {"system": system_record(sys_), "transform": transform.state_dict(), "dataset": str(dataset.folder),
            "split": "train", "frames": len(xyz), "block_size": block_size, "seconds": seconds,
            "aligned_groups": groups, "rejected_groups": rejected, "relabelled_pairs": relabelled}
    save_targets(out, x0, x1, provenance(seed=seed, **info), kind="ot")
    return info


def train_proposal(system: str, arch: str, objective: str, out: str | Path, targets: str | None = None,
                   data: str | None = None, max_frames: int | None = None, hparams: dict | None = None,
                   config_overrides: dict | None = None, resume: bool = False, progress: bool = True):
    """Train a flow for ``system`` with RegFlow (on ``targets``) or MLE; the checkpoint is a proposal."""
    from bgkit.flows import build_flow
    from bgkit.train.loop import TrainConfig, train
    from bgkit.train.targets import load_targets, ot_pairs

    sys_ = load_system(system)
    cfg = TrainConfig.from_dict({"objective": objective, **(config_overrides or {})})
    dataset = load_dataset(data or sys_.name)
    if dataset.meta["topology_hash"] != sys_.topology_hash:
        raise BgkitError(f"dataset {dataset.folder} was simulated for another topology than system '{sys_.name}'")
    val_xyz = _frames(dataset, "val", 2000, cfg.seed)
    if objective == "regflow":
        if targets is None:
            raise BgkitError("--objective regflow needs --targets (make them with `bgkit targets ot`)")
        t = load_targets(targets)
        prov = t.provenance
        if prov.get("system", {}).get("topology_hash") != sys_.topology_hash:
            raise BgkitError(f"targets {targets} were made for system '{prov.get('system', {}).get('name')}', not '{sys_.name}'")
        transform = CoordinateTransform.from_dict(prov["transform"])
        train_data = (torch.as_tensor(t.x0), torch.as_tensor(t.x1))
        y_val = transform.to_flow(torch.as_tensor(val_xyz)).numpy()
        v0, v1 = ot_pairs(y_val, seed=cfg.seed + 1, block_size=1000)
        if prov.get("aligned_groups"):  # validate on pairs made like the training pairs
            from bgkit.symmetry import align_groups

            v1, _ = align_groups(v0, v1, prov["aligned_groups"])
        val_data = (torch.as_tensor(v0), torch.as_tensor(v1))
        n_train = len(t.x0)
        targets_record = _targets_record(prov)
    elif objective == "mle":
        xyz = _frames(dataset, "train", max_frames, cfg.seed)
        transform = CoordinateTransform.fit(xyz)
        train_data = transform.to_flow(torch.as_tensor(xyz)).float()
        val_data = transform.to_flow(torch.as_tensor(val_xyz)).float()
        n_train = len(xyz)
        targets_record = None
    else:
        raise BgkitError(f"unknown objective '{objective}': choose regflow or mle")
    if isinstance(train_data, tuple):
        train_data = tuple(x.float() for x in train_data)
        val_data = tuple(x.float() for x in val_data)
    flow = build_flow(arch, transform.dim, **(hparams or {}))
    extra = {
        "kind": PROPOSAL_KIND,
        "system": system_record(sys_),
        "transform": transform.state_dict(),
        "training": {"command": " ".join(sys.argv), "dataset": str(dataset.folder),
                     "dataset_frames": dataset.n_frames, "train_frames": n_train, "targets": targets,
                     "targets_provenance": targets_record, "objective": objective, "arch": arch},
    }
    return train(flow, train_data, val_data, cfg, out, resume=resume, augment=lambda batch: rotate_rows(*batch),
                 extra_checkpoint=extra, progress=progress)


def _targets_record(prov: dict[str, Any]) -> dict[str, Any]:
    """What a proposal keeps of its targets' provenance: how they were made."""
    keys = ("command", "seed", "time_utc", "bgkit_version", "dataset", "split", "frames", "block_size",
            "aligned_groups", "rejected_groups", "relabelled_pairs")
    return {k: prov[k] for k in keys if k in prov}


def export_proposal(checkpoint: str | Path, out: str | Path, metrics: dict | None = None) -> Path:
    """A slim copy of a training checkpoint for shipping: EMA weights and metadata, no optimiser state."""
    from bgkit.provenance import atomic_save
    from bgkit.train.loop import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    training = ckpt.get("extra", {}).get("training", {})
    if training.get("targets") and training.get("targets_provenance") is None:  # checkpoints of bgkit <= 0.1.0
        from bgkit.train.targets import load_targets

        path = Path(training["targets"])
        if path.is_file():
            training["targets_provenance"] = _targets_record(load_targets(path).provenance)
    slim = {k: v for k, v in ckpt.items() if k not in ("raw_model", "optimizer", "scheduler", "rng")}
    if metrics:
        slim["metrics"] = {**slim.get("metrics", {}), **json.loads(json.dumps(metrics))}
    return atomic_save(slim, out)
