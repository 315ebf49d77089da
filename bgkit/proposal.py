"""A trained flow as a proposal for a molecular system: sample x ~ q and evaluate log q(x).

A proposal file is a checkpoint (:mod:`bgkit.checkpoint`) whose
``extra`` entry holds everything needed to sample without the training
configuration: the system (name, topology hash, atom count, temperature), the
coordinate representation (``extra["coords"]``, ``extra["transform"]`` in files of
format 1: its ``kind`` and fitted state; states without a kind are ``cartesian``) and
the training data and command. ``log_q`` is returned in nm coordinates: a density on the
centroid-free subspace, parametrised by the first N-1 centred atoms, whatever
the representation (:mod:`bgkit.coords.base`), so ``log w = -u/kT - log q`` is
consistent across ESS, NLL and free energies.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgkit import BgkitError
from bgkit.checkpoint import system_record
from bgkit.coords import Representation
from bgkit.systems import System, load_system

__all__ = ["PROPOSAL_KIND", "Proposal", "export_proposal", "system_record"]

PROPOSAL_KIND = "bgkit.proposal"


@dataclass
class Proposal:
    """Flow + coordinate representation + the system it was trained for (``system_info``, as recorded) and,
    once checked against one, that ``System`` (:meth:`bind`)."""

    flow: torch.nn.Module
    transform: Representation
    system_info: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)  #: training data, command, metrics, provenance
    path: Path | None = None
    system: System | None = None  #: the System it was checked against (None: not yet)

    # ------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike, system: System | str | None = None, device: str = "cpu") -> "Proposal":
        """Load a proposal; with ``system`` (a ``System``; a name or folder is resolved here), refuse one trained
        for another system, and bind it to ``system`` (:meth:`bind`)."""
        from bgkit.checkpoint import load_flow_checkpoint

        loaded = load_flow_checkpoint(path, PROPOSAL_KIND, "a bgkit proposal", device=device)
        ckpt, extra, rep, path = loaded.checkpoint, loaded.extra, loaded.coords, loaded.path
        flow_info = ckpt["flow"]
        if int(flow_info["dim"]) != rep.dim or tuple(flow_info["hparams"].get("periodic", ())) != rep.periodic:
            raise BgkitError(f"{path}: the flow acts on {flow_info['dim']} dimensions but its {rep.kind} coordinates "
                             f"have {rep.dim} (periodic {list(rep.periodic)}): the file is inconsistent")
        proposal = cls(loaded.flow, rep, extra["system"],
                       {"training": extra.get("training", {}), "metrics": ckpt.get("metrics", {}),
                        "provenance": ckpt.get("provenance", {}), "config": ckpt.get("config", {}),
                        "arch": flow_info["arch"], "hparams": flow_info["hparams"], "coords": rep.kind,
                        "step": int(ckpt.get("step", 0)), "final": bool(ckpt.get("final", True)),
                        "planned_steps": int(ckpt.get("config", {}).get("steps", 0))}, path)
        if system is not None:
            proposal.bind(system)
        return proposal

    def bind(self, system: System | str | None = None) -> System:
        """The ``System`` this proposal samples for: ``system`` (a name or folder is resolved here), checked
        (:meth:`check_system`) and remembered, unless it is the very ``System`` already bound; by default the
        bound one. BgkitError when neither is given."""
        if system is None or system is self.system:
            if self.system is None:
                raise BgkitError("which system? pass the System this proposal samples for")
            return self.system
        system = system if isinstance(system, System) else load_system(system)
        self.check_system(system)
        self.system = system
        return system

    @property
    def finished(self) -> bool:
        """False for a checkpoint of a training run that was interrupted before its last step."""
        return self.info.get("final", True)

    def unfinished_note(self) -> str | None:
        """One line saying this is an interrupted run's checkpoint, or None."""
        if self.finished:
            return None
        return (f"{self.path} is the checkpoint of an unfinished training run (step {self.info['step']} of "
                f"{self.info['planned_steps']}); resume it with `bgkit train ... --resume` to finish")

    def temperature_note(self, system: System) -> str | None:
        """One line saying this proposal was trained at another temperature than ``system``'s, or None."""
        trained = self.system_info.get("temperature_K")
        if trained is None or abs(float(trained) - system.temperature) <= 1e-6 * system.temperature:
            return None
        return (f"{self.path} was trained at {float(trained):g} K but system '{system.name}' is at "
                f"{system.temperature:g} K: its samples are reweighted to {system.temperature:g} K (expect a low ESS)")

    def check_system(self, system: System) -> None:
        """Raise BgkitError unless this proposal was trained for ``system``."""
        mine = self.system_info
        if mine["name"] != system.name or mine["topology_hash"] != system.topology_hash:
            where = f" ({self.path})" if self.path else ""
            raise BgkitError(
                f"proposal{where} was trained for system '{mine['name']}' ({mine['n_atoms']} atoms), "
                f"not for '{system.name}' ({system.n_atoms} atoms)"
                + (" with a different topology" if mine["name"] == system.name else "")
            )

    # ------------------------------------------------------------ sampling
    @property
    def device(self) -> torch.device:
        return next(self.flow.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.flow.parameters()).dtype

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """n samples: positions float64 [n, N, 3] (nm, centred) and log q (nm coordinates) float64 [n]."""
        return self.from_prior(self.prior_sample(n, generator))

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n prior draws [n, D] on the flow's device and dtype (the only random step of :meth:`sample`)."""
        return self.flow.prior_sample(n, generator, device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def from_prior(self, z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Positions float64 [B, N, 3] (nm) and log q float64 [B] of prior draws z [B, D]."""
        y, logdet = self.flow(z)
        xyz, logdet_from = self.transform.from_flow(y.double())
        log_q = self.flow.prior_log_prob(z).double() - logdet.double() - logdet_from
        return xyz.cpu().numpy(), log_q.cpu().numpy()

    @torch.no_grad()
    def log_prob(self, xyz: Any, batch_size: int = 4096) -> np.ndarray:
        """log q of positions [B, N, 3] in nm (any translation and orientation), float64 [B];
        -inf for frames outside the proposal's support (e.g. a mirrored stereocentre)."""
        out = []
        x = torch.as_tensor(np.asarray(xyz), dtype=torch.float64)
        for chunk in torch.split(x, batch_size):
            y, logdet_to = self.transform.to_flow(chunk)
            lq = self.flow.log_prob(y.to(device=self.device, dtype=self.dtype)).double().cpu() + logdet_to
            out.append(torch.nan_to_num(lq, nan=-torch.inf))
        return torch.cat(out).numpy() if out else np.zeros(0)


def export_proposal(checkpoint: str | os.PathLike, out: str | os.PathLike, metrics: dict | None = None,
                    unfinished: bool = False) -> Path:
    """A slim copy of a training checkpoint for shipping: EMA weights and metadata, no optimiser state.

    ``metrics`` (e.g. ``bgkit evaluate``'s metrics.json) are merged into the file's ``metrics``. The
    checkpoint of an interrupted run (not at its last step) is refused unless ``unfinished``.
    """
    from bgkit.checkpoint import COORDS_KEY, current_extra, load_checkpoint, write_checkpoint
    from bgkit.provenance import json_safe

    ckpt = load_checkpoint(checkpoint)
    if not ckpt.get("final", True) and not unfinished:
        raise BgkitError(f"{checkpoint} is the checkpoint of an unfinished training run (step {ckpt['step']} of "
                         f"{ckpt['config'].get('steps')}): finish it with `bgkit train ... --resume`, or pass "
                         "--unfinished to export it anyway")
    slim = {k: v for k, v in ckpt.items() if k not in ("raw_model", "optimizer", "scheduler", "rng")}
    slim["extra"] = current_extra(slim.get("extra") or {})
    merged = {**slim.get("metrics", {}), **json_safe(metrics or {})}
    slim["metrics"] = {k: v for k, v in merged.items() if k != COORDS_KEY}  # the representation is extra's alone
    return write_checkpoint(slim, out)
