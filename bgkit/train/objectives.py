"""The registry of training objectives: what each one trains, on which data, in which units.

The training loop, the CLI choices and the checkpoint metadata all read :data:`OBJECTIVES`; adding
an objective means adding one entry here. An entry carries its own options: the
:class:`~bgkit.train.config.TrainConfig` fields its loss reads, each with its check (the CLI offers an
option only to the objectives that read it). Every ``loss`` has the signature

    loss(model, batch, config, *, generator=None, train=True, target=None) -> (scalar loss, stats)

``batch`` is ``(x0, x1)`` (or ``(x0, x1, teacher log-det [B])``) for pair objectives and ``(x,)`` for frame
objectives (flow space, [B, D]);
``train=False`` is validation (no target noise, no energy term); ``generator`` draws the objective's
own randomness (prior draws, times, probes), fixed during validation so its loss is deterministic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from bgkit.limits import MAX_BATCH
from bgkit.train.regflow import REGULARISERS, regflow_loss

if TYPE_CHECKING:  # the losses import torch when first called: listing the registry stays cheap
    import torch
    from torch import Tensor, nn

__all__ = ["REGULARISERS", "Option", "Objective", "OBJECTIVES", "FLOW_OBJECTIVES", "TEACHER_OBJECTIVES",
           "DEFAULT_TEACHER_OBJECTIVE", "get_objective", "objective_options", "option_owners"]

Loss = Callable[..., "tuple[Tensor, dict[str, float]]"]


def _number(x: Any) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Option:
    """A training-config field that an objective's loss reads: ``check(value)`` says whether a value is valid,
    ``allowed`` says which values are (in the error of :meth:`bgkit.train.config.TrainConfig.validate`)."""

    field: str
    check: Callable[[Any], bool]
    allowed: str


def _at_least_zero(field: str) -> Option:
    return Option(field, lambda x: _number(x) and x >= 0, "a finite number >= 0")


def _positive(field: str) -> Option:
    return Option(field, lambda x: _number(x) and x > 0, "a finite number > 0")


@dataclass(frozen=True)
class Objective:
    """One training objective.

    name: CLI/config name. summary: one line for ``--help``. pairs: trains on (x0, x1) pairs (else frames).
    model: "flow" (coupling flows, TarFlow) or "cnf" (continuous flows, trained by flow matching).
    energy: needs the system's energy during training. units: of the reported loss. loss: see module doc.
    options: the config fields the loss reads (no other objective reads them unless it lists them too).
    """

    name: str
    summary: str
    pairs: bool
    model: str
    units: str
    loss: Loss
    energy: bool = False
    options: tuple[Option, ...] = ()

    @property
    def option_fields(self) -> tuple[str, ...]:
        return tuple(o.field for o in self.options)


def _regflow(model: nn.Module, batch: tuple[Tensor, ...], cfg: Any, *, generator: torch.Generator | None = None,
             train: bool = True, target: Any = None) -> tuple[Tensor, dict[str, float]]:
    return regflow_loss(model, batch[0], batch[1], noise_std=cfg.noise_std if train else 0.0, reg=cfg.reg,
                        reg_weight=cfg.reg_weight, generator=generator,
                        logdet_target=batch[2] if len(batch) > 2 else None, logdet_weight=cfg.logdet_weight)


def _mle(model: nn.Module, batch: tuple[Tensor, ...], cfg: Any, *, generator: torch.Generator | None = None,
         train: bool = True, target: Any = None) -> tuple[Tensor, dict[str, float]]:
    from bgkit.train.mle import mle_loss

    return mle_loss(model, batch[0])


def _kl(model: nn.Module, batch: tuple[Tensor, ...], cfg: Any, *, generator: torch.Generator | None = None,
        train: bool = True, target: Any = None) -> tuple[Tensor, dict[str, float]]:
    from bgkit.train.mle import mle_loss

    started = target.start(model, cfg.kl_batch_size or batch[0].shape[0]) if train and cfg.kl_weight > 0 else None
    loss, stats = mle_loss(model, batch[0])  # while the energy workers compute the KL samples' forces
    if started is not None:
        kl, kl_stats = target.finish(started)
        loss = loss + cfg.kl_weight * kl
        stats = {**stats, **kl_stats, "loss": float(loss.detach())}
    return loss, stats


def _matching(kind: str) -> Loss:
    def loss(model: nn.Module, batch: tuple[Tensor, ...], cfg: Any, *, generator: torch.Generator | None = None,
             train: bool = True, target: Any = None) -> tuple[Tensor, dict[str, float]]:
        from bgkit.train.matching import flow_matching_loss

        return flow_matching_loss(model, batch[0], kind, wcfm_kappa=cfg.wcfm_kappa,
                                  fdm_weights=(cfg.fdm_cfm_weight, cfg.fdm_cdm_weight), generator=generator)

    return loss


_FM_UNITS = "squared velocity error summed over dims, flow-space units^2 per unit time^2"
_REGFLOW_OPTIONS = (
    Option("reg", lambda x: x in REGULARISERS, f"one of {', '.join(r or 'none' for r in REGULARISERS)}"),
    _at_least_zero("reg_weight"), _at_least_zero("noise_std"), _at_least_zero("logdet_weight"))
_KL_OPTIONS = (
    _at_least_zero("kl_weight"),
    Option("kl_batch_size", lambda x: x is None or (_whole(x) and 2 <= x <= MAX_BATCH),
           f"a whole number in [2, {MAX_BATCH:,}] (or None)"),
    _positive("kl_energy_cap"))
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("regflow", "RegFlow: l2 regression of the flow onto fixed (prior, target) pairs (--targets)", True,
              "flow", "squared error summed over dims, flow-space units^2 (+ reg_weight * regulariser)", _regflow,
              options=_REGFLOW_OPTIONS),
    Objective("mle", "maximum likelihood on the training frames", False, "flow",
              "nats per sample (negative log-likelihood summed over dims, flow space)", _mle),
    Objective("kl", "maximum likelihood + kl_weight x reverse KL to the Boltzmann distribution (energies and forces "
              "each step)", False, "flow",
              "nats per sample: NLL of the data (flow space) + kl_weight * mean(u/kT + log q) of flow samples "
              "(nm density); validation: the NLL alone", _kl, energy=True, options=_KL_OPTIONS),
    Objective("cfm", "conditional flow matching, independent pairs", False, "cnf", _FM_UNITS, _matching("cfm")),
    Objective("otcfm", "flow matching on minibatch exact-OT pairs", False, "cnf", _FM_UNITS, _matching("otcfm")),
    Objective("wcfm", "flow matching, independent pairs weighted by exp(-|x1 - x0| / (kappa sqrt(D)))", False, "cnf",
              _FM_UNITS, _matching("wcfm"), options=(_positive("wcfm_kappa"),)),
    Objective("fdm", "flow-divergence matching: CFM + weighted conditional continuity residual (Hutchinson)", False,
              "cnf", _FM_UNITS, _matching("fdm"),
              options=(_at_least_zero("fdm_cfm_weight"), _at_least_zero("fdm_cdm_weight"))),
)}
FLOW_OBJECTIVES = tuple(name for name, o in OBJECTIVES.items() if o.model == "flow")
TEACHER_OBJECTIVES = tuple(name for name, o in OBJECTIVES.items() if o.model == "cnf")
DEFAULT_TEACHER_OBJECTIVE = "cfm"  #: what `bgkit teacher train` trains unless told


def objective_options() -> tuple[Option, ...]:
    """Every option of the registry, once each, in registry order."""
    seen: dict[str, Option] = {}
    for objective in OBJECTIVES.values():
        for option in objective.options:
            seen.setdefault(option.field, option)
    return tuple(seen.values())


def option_owners(field: str, among: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The objectives (of ``among``, default all) whose loss reads config field ``field``."""
    return tuple(name for name in (among or tuple(OBJECTIVES)) if field in OBJECTIVES[name].option_fields)


def get_objective(name: str) -> Objective:
    """The registered objective ``name``; BgkitError naming the choices otherwise."""
    from bgkit import BgkitError  # noqa: PLC0415

    if name not in OBJECTIVES:
        raise BgkitError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
