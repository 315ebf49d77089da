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

import importlib
from typing import TYPE_CHECKING

from bgkit import BgkitError

if TYPE_CHECKING:
    from .base import Flow

#: architecture name -> (module of bgkit.flows, class); classes are imported on first use (torch is heavy)
ARCHITECTURES: dict[str, tuple[str, str]] = {"realnvp": ("coupling", "ResNVP"), "nsf": ("coupling", "NSF"),
                                             "tarflow": ("tarflow", "TarFlow"), "cnf": ("cnf", "CNF")}
#: architectures trained as classical flows (regflow, mle, kl); "cnf" is trained by flow matching
FLOW_ARCHITECTURES = ("realnvp", "nsf", "tarflow")
_LAZY = {"Flow": "base", "ResidualMLP": "base", "std_normal_log_prob": "base", "NSF": "coupling",
         "ResNVP": "coupling", "TarFlow": "tarflow", "CNF": "cnf"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def architecture(arch: str) -> type:
    """The flow class of architecture ``arch``."""
    if arch not in ARCHITECTURES:
        raise BgkitError(f"unknown flow architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    module, cls = ARCHITECTURES[arch]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def build_flow(arch: str, dim: int, **hparams: Any) -> "Flow":
    """Build a flow of architecture `arch` ("realnvp", "nsf", "tarflow", "cnf") on R^dim.

    `hparams` are the class's keyword arguments (see each class); unknown names
    or invalid values raise `BgkitError`.
    """
    cls = architecture(arch)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "dim")]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise BgkitError(f"unknown hyperparameter(s) {unknown} for {arch!r}; allowed: {allowed}")
    try:
        return cls(int(dim), **hparams)
    except ValueError as err:
        raise BgkitError(f"invalid {arch!r} flow: {err}") from err


__all__ = ["ARCHITECTURES", "FLOW_ARCHITECTURES", "architecture", "CNF", "Flow", "NSF", "ResNVP", "ResidualMLP", "TarFlow", "build_flow",
           "std_normal_log_prob"]
