"""Training configuration: hyper-parameters, their checks, and the one schedule policy.

:func:`schedule_for` is how the CLI and the benchmarks derive warm-up, validation and checkpoint
intervals from the number of steps, so every entry point trains with the same policy; a resumed run
keeps its checkpoint's warm-up (:meth:`TrainConfig.continuing`). The options of each objective and
their checks are the registry's (:mod:`bgkit.train.objectives`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

from bgkit import BgkitError
from bgkit.train.objectives import OBJECTIVES, Objective, get_objective, objective_options

__all__ = ["TrainConfig", "schedule_for", "lr_factor", "RESUME_FIELDS", "RESUME_KEPT", "CLI_OPTIONS"]

#: fields that must match between a checkpoint and a resumed run (every objective's options included)
RESUME_FIELDS = ("batch_size", "lr", "weight_decay", "betas", "min_lr_factor", "grad_clip", "ema", "seed",
                 "objective", *(o.field for o in objective_options()))
#: fields a resumed run takes from its checkpoint: the warm-up is part of the run, so a larger ``steps``
#: only stretches the cosine
RESUME_KEPT = ("warmup_steps",)


#: the command-line option of each field a user sets (`bgkit train`, `bgkit teacher train`)
CLI_OPTIONS = {"steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "seed": "--seed", "reg": "--reg",
               "reg_weight": "--reg-weight", "noise_std": "--noise", "logdet_weight": "--logdet-weight",
               "kl_weight": "--kl-weight", "wcfm_kappa": "--wcfm-kappa", "fdm_cdm_weight": "--fdm-weight",
               "max_seconds": "--max-seconds", "device": "--device"}


def schedule_for(steps: int) -> dict[str, int]:
    """Warm-up (10 % of the run, at most 500 steps), validation (10 %, at most every 500 steps) and
    checkpoint (20 %, at most every 1000 steps) intervals for a run of ``steps`` steps."""
    return {"steps": steps, "warmup_steps": min(500, steps // 10), "val_every": max(1, min(500, steps // 10)),
            "ckpt_every": max(1, min(1000, steps // 5))}


@dataclass
class TrainConfig:
    """Training hyper-parameters (flow-space units; steps count optimiser updates).

    batch_size is the **global** batch (split over ranks). The learning rate
    rises linearly over ``warmup_steps`` then follows a cosine down to
    ``lr * min_lr_factor`` at ``steps``. ``grad_clip``: max global L2 norm of
    the gradient (None: no clipping). ``ema``: EMA decay, used as
    min(ema, (1 + t) / (10 + t)) at update t so short runs are not dominated
    by the initial weights. ``val_every``/``ckpt_every``: in steps (the last
    step always validates and checkpoints). ``val_batch_size``: chunk size for
    validation. RegFlow only: ``reg`` ("fb" | "logdet" | None), ``reg_weight``
    (λ_r), ``noise_std`` (λ_n, target noise), ``logdet_weight`` (λ_ℓ, matching the teacher's log-dets
    of reflow targets made with ``--logdet``). ``"kl"`` only (maximum likelihood on the data plus
    ``kl_weight`` × the reverse KL to the Boltzmann distribution, :mod:`bgkit.train.kl`):
    ``kl_batch_size`` flow samples per step (None: ``batch_size``), ``kl_energy_cap`` (kT) above
    which energies are damped. Flow matching (:mod:`bgkit.train.matching`): ``wcfm_kappa`` (κ of the
    W-CFM temperature ε = κ√D), ``fdm_cfm_weight`` and ``fdm_cdm_weight`` (λ1, λ2 of FDM). ``device``: None picks
    cuda:LOCAL_RANK when CUDA is available, else cpu. ``max_seconds``: optional
    wall-clock budget (s, counted over resumes); training stops at the first
    step past it, validates and writes a final checkpoint.
    """

    steps: int = 20_000
    batch_size: int = 512
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 500
    min_lr_factor: float = 0.01
    grad_clip: float | None = 1.0
    ema: float = 0.999
    val_every: int = 500
    ckpt_every: int = 1000
    val_batch_size: int = 4096
    seed: int = 0
    objective: str = "regflow"
    reg: str | None = "fb"
    reg_weight: float = 1e-6
    noise_std: float = 0.0
    logdet_weight: float = 0.0
    kl_weight: float = 1.0
    kl_batch_size: int | None = None
    kl_energy_cap: float = 1000.0
    wcfm_kappa: float = 1.0
    fdm_cfm_weight: float = 1.0
    fdm_cdm_weight: float = 0.01
    device: str | None = None
    max_seconds: float | None = None

    @cached_property
    def spec(self) -> Objective:
        """The registry entry of ``objective`` (looked up once per config)."""
        return get_objective(self.objective)

    def continuing(self, previous: dict[str, Any]) -> "TrainConfig":
        """This config for a run that continues a checkpoint written with config ``previous``: the fields of
        :data:`RESUME_KEPT` are the checkpoint's."""
        return dataclasses.replace(self, **{name: previous[name] for name in RESUME_KEPT if name in previous})

    def resume_mismatch(self, previous: dict[str, Any]) -> str | None:
        """The first field of :data:`RESUME_FIELDS` in which this config differs from a checkpoint's config
        ``previous`` ("config NAME was A, now B"), None if none does."""
        defaults = TrainConfig()  # a field added after the checkpoint was written had its default then
        for name in RESUME_FIELDS:
            a, b = previous.get(name, getattr(defaults, name)), getattr(self, name)
            if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
                a, b = list(a or []), list(b or [])
            if a != b:
                return f"config {name} was {a!r}, now {b!r}"
        return None

    def validate(self) -> None:
        """Raise BgkitError naming the first invalid field (and its command-line option) and its allowed range;
        the options of the objectives are checked as their registry entries say."""
        from bgkit.limits import MAX_BATCH, MAX_STEPS  # noqa: PLC0415

        def num(x: Any) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        def whole(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        checks: list[tuple[str, Callable[[], bool], str]] = [
            ("steps", lambda: whole(self.steps) and 1 <= self.steps <= MAX_STEPS, f"a whole number in [1, {MAX_STEPS:,}]"),
            ("batch_size", lambda: whole(self.batch_size) and 1 <= self.batch_size <= MAX_BATCH,
             f"a whole number in [1, {MAX_BATCH:,}]"),
            ("lr", lambda: num(self.lr) and 0 < self.lr <= 1, "a finite number > 0 and <= 1"),
            ("weight_decay", lambda: num(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0"),
            ("betas", lambda: len(self.betas) == 2 and all(num(b) and 0 <= b < 1 for b in self.betas),
             "two numbers in [0, 1)"),
            ("warmup_steps", lambda: whole(self.warmup_steps) and 0 <= self.warmup_steps <= MAX_STEPS,
             f"a whole number in [0, {MAX_STEPS:,}]"),
            ("min_lr_factor", lambda: num(self.min_lr_factor) and 0 <= self.min_lr_factor <= 1, "a number in [0, 1]"),
            ("grad_clip", lambda: self.grad_clip is None or (num(self.grad_clip) and self.grad_clip > 0),
             "a finite number > 0 (or None)"),
            ("ema", lambda: num(self.ema) and 0 <= self.ema < 1, "a number in [0, 1)"),
            ("val_every", lambda: whole(self.val_every) and self.val_every >= 1, "a whole number >= 1"),
            ("ckpt_every", lambda: whole(self.ckpt_every) and self.ckpt_every >= 1, "a whole number >= 1"),
            ("val_batch_size", lambda: whole(self.val_batch_size) and 1 <= self.val_batch_size <= MAX_BATCH,
             f"a whole number in [1, {MAX_BATCH:,}]"),
            ("seed", lambda: whole(self.seed) and 0 <= self.seed < 2**63, "a whole number >= 0"),
            ("objective", lambda: self.objective in OBJECTIVES, f"one of {', '.join(OBJECTIVES)}"),
            ("max_seconds", lambda: self.max_seconds is None or (num(self.max_seconds) and self.max_seconds > 0),
             "a finite number > 0 (or None)"),
        ]
        checks += [(o.field, lambda o=o: o.check(getattr(self, o.field)), o.allowed) for o in objective_options()]
        for name, check, allowed in checks:
            try:
                ok = bool(check())
            except TypeError:
                ok = False
            if not ok:
                option = CLI_OPTIONS.get(name)
                what = f"{option} ({name})" if option else f"training config field {name}"
                raise BgkitError(f"{what} must be {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (e.g. ``checkpoint["config"]``); unknown keys → BgkitError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BgkitError(f"unknown training config field(s): {', '.join(unknown)}")
        values = dict(values)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Learning-rate multiplier at a step: linear warm-up, then cosine down to ``min_lr_factor``."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_factor + (1.0 - cfg.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
