"""Training proposals for molecular systems: data -> flow space -> targets -> training loop.

This is what ``bgkit targets ot`` and ``bgkit train`` run. Frames of the
dataset's train split are mapped to flow space by a coordinate representation
(:mod:`bgkit.coords`: ``cartesian`` or ``internal``, by default
:data:`~bgkit.coords.DEFAULT_COORDS`) fitted on them; OT targets
store that representation so training uses exactly the same flow space. The
representation's ``augment`` is applied to every batch: for ``cartesian``, one
uniform SO(3) rotation per row, the same for x0 and x1 of a RegFlow pair (it
keeps the OT cost and the N(0, I) prior law); ``internal`` coordinates are
rotation-invariant and need none.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bgkit import BgkitError
from bgkit.arrays import evenly_spaced
from bgkit.checkpoint import coords_state, flow_extra, load_checkpoint, system_record
from bgkit.coords import DEFAULT_COORDS, Representation, fit_representation, representation_from_state
from bgkit.md.dataset import Dataset, load_dataset, system_dataset
from bgkit.proposal import PROPOSAL_KIND
from bgkit.systems import System, load_system

if TYPE_CHECKING:
    from bgkit.train.config import TrainConfig


def _frames(dataset: Dataset | list[Dataset], split: str, max_frames: int | None, seed: int) -> np.ndarray:
    """Frames of ``split`` of one dataset or of several (joined in order), at most ``max_frames`` evenly spaced."""
    datasets = dataset if isinstance(dataset, list) else [dataset]
    xyz = np.concatenate([d.split(split) for d in datasets])
    return xyz[evenly_spaced(len(xyz), max_frames)].astype(np.float64)  # evenly spaced: keeps the time coverage


def to_flow_space(rep: Representation, xyz: np.ndarray) -> np.ndarray:
    """Flow vectors [n, D] (float64) of frames xyz [n, N, 3]; BgkitError if some fall outside the support."""
    y, _ = rep.to_flow(torch.as_tensor(xyz, dtype=torch.float64))
    bad = ~torch.isfinite(y).all(-1)
    if bool(bad.any()):
        raise BgkitError(f"{int(bad.sum())} of {len(y)} frames fall outside the {rep.kind} representation fitted on "
                         "the training frames (e.g. a mirrored stereocentre)")
    return y.numpy()


def make_ot_targets(system: System | str, out: str | Path, data: str | None = None, n: int | None = None,
                    block_size: int = 4096, seed: int = 0, align: bool = True,
                    coords: str = DEFAULT_COORDS) -> dict[str, Any]:
    """Exact-OT RegFlow targets for the train split of ``data`` (default: the system folder's own ``md/``).

    ``system``: a ``System`` (a shipped name or a system folder is resolved here).
    ``coords``: the flow space ("cartesian" | "internal"); in internal coordinates the
    cost on torsions is the squared wrapped (geodesic) difference. With ``align``
    (cartesian only; default) the equivalent terminal atoms of each target frame (methyl
    hydrogens, ...) are relabelled to the permutation nearest to its prior draw
    (:mod:`bgkit.symmetry`); the groups, checked for energy invariance, are recorded.
    """
    from bgkit.provenance import provenance
    from bgkit.train.targets import ot_pairs, save_targets

    sys_ = system if isinstance(system, System) else load_system(system)
    dataset = _datasets(data, sys_)[0]
    dataset.system.check_positions(dataset.xyz[:1])
    xyz = _frames(dataset, "train", n, seed)
    rep = fit_representation(coords, xyz, sys_)
    y = to_flow_space(rep, xyz)
    t0 = time.time()
    x0, x1 = ot_pairs(y, seed=seed, block_size=block_size, periodic=rep.periodic)
    seconds = time.time() - t0
    groups, rejected, relabelled = [], [], 0
    if align and rep.kind == "cartesian":
        from bgkit.symmetry import align_groups, equivalent_groups

        groups, rejected = equivalent_groups(sys_, xyz[evenly_spaced(len(xyz), 4)])
        x1, relabelled = align_groups(x0, x1, groups)
    info = {"system": system_record(sys_), "transform": rep.state_dict(), "coords": rep.kind,
            "cost": "squared euclidean" + ("; squared wrapped difference on torsions" if rep.periodic else ""),
            "dataset": str(dataset.folder),
            "split": "train", "frames": len(xyz), "block_size": block_size, "seconds": seconds,
            "aligned_groups": groups, "rejected_groups": rejected, "relabelled_pairs": relabelled}
    save_targets(out, x0, x1, provenance(seed=seed, **info), kind="ot")
    return info


def _datasets(data: str | list[str] | None, system: Any) -> list[Dataset]:
    """The training datasets (default: the system folder's own ``md/``, never one found by the system's name),
    each checked against the system (topology and Hamiltonian)."""
    names = [data] if isinstance(data, (str, Path)) else list(data or [])
    return [load_dataset(name, system) for name in names] if names else [system_dataset(system)]


def train_proposal(system: System | str, arch: str, objective: str, out: str | Path, targets: str | None = None,
                   data: str | list[str] | None = None, max_frames: int | None = None, hparams: dict | None = None,
                   config_overrides: dict | None = None, resume: bool = False, progress: bool = True,
                   coords: str | None = None, init: str | Path | None = None, energy_workers: int = 1,
                   rotor_augment: bool = False):
    """Train a flow for ``system`` (a ``System``; a shipped name or a system folder is resolved here) by
    ``objective`` with ``config_overrides`` of the :class:`~bgkit.train.config.TrainConfig` defaults; the
    checkpoint is a proposal. The other arguments are :func:`train_for_system`'s."""
    from bgkit.train.config import TrainConfig

    cfg = TrainConfig.from_dict({"objective": objective, **(config_overrides or {})})
    return train_for_system(system if isinstance(system, System) else load_system(system), arch, cfg, out,
                            targets=targets, data=data, max_frames=max_frames, hparams=hparams, resume=resume,
                            progress=progress, coords=coords, init=init, energy_workers=energy_workers,
                            rotor_augment=rotor_augment)


def train_for_system(system: System, arch: str, cfg: TrainConfig, out: str | Path, targets: str | None = None,
                     data: str | list[str] | None = None, max_frames: int | None = None, hparams: dict | None = None,
                     resume: bool = False, progress: bool = True, coords: str | None = None,
                     init: str | Path | None = None, energy_workers: int = 1, rotor_augment: bool = False):
    """Train a flow for ``system`` with the training config ``cfg``; the checkpoint is a proposal.

    ``cfg.objective``: a name of :data:`bgkit.train.objectives.OBJECTIVES` — "regflow" (regression onto
    ``targets``: an OT targets file or a reflow targets folder), "mle" (maximum likelihood on the train
    frames), "kl" (maximum likelihood + ``kl_weight`` × reverse KL to exp(−u), with energies and
    forces from ``energy_workers`` OpenMM workers; :mod:`bgkit.train.kl`), or a flow-matching
    objective ("cfm", "otcfm", "wcfm", "fdm") for ``arch="cnf"`` (a teacher; :mod:`bgkit.train.matching`).
    ``data``: a dataset folder or a list of them (their train and validation splits are joined).
    ``coords`` ("cartesian" | "internal"): the flow space. RegFlow takes it from the targets
    file (an explicit, different ``coords`` is an error); MLE and KL fit it on the train frames
    (default :data:`~bgkit.coords.DEFAULT_COORDS`). ``init``: start from the weights and representation of
    this proposal or checkpoint (same architecture; its hyperparameters are used), e.g. KL fine-tuning of
    an MLE flow.
    ``rotor_augment`` (frame objectives): relabel the hydrogens of every methyl (and NH3+) group of
    each training frame by a random cyclic shift (:class:`bgkit.symmetry.RotorRelabel`).
    """
    from bgkit.flows import build_flow
    from bgkit.train.loop import train
    from bgkit.train.targets import load_targets, ot_pairs

    spec, objective, sys_ = cfg.spec, cfg.objective, system
    if (arch == "cnf") != (spec.model == "cnf"):
        raise BgkitError(f"objective {objective!r} trains " + ("continuous flows (--arch cnf, `bgkit teacher train`)"
                         if spec.model == "cnf" else "coupling flows and TarFlow, not a cnf (teachers are trained by "
                         "flow matching: cfm, otcfm, wcfm, fdm)"))
    sys_.check_unconstrained("training")  # constrained bonds: no flow representation keeps them fixed
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 2):
        raise BgkitError(f"--max-frames must be a whole number >= 2 (the coordinates are fitted on the frames), "
                         f"got {max_frames!r}")
    datasets = _datasets(data, sys_)
    val_xyz = _frames(datasets, "val", 2000, cfg.seed)
    start = _initial_proposal(init, sys_, arch, coords) if init is not None else None
    if spec.pairs:
        if targets is None:
            raise BgkitError("--objective regflow needs --targets (make them with `bgkit targets ot` or "
                             "`bgkit targets reflow`)")
        if Path(targets).is_dir():
            from bgkit.train.reflow import open_reflow

            t = open_reflow(targets)
        else:
            t = load_targets(targets)
        prov = t.provenance
        if prov.get("system", {}).get("topology_hash") != sys_.topology_hash:
            raise BgkitError(f"targets {targets} were made for system '{prov.get('system', {}).get('name')}', not '{sys_.name}'")
        rep = representation_from_state(prov["transform"])
        if start is not None and start.transform != rep:
            raise BgkitError(f"--init {init} was trained in another flow space than targets {targets}")
        if coords is not None and coords != rep.kind:
            raise BgkitError(f"targets {targets} are in {rep.kind} coordinates, not {coords}: "
                             f"make targets with `bgkit targets ot --coords {coords}`")
        if cfg.logdet_weight > 0 and not prov.get("logdet"):
            raise BgkitError(f"--logdet-weight needs targets with the teacher's log-dets; {targets} has none: make "
                             "them with `bgkit targets reflow --logdet`")
        if Path(targets).is_dir():  # reflow chunks, streamed from the folder's chunks; its own held-out pairs validate
            train_data = t.train
            val_data = tuple(torch.as_tensor(v).float() for v in t.val)
            n_train = t.train.n
        else:
            train_data = (torch.as_tensor(t.x0).float(), torch.as_tensor(t.x1).float())
            y_val = to_flow_space(rep, val_xyz)
            v0, v1 = ot_pairs(y_val, seed=cfg.seed + 1, block_size=1000, periodic=rep.periodic)
            if prov.get("aligned_groups"):  # validate on pairs made like the training pairs
                from bgkit.symmetry import align_groups

                v1, _ = align_groups(v0, v1, prov["aligned_groups"])
            val_data = (torch.as_tensor(v0).float(), torch.as_tensor(v1).float())
            n_train = len(t.x0)
        targets_record = _targets_record(prov)
    else:
        xyz = _frames(datasets, "train", max_frames, cfg.seed)
        rep = start.transform if start is not None else fit_representation(coords or DEFAULT_COORDS, xyz, sys_)
        train_data = torch.as_tensor(to_flow_space(rep, xyz)).float()
        val_data = torch.as_tensor(to_flow_space(rep, val_xyz)).float()
        n_train = len(xyz)
        targets_record = None
    augment, rotors = rep.augment, []
    if rotor_augment:
        if spec.pairs:
            raise BgkitError("--rotor-augment relabels training frames; RegFlow pairs are fixed by their targets")
        from bgkit.symmetry import RotorRelabel, rotor_groups

        rotors = rotor_groups(sys_, xyz[evenly_spaced(len(xyz), 4)])
        augment = _compose(RotorRelabel(rep, rotors), rep.augment)
    if resume and Path(out).exists():
        previous = load_checkpoint(out)
        _check_resumed_origin(previous, Path(out), sys_, rep, targets)
        _check_resumed_rotors(previous, Path(out), rotors)
    hp = dict(start.info["hparams"]) if start is not None else dict(hparams or {})
    if rep.periodic:
        if arch == "tarflow":
            raise BgkitError("tarflow has no periodic (circular) transforms: use --arch nsf or realnvp with "
                             "--coords internal, or tarflow with --coords cartesian")
        hp["periodic"] = list(rep.periodic)
    torch.manual_seed(cfg.seed)  # the initial weights are a function of the seed
    flow = build_flow(arch, rep.dim, **hp)
    if start is not None:
        flow.load_state_dict(start.flow.state_dict())
    extra = flow_extra(PROPOSAL_KIND, sys_, rep, training={
        "command": " ".join(sys.argv),
        "dataset": str(datasets[0].folder) if len(datasets) == 1 else [str(d.folder) for d in datasets],
        "dataset_frames": sum(d.n_frames for d in datasets), "train_frames": n_train, "targets": targets,
        "targets_provenance": targets_record, "objective": objective, "arch": arch,
        "init": str(init) if init is not None else None, "rotor_groups": rotors,
        "init_training": start.info.get("training") if start is not None else None})
    if not spec.energy:
        return train(flow, train_data, val_data, cfg, out, resume=resume, augment=augment,
                     extra_checkpoint=extra, progress=progress)
    from bgkit.energy import EnergyModel
    from bgkit.train.kl import BoltzmannTarget

    with EnergyModel(sys_, n_workers=energy_workers) as model:
        target = BoltzmannTarget(rep, energy_cap=cfg.kl_energy_cap, energy_model=model)
        return train(flow, train_data, val_data, cfg, out, resume=resume, augment=augment,
                     extra_checkpoint=extra, progress=progress, target=target)


def _check_resumed_origin(previous: dict[str, Any], path: Path, system: System, rep: Representation,
                          targets: str | None) -> None:
    """Refuse to resume the checkpoint ``previous`` (of ``path``) of a run trained on another system or in other
    coordinates, saying which (rather than the flow dimensions that differ as a result)."""
    extra = previous.get("extra") or {}
    old_sys = extra.get("system") or {}
    if old_sys.get("topology_hash") not in (None, system.topology_hash):
        raise BgkitError(f"cannot resume from {path}: it was trained on system '{old_sys.get('name')}' "
                         f"({old_sys.get('n_atoms')} atoms), not '{system.name}' ({system.n_atoms} atoms); "
                         "give the run's --system or another --out")
    state = coords_state(extra)
    if state is None:
        return
    old_rep = representation_from_state(state)
    source = f"--targets {targets}" if targets else "--coords"
    if old_rep.kind != rep.kind:
        raise BgkitError(f"cannot resume from {path}: it was trained in {old_rep.kind} coordinates, not {rep.kind} "
                         f"(from {source}); repeat the run's options or choose another --out")
    if old_rep != rep:
        raise BgkitError(f"cannot resume from {path}: its {old_rep.kind} coordinates were fitted on other frames or "
                         f"targets than this run's (--data, --max-frames or --targets differ); repeat the run's "
                         "options or choose another --out")


def _check_resumed_rotors(previous: dict[str, Any], path: Path, rotors: list) -> None:
    """Refuse to resume the checkpoint ``previous`` (of ``path``) of a run whose rotor relabelling
    (``--rotor-augment``) differs from this call's."""
    before = ((previous.get("extra") or {}).get("training") or {}).get("rotor_groups") or []
    if [list(map(int, g)) for g in before] != [list(map(int, g)) for g in rotors]:
        said = "with --rotor-augment" if before else "without --rotor-augment"
        raise BgkitError(f"cannot resume from {path}: it was trained {said}; repeat the run's options "
                         f"(its command is in the checkpoint)")


def _compose(first, then):
    """``then(first(batch))``; ``then`` may be None."""
    return first if then is None else (lambda batch: then(first(batch)))


def _initial_proposal(init: str | Path, system: Any, arch: str, coords: str | None):
    """The proposal whose weights start a run (checked against the system, architecture and coords)."""
    from bgkit.proposal import Proposal

    start = Proposal.load(init, system=system)
    if start.info["arch"] != arch:
        raise BgkitError(f"--init {init} is a {start.info['arch']} flow, not {arch}")
    if coords is not None and coords != start.transform.kind:
        raise BgkitError(f"--init {init} works in {start.transform.kind} coordinates, not {coords}")
    return start


def _targets_record(prov: dict[str, Any]) -> dict[str, Any]:
    """What a proposal keeps of its targets' provenance: how they were made."""
    keys = ("command", "seed", "time_utc", "bgkit_version", "dataset", "split", "frames", "block_size", "coords", "cost",
            "aligned_groups", "rejected_groups", "relabelled_pairs", "kind", "teacher", "teacher_sha256",
            "teacher_objective", "n", "chunk_size", "method", "steps", "created")
    return {k: prov[k] for k in keys if k in prov}
