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


#: integer hyperparameters that may be 0 (counts of optional blocks); every other integer must be >= 1
_MAY_BE_ZERO = ("n_blocks", "time_freqs")
#: widths of the networks, and the largest width accepted
_WIDTHS = ("hidden", "width")
MAX_WIDTH = 65536
#: the largest value of any other integer hyperparameter (layers, blocks, bins, heads, ...), ODE steps apart
MAX_HPARAM = 1024
_MAX_ODE_STEPS = 100_000


def check_hparams(arch: str, hparams: dict[str, Any]) -> None:
    """BgkitError naming the first hyperparameter of ``arch`` that is unknown or of the wrong type or range
    (integers: whole numbers >= 1, counts of blocks >= 0, at most MAX_WIDTH for widths and MAX_HPARAM for the
    others; numbers: finite and > 0)."""
    import math

    cls = architecture(arch)
    params = {k: v for k, v in inspect.signature(cls.__init__).parameters.items() if k not in ("self", "dim")}
    unknown = sorted(set(hparams) - set(params))
    if unknown:
        raise BgkitError(f"unknown hyperparameter(s) {unknown} for {arch!r}; allowed: {list(params)}")
    for name, value in hparams.items():
        default = params[name].default
        where = f"--hparams {name} of {arch!r}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise BgkitError(f"{where} must be true or false, got {value!r}")
        elif isinstance(default, int):
            low = 0 if name in _MAY_BE_ZERO else 1
            high = MAX_WIDTH if name in _WIDTHS else _MAX_ODE_STEPS if name == "steps" else MAX_HPARAM
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise BgkitError(f"{where} must be a whole number in [{low}, {high}], got {value!r}")
        elif isinstance(default, float):
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or value <= 0):
                raise BgkitError(f"{where} must be a finite number > 0, got {value!r}")
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise BgkitError(f"{where} must be a string, got {value!r}")
        elif name == "periodic":
            if not isinstance(value, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                               and i >= 0 for i in value):
                raise BgkitError(f"{where} must be a list of dimension indices >= 0, got {value!r}")


def _check_size(cls: type, dim: int, hparams: dict[str, Any], arch: str) -> None:
    """BgkitError if training a flow this wide (weights, EMA, gradients, two AdamW moments: 5 float32 copies)
    would need more memory than is available. The parameter count is quadratic in the width: it is fitted on
    three narrow copies of the flow and extrapolated (nothing large is allocated); narrow flows are not sized."""
    from bgkit.limits import available_memory, human_bytes

    name = next((k for k in _WIDTHS if k in hparams), None)
    if name is None or hparams[name] < 1024:
        return
    heads = inspect.signature(cls.__init__).parameters.get("n_heads")
    unit = int(hparams.get("n_heads", heads.default if heads is not None else 1) or 1)  # the width's divisor
    try:
        counts = [sum(p.numel() for p in cls(int(dim), **{**hparams, name: k * unit}).parameters()) for k in (1, 2, 3)]
    except Exception:  # noqa: BLE001 - a configuration that cannot be built narrow is left to the real build
        return
    a = (counts[2] - 2 * counts[1] + counts[0]) / (2 * unit * unit)  # count(w) = a w^2 + b w + c
    b = (counts[1] - counts[0]) / unit - 3 * a * unit
    c = counts[0] - a * unit * unit - b * unit
    w = hparams[name]
    n = int(a * w * w + b * w + c)
    need, avail = 5 * 4 * n, available_memory()
    if avail is not None and need > 0.8 * avail:
        raise BgkitError(f"--hparams {hparams} make a {arch} flow of about {n:,} parameters, which needs about "
                         f"{human_bytes(need)} of memory to train, more than available ({human_bytes(avail)}): "
                         f"choose a smaller {name}")


def build_flow(arch: str, dim: int, **hparams: Any) -> "Flow":
    """Build a flow of architecture `arch` ("realnvp", "nsf", "tarflow", "cnf") on R^dim.

    `hparams` are the class's keyword arguments (see each class); unknown names
    or invalid values (:func:`check_hparams`), or a flow too large for the memory available, raise `BgkitError`.
    """
    cls = architecture(arch)
    check_hparams(arch, hparams)
    _check_size(cls, dim, hparams, arch)
    try:
        return cls(int(dim), **hparams)
    except ValueError as err:
        raise BgkitError(f"invalid {arch!r} flow: {err}") from err


__all__ = ["ARCHITECTURES", "FLOW_ARCHITECTURES", "architecture", "check_hparams", "CNF", "Flow", "NSF", "ResNVP", "ResidualMLP", "TarFlow", "build_flow",
           "std_normal_log_prob"]
