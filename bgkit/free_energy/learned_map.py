"""Targeted FEP with a learned map between two conformational states: the map, its works, the estimates.

A map M: A → B is a flow F trained in the flow space of a coordinate
representation R (:mod:`bgkit.coords`), M = R⁻¹ ∘ F ∘ R, where F moves the flow
dimensions ``dims`` and leaves the others unchanged, stored as a
checkpoint of kind ``bgkit.tfep_map`` (trained by :mod:`bgkit.train.learned_map`, read by
:func:`bgkit.checkpoint.load_flow_checkpoint` like a proposal).
Its log-Jacobian is that of the three maps in the one density convention of
docs/conventions.md, so ln|det J_M(x)| = logdet_to(x) + ln|det J_F(y)| +
logdet_from(F(y)); the constants of the convention cancel.

The states are restricted ensembles, u_S(x) = u(x) inside S and +inf outside,
so ΔF_AB = −ln(Z_B / Z_A) with Z_S = ∫_S exp(−u): a sample of A mapped outside B
(or a sample of B mapped outside A) gets an infinite work (zero weight), and
is counted. Estimators: EXP forward, EXP reverse and BAR of
:mod:`bgkit.free_energy.estimators`; for time-correlated MD frames their errors also
come from a bootstrap over contiguous time blocks (:func:`works_block_errors`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgkit import BgkitError
from bgkit.blocks import block_bootstrap, bootstrap_std
from bgkit.coords import Representation
from bgkit.free_energy.estimators import FepResult, bar_estimate, exp_estimate, forward_works, reverse_works
from bgkit.free_energy.states import State

__all__ = ["MAP_KIND", "TFEP_ESTIMATORS", "LearnedMap", "TfepWorks", "map_works", "tfep_estimates",
           "works_block_errors"]

#: ``extra["kind"]`` of a TFEP map checkpoint
MAP_KIND = "bgkit.tfep_map"
#: the estimates :func:`tfep_estimates` makes from forward and reverse works
TFEP_ESTIMATORS = ("exp_forward", "exp_reverse", "bar")


@dataclass
class LearnedMap:
    """A map M: A → B between two states: flow + coordinate representation (+ training metadata)."""

    flow: torch.nn.Module
    transform: Representation
    dims: list[int]  #: flow dimensions the flow acts on (identity elsewhere)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, topology_hash: str | None = None) -> LearnedMap:
        """Load a map checkpoint (:func:`bgkit.checkpoint.load_flow_checkpoint`, either format version);
        with ``topology_hash``, refuse a map made for another system."""
        from bgkit.checkpoint import load_flow_checkpoint

        loaded = load_flow_checkpoint(path, MAP_KIND, "a TFEP map (train one with `bgkit fep`)")
        path, extra, ckpt, rep = loaded.path, loaded.extra, loaded.checkpoint, loaded.coords
        if topology_hash is not None and extra["system"]["topology_hash"] != topology_hash:
            raise BgkitError(f"map {path} was trained for system '{extra['system']['name']}', another topology")
        dims = [int(d) for d in extra.get("dims", range(rep.dim))]
        n_flow = int(ckpt["flow"]["dim"])
        if len(dims) != n_flow or not all(0 <= d < rep.dim for d in dims):
            raise BgkitError(f"{path}: the flow acts on {n_flow} dimensions, not the {len(dims)} it lists")
        return cls(loaded.flow, rep, dims,
                   {"states": extra.get("states"), "training": extra.get("training", {}),
                    "metrics": ckpt.get("metrics", {}), "step": int(ckpt.get("step", 0)),
                    "final": bool(ckpt.get("final", True))}, path)

    @torch.no_grad()
    def _apply(self, xyz: Any, inverse: bool, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        out_x, out_ld = [], []
        dtype = next(self.flow.parameters()).dtype
        for chunk in torch.split(torch.as_tensor(np.asarray(xyz), dtype=torch.float64), batch_size):
            y, ld_to = self.transform.to_flow(chunk)
            moved, ld_flow = (self.flow.inverse if inverse else self.flow.forward)(y[:, self.dims].to(dtype))
            y2 = y.clone()
            y2[:, self.dims] = moved.double()
            x2, ld_from = self.transform.from_flow(y2)
            out_x.append(x2.numpy())
            out_ld.append((ld_to + ld_flow.double() + ld_from).numpy())
        if not out_x:
            return np.zeros((0, self.transform.n_atoms, 3)), np.zeros(0)
        return np.concatenate(out_x), np.concatenate(out_ld)

    def forward(self, xyz: Any, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """M(x) for frames [n, N, 3] (nm): mapped frames [n, N, 3] (centred) and ln|det J_M(x)| [n]."""
        return self._apply(xyz, False, batch_size)

    def inverse(self, xyz: Any, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """M⁻¹(y) for frames [n, N, 3] (nm): mapped frames and ln|det J_{M⁻¹}(y)| [n]."""
        return self._apply(xyz, True, batch_size)


@dataclass
class TfepWorks:
    """Forward works [N_A] on samples of A and reverse works [N_B] on samples of B (kT; +inf = zero weight).

    left_forward / left_reverse: mapped samples that landed outside the target state;
    nonfinite_forward / _reverse: mapped samples with a non-finite energy (overlapping atoms, NaN).
    """

    forward: np.ndarray
    reverse: np.ndarray
    left_forward: int
    left_reverse: int
    nonfinite_forward: int
    nonfinite_reverse: int


def _restricted_energy(energy: Callable[[np.ndarray], np.ndarray], xyz: np.ndarray, inside: np.ndarray
                       ) -> tuple[np.ndarray, int]:
    u = np.full(len(xyz), np.inf)
    finite_xyz = np.isfinite(xyz).all(axis=(1, 2))
    todo = inside & finite_xyz
    if todo.any():
        u[todo] = energy(xyz[todo])
    nonfinite = int((~finite_xyz).sum() + (~np.isfinite(u[todo])).sum())
    u[~np.isfinite(u)] = np.inf
    return u, nonfinite


def map_works(lmap: LearnedMap, energy: Callable[[np.ndarray], np.ndarray],
              in_state: Callable[[np.ndarray, State], np.ndarray], xyz_a: np.ndarray, xyz_b: np.ndarray,
              state_a: State, state_b: State) -> TfepWorks:
    """TFEP works of ``lmap`` between the restricted ensembles of ``state_a`` and ``state_b``.

    energy(xyz [n, N, 3]) -> reduced energies [n] (kT; e.g. a :class:`bgkit.energy.EnergyModel`);
    in_state(xyz, state) -> bool [n]; xyz_a / xyz_b: samples of A / B (nm), every one inside its state.
    """
    for xyz, state, name in ((xyz_a, state_a, "A"), (xyz_b, state_b, "B")):
        if len(xyz) == 0:
            raise BgkitError(f"no samples of state {name} ({state.name})")
        outside = int((~in_state(xyz, state)).sum())
        if outside:
            raise BgkitError(f"{outside} of the samples of state {name} lie outside {state.name}")
    u_a, u_b = energy(xyz_a), energy(xyz_b)
    m_a, ld_f = lmap.forward(xyz_a)
    m_b, ld_r = lmap.inverse(xyz_b)
    in_b = in_state(np.nan_to_num(m_a), state_b) & np.isfinite(m_a).all(axis=(1, 2))
    in_a = in_state(np.nan_to_num(m_b), state_a) & np.isfinite(m_b).all(axis=(1, 2))
    u_b_m, bad_f = _restricted_energy(energy, m_a, in_b)
    u_a_m, bad_r = _restricted_energy(energy, m_b, in_a)
    return TfepWorks(forward_works(u_a, u_b_m, ld_f), reverse_works(u_b, u_a_m, ld_r),
                     int((~in_b).sum()), int((~in_a).sum()), bad_f, bad_r)


def tfep_estimates(w_f: np.ndarray, w_r: np.ndarray) -> tuple[dict[str, FepResult], dict[str, str]]:
    """ΔF_AB (kT) by EXP forward, EXP reverse and BAR: ({name: result}, {name: why it failed}).

    w_f [N_A], w_r [N_B]: forward and reverse works (kT). An estimator fails (no number) when its works
    have no finite value or BAR cannot be solved.
    """
    runs = {"exp_forward": lambda: exp_estimate(w_f), "exp_reverse": lambda: exp_estimate(w_r, reverse=True),
            "bar": lambda: bar_estimate(w_f, w_r)}
    results: dict[str, FepResult] = {}
    failures: dict[str, str] = {}
    for name in TFEP_ESTIMATORS:
        try:
            results[name] = runs[name]()
        except BgkitError as exc:
            failures[name] = str(exc)
    return results, failures


def works_block_errors(w_f: np.ndarray, w_r: np.ndarray, n_blocks: int = 20, n_boot: int = 200,
                       seed: int = 0) -> dict[str, float]:
    """Standard deviations (kT) of EXP forward / reverse and BAR over a bootstrap of contiguous time blocks.

    w_f [N_A], w_r [N_B]: works in the time order of their trajectories; each is cut into
    ``n_blocks`` blocks (fewer if shorter) resampled with replacement (:func:`bgkit.blocks.block_bootstrap`).
    inf where some replicate has no finite work or BAR fails.
    """
    def estimates(f: np.ndarray, r: np.ndarray) -> list[float]:
        results, _ = tfep_estimates(f, r)
        return [results[k].delta_f_kt if k in results else math.inf for k in TFEP_ESTIMATORS]

    replicates = block_bootstrap(estimates, np.asarray(w_f, dtype=np.float64), np.asarray(w_r, dtype=np.float64),
                                 n_blocks=n_blocks, n_boot=n_boot, seed=seed)
    return {name: bootstrap_std(replicates[:, i]) for i, name in enumerate(TFEP_ESTIMATORS)}
