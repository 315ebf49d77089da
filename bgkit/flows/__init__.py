"""Invertible flow architectures with exact forward and inverse and log|det J| both ways.

Every flow (coupling flows, TarFlow, and the continuous `CNF` trained by flow
matching) is a `Flow` on flat vectors [B, D] with the prior of :mod:`bgkit.flows.base`:
``forward(z) -> (x, log|det dx/dz|)``, ``inverse(x) -> (z, log|det dz/dx|)``,
``log_prob(x)``, ``sample(n, generator)`` and ``hparams`` such that
``build_flow(flow.arch, flow.dim, **flow.hparams)`` rebuilds the architecture.
"""
from __future__ import annotations

import inspect
from typing import Any

from bgkit import BgkitError

from .base import Flow, ResidualMLP, std_normal_log_prob
from .cnf import CNF
from .coupling import NSF, ResNVP
from .tarflow import TarFlow

ARCHITECTURES: dict[str, type[Flow]] = {"realnvp": ResNVP, "nsf": NSF, "tarflow": TarFlow, "cnf": CNF}


def build_flow(arch: str, dim: int, **hparams: Any) -> Flow:
    """Build a flow of architecture `arch` ("realnvp", "nsf", "tarflow", "cnf") on R^dim.

    `hparams` are the class's keyword arguments (see each class); unknown names
    or invalid values raise `BgkitError`.
    """
    if arch not in ARCHITECTURES:
        raise BgkitError(f"unknown flow architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[arch]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "dim")]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise BgkitError(f"unknown hyperparameter(s) {unknown} for {arch!r}; allowed: {allowed}")
    try:
        return cls(int(dim), **hparams)
    except ValueError as err:
        raise BgkitError(f"invalid {arch!r} flow: {err}") from err


__all__ = ["ARCHITECTURES", "CNF", "Flow", "NSF", "ResNVP", "ResidualMLP", "TarFlow", "build_flow",
           "std_normal_log_prob"]
