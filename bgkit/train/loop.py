"""The one training loop (RegFlow or maximum likelihood), resumable and data-parallel.

``train`` runs AdamW with a linear warm-up + cosine learning-rate schedule,
gradient-norm clipping, an exponential moving average (EMA) of the weights,
periodic validation (with the EMA weights) and atomic checkpoints. A run
stopped at any point and restarted with ``resume=True`` reproduces the
uninterrupted run bit for bit (same machine, same world size): the batch
order is a pure function of (seed, epoch) and the checkpoint stores the
optimizer, scheduler, EMA and every RNG state (torch CPU/CUDA, numpy, python
— one set per rank).

Distributed: launched by ``torchrun`` (env ``WORLD_SIZE`` > 1), ``train``
initialises the process group (gloo on CPU, nccl on CUDA) unless the caller
did, wraps the objective in ``DistributedDataParallel`` and gives each rank a
distinct slice of every global batch (``batch_size`` is the global batch).
Only rank 0 writes checkpoints and shows progress. One process: same code, no
DDP.

Checkpoint keys (a plain ``torch.save`` dict, loadable with
``torch.load(weights_only=True)``; read it with :func:`load_checkpoint`):
``format`` ("bgkit-checkpoint"), ``format_version``, ``step``, ``final``,
``model`` (EMA weights — the weights to sample with), ``raw_model`` (current
optimiser weights), ``optimizer``, ``scheduler``, ``ema_updates``, ``rng``
(list, one per rank), ``data_order``, ``config``, ``world_size``, ``flow``
(``class``, ``arch``, ``hparams``, ``dim``: ``build_flow(arch, dim, **hparams)``
rebuilds it), ``history``, ``loss_window`` (last ≤100 train losses), ``metrics``, ``extra``
(the caller's ``extra_checkpoint``), ``provenance``.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from bgkit import BgkitError
from bgkit.provenance import atomic_save, provenance
from bgkit.train.mle import mle_loss
from bgkit.train.regflow import REGULARISERS, regflow_loss

__all__ = ["TrainConfig", "TrainResult", "train", "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "bgkit-checkpoint"
_CHECKPOINT_VERSION = 1
OBJECTIVES = ("regflow", "mle", "kl")
# Fields that must match between a checkpoint and a resumed run.
_RESUME_FIELDS = (
    "batch_size", "lr", "weight_decay", "betas", "warmup_steps", "min_lr_factor", "grad_clip",
    "ema", "seed", "objective", "reg", "reg_weight", "noise_std", "kl_weight", "kl_batch_size", "kl_energy_cap",
)

Augment = Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]


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
    (λ_r), ``noise_std`` (λ_n, target noise). ``"kl"`` only (maximum likelihood on the data plus
    ``kl_weight`` × the reverse KL to the Boltzmann distribution, :mod:`bgkit.train.kl`):
    ``kl_batch_size`` flow samples per step (None: ``batch_size``), ``kl_energy_cap`` (kT) above
    which energies are damped. ``device``: None picks
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
    kl_weight: float = 1.0
    kl_batch_size: int | None = None
    kl_energy_cap: float = 1000.0
    device: str | None = None
    max_seconds: float | None = None

    def validate(self) -> None:
        """Raise BgkitError naming the first invalid field."""
        checks: list[tuple[str, Callable[[], bool]]] = [
            ("steps", lambda: self.steps >= 1),
            ("batch_size", lambda: self.batch_size >= 1),
            ("lr", lambda: self.lr > 0),
            ("weight_decay", lambda: self.weight_decay >= 0),
            ("betas", lambda: len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)),
            ("warmup_steps", lambda: self.warmup_steps >= 0),
            ("min_lr_factor", lambda: 0 <= self.min_lr_factor <= 1),
            ("grad_clip", lambda: self.grad_clip is None or self.grad_clip > 0),
            ("ema", lambda: 0 <= self.ema < 1),
            ("val_every", lambda: self.val_every >= 1),
            ("ckpt_every", lambda: self.ckpt_every >= 1),
            ("val_batch_size", lambda: self.val_batch_size >= 1),
            ("seed", lambda: self.seed >= 0),
            ("objective", lambda: self.objective in OBJECTIVES),
            ("reg", lambda: self.reg in REGULARISERS),
            ("reg_weight", lambda: self.reg_weight >= 0),
            ("noise_std", lambda: self.noise_std >= 0),
            ("kl_weight", lambda: self.kl_weight >= 0),
            ("kl_batch_size", lambda: self.kl_batch_size is None or self.kl_batch_size >= 2),
            ("kl_energy_cap", lambda: self.kl_energy_cap > 0),
            ("max_seconds", lambda: self.max_seconds is None or self.max_seconds > 0),
        ]
        for name, check in checks:
            try:
                ok = bool(check())
            except TypeError:
                ok = False
            if not ok:
                raise BgkitError(f"invalid training config: {name}={getattr(self, name)!r}")

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


@dataclass
class TrainResult:
    """Outcome of :func:`train`; ``metrics`` is also stored in the final checkpoint."""

    checkpoint: Path
    steps: int
    final_train_loss: float
    final_val_loss: float | None
    samples_per_s: float
    wall_time_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a bgkit checkpoint dict (tensors on ``map_location``).

    Raises BgkitError if the file is missing, truncated or corrupted (every
    zip member's CRC is verified; torch itself does not check data CRCs), or
    not a bgkit checkpoint. Loading uses ``weights_only=True`` (no pickled code).
    """
    from bgkit.io import verify_zip

    path = Path(path)
    verify_zip(path, "checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise BgkitError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise BgkitError(f"{path} is not a bgkit checkpoint")
    missing = [k for k in ("model", "config", "step") if k not in ckpt]
    if missing:
        raise BgkitError(f"checkpoint {path} lacks {', '.join(missing)}")
    return ckpt


def _sanitize(obj: Any, where: str) -> Any:
    """Convert to types ``torch.load(weights_only=True)`` accepts, else BgkitError."""
    if isinstance(obj, np.generic):  # before the primitives: np.float64 is a float subclass
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _sanitize(asdict(obj), where)
    if isinstance(obj, dict):
        return {_sanitize(k, where): _sanitize(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_sanitize(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(out) if isinstance(obj, tuple) else out
    raise BgkitError(f"{where} has type {type(obj).__name__}, which a checkpoint cannot store")


# --------------------------------------------------------------------------- RNG state


def _get_rng(device: torch.device) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    return state


def _set_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    pyst = state["python"]
    random.setstate((pyst["version"], tuple(pyst["state"]), pyst["gauss_next"]))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_all(seed: int, rank: int) -> None:
    """Seed torch, numpy and python global RNGs distinctly per rank."""
    s = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


# --------------------------------------------------------------------------- helpers


class _EMA:
    """Exponential moving average of a module's parameters (buffers copied)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


class _Objective(nn.Module):
    """Wraps flow + loss so DDP sees one forward per step (whatever the loss calls)."""

    def __init__(self, flow: nn.Module, config: TrainConfig, target: Any = None) -> None:
        super().__init__()
        self.flow = flow
        self.config = config
        self.target = target

    def forward(self, *batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        loss, stats = _loss(self.flow, batch, self.config, self.config.noise_std)
        if self.config.objective == "kl" and self.config.kl_weight > 0:
            kl, kl_stats = self.target.kl_loss(self.flow, self.config.kl_batch_size or batch[0].shape[0])
            loss = loss + self.config.kl_weight * kl
            stats = {**stats, **kl_stats, "loss": float(loss.detach())}
        return loss, stats


def _loss(flow: nn.Module, batch: Sequence[Tensor], cfg: TrainConfig, noise_std: float) -> tuple[Tensor, dict[str, float]]:
    """The data term of the objective (validation uses it alone): RegFlow regression or the NLL."""
    if cfg.objective == "regflow":
        return regflow_loss(flow, batch[0], batch[1], noise_std=noise_std, reg=cfg.reg, reg_weight=cfg.reg_weight)
    return mle_loss(flow, batch[0])


class _BatchOrder:
    """Global batch b of epoch e = permutation(seed, e)[b·B:(b+1)·B]; rank r takes its slice."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.local = batch_size // world
        self.rank = rank
        self.steps_per_epoch = n // batch_size
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def indices(self, step: int) -> Tensor:
        epoch, b = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        start = b * self.batch_size + self.rank * self.local
        return torch.from_numpy(self._perm[start : start + self.local])


def _prepare(data: Any, objective: str, dtype: torch.dtype, what: str) -> tuple[Tensor, ...]:
    """Turn user data into a tuple of CPU tensors [n, D] (checked)."""
    if objective == "regflow":
        if hasattr(data, "x0") and hasattr(data, "x1"):
            data = (data.x0, data.x1)
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise BgkitError(f"{what} for RegFlow must be a pair (x0, x1) of [n, D] arrays")
        tensors = tuple(torch.as_tensor(np.asarray(d) if not isinstance(d, Tensor) else d).to("cpu", dtype) for d in data)
        if tensors[0].shape != tensors[1].shape:
            raise BgkitError(f"{what}: x0 {tuple(tensors[0].shape)} and x1 {tuple(tensors[1].shape)} differ in shape")
    else:
        if isinstance(data, (tuple, list)) and len(data) == 1:
            data = data[0]
        if isinstance(data, (tuple, list)):
            raise BgkitError(f"{what} for maximum likelihood must be one [n, D] array")
        tensors = (torch.as_tensor(np.asarray(data) if not isinstance(data, Tensor) else data).to("cpu", dtype),)
    t = tensors[0]
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise BgkitError(f"{what} must have shape [n, D] with n, D > 0, got {tuple(t.shape)}")
    for x in tensors:
        if not torch.isfinite(x).all():
            raise BgkitError(f"{what} contains NaN or inf values")
    return tensors


def _lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_factor + (1.0 - cfg.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_mean(self, values: Tensor) -> Tensor:
        if self.active:
            values = values.clone()
            torch.distributed.all_reduce(values)
            values /= self.world
        return values

    def all_sum(self, values: Tensor) -> Tensor:
        if self.active:
            values = values.clone()
            torch.distributed.all_reduce(values)
        return values

    def gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def _setup_dist(cfg: TrainConfig) -> _Dist:
    import torch.distributed as dist  # noqa: PLC0415

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device is not None:
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ctx = _Dist(device=device)
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
    elif env_world > 1:
        if not dist.is_available():
            raise BgkitError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        ctx.rank, ctx.world, ctx.owns_group = dist.get_rank(), dist.get_world_size(), True
    return ctx


# --------------------------------------------------------------------------- training


def train(
    flow: nn.Module,
    train_data: Any,
    val_data: Any,
    config: TrainConfig,
    out_path: str | os.PathLike,
    resume: bool = False,
    augment: Augment | None = None,
    extra_checkpoint: dict[str, Any] | None = None,
    progress: bool = True,
    target: Any = None,
) -> TrainResult:
    """Train ``flow`` (in place) and write checkpoints to ``out_path``.

    Args:
        flow: flow module (``forward``/``inverse``/``log_prob``, ``hparams``).
        train_data: RegFlow: pair ``(x0, x1)`` of [n, D] tensors/arrays (or a
            :class:`~bgkit.train.targets.Targets`); MLE: one [n, D] tensor.
            Flow-space units. Kept on CPU; batches are moved to the device.
        val_data: same form (RegFlow: held-out pairs) or None to skip validation.
        config: :class:`TrainConfig`.
        out_path: checkpoint file, rewritten atomically every ``ckpt_every``
            steps and at the end (an existing file is replaced unless resuming).
        resume: continue from the checkpoint at ``out_path`` (BgkitError if
            missing, or if it was written with another optimiser/objective/
            seed/batch config, world size or data size; ``steps``,
            ``val_every``, ``ckpt_every``, ``val_batch_size`` and ``device``
            may change — a new ``steps`` reshapes the cosine from then on).
        augment: optional ``augment(batch) -> batch``; ``batch`` is a tuple of
            [b, D] tensors — ``(x0, x1)`` for RegFlow, ``(x,)`` for MLE — and
            one random transform per row must be applied to every tensor of the
            tuple (e.g. the same SO(3) rotation to x0 and x1). It should draw
            from the torch/numpy global RNGs, which are checkpointed.
        extra_checkpoint: stored under ``"extra"`` (tensors, arrays, numbers,
            strings, lists, dicts).
        progress: tqdm bar on rank 0 (loss, val loss, samples/s).
        target: objective ``"kl"`` only: a :class:`~bgkit.train.kl.BoltzmannTarget` (representation
            + differentiable energy). Validation reports the data NLL alone.
    Returns:
        :class:`TrainResult`. Global RNGs are seeded from ``config.seed`` and
        the rank. On return ``flow`` holds the EMA weights (the final
        checkpoint's ``model``).
    Raises:
        BgkitError on bad input, a non-finite loss or gradient (naming the step),
        or an unusable checkpoint.
    """
    config.validate()
    if config.objective == "kl" and target is None:
        raise BgkitError("objective 'kl' needs a Boltzmann target (the system's energy in the flow's coordinates)")
    ctx = _setup_dist(config)
    try:
        return _train(flow, train_data, val_data, config, Path(out_path), resume, augment,
                      extra_checkpoint, progress, ctx, target)
    finally:
        if ctx.owns_group:
            torch.distributed.destroy_process_group()


def _train(
    flow: nn.Module, train_data: Any, val_data: Any, cfg: TrainConfig, out_path: Path, resume: bool,
    augment: Augment | None, extra: dict[str, Any] | None, progress: bool, ctx: _Dist, target: Any = None,
) -> TrainResult:
    params = list(flow.parameters())
    if not params:
        raise BgkitError("the flow has no trainable parameters")
    dtype = params[0].dtype
    data = _prepare(train_data, cfg.objective, dtype, "training data")
    val = _prepare(val_data, cfg.objective, dtype, "validation data") if val_data is not None else None
    n, dim = data[0].shape
    if val is not None and val[0].shape[1] != dim:
        raise BgkitError(f"validation data have {val[0].shape[1]} dims, training data {dim}")
    if cfg.batch_size % ctx.world:
        raise BgkitError(f"batch_size {cfg.batch_size} is not divisible by the world size {ctx.world}")
    if n < cfg.batch_size:
        raise BgkitError(f"training set ({n} samples) is smaller than batch_size {cfg.batch_size}")
    extra = _sanitize(extra or {}, "extra_checkpoint")
    flow_info = _sanitize({"class": f"{type(flow).__module__}.{type(flow).__qualname__}",
                           "arch": getattr(flow, "arch", None) or None,
                           "hparams": getattr(flow, "hparams", None), "dim": dim}, "flow.hparams")

    flow.to(ctx.device).train()
    optimizer = torch.optim.AdamW(flow.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg))
    ema = _EMA(flow, cfg.ema)
    history: list[dict[str, float]] = []
    window: collections.deque[float] = collections.deque(maxlen=100)  # recent global train losses
    start_step, wall_before = 0, 0.0
    if resume:
        ckpt = load_checkpoint(out_path)
        _check_resume(ckpt, cfg, ctx, n, out_path, flow_info)
        flow.load_state_dict(ckpt["raw_model"])
        ema.model.load_state_dict(ckpt["model"])
        ema.updates = int(ckpt["ema_updates"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng(ckpt["rng"][ctx.rank], ctx.device)
        history = list(ckpt.get("history", []))
        window.extend(float(v) for v in ckpt.get("loss_window", []))
        start_step = int(ckpt["step"])
        wall_before = float(ckpt.get("metrics", {}).get("total_wall_time_s", 0.0))
        if start_step >= cfg.steps:
            flow.load_state_dict(ckpt["model"])
            return _result(out_path, ckpt.get("metrics", {}), history)
    else:
        _seed_all(cfg.seed, ctx.rank)

    objective: nn.Module = _Objective(flow, cfg, target)
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        objective = DistributedDataParallel(objective, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    order = _BatchOrder(n, cfg.batch_size, cfg.seed, ctx.rank, ctx.world)
    bar = _progress_bar(cfg.steps, start_step, progress and ctx.rank == 0)
    last_val: float | None = history[-1].get("val_loss") if history else None
    metrics: dict[str, Any] = {}
    t0 = time.perf_counter()
    step = start_step
    try:
        while step < cfg.steps:
            idx = order.indices(step)
            batch = tuple(t[idx].to(ctx.device, non_blocking=True) for t in data)
            if augment is not None:
                batch = _augment(augment, batch)
            loss, stats = objective(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            global_loss = float(ctx.all_mean(loss.detach().reshape(1))[0])
            step += 1
            if not math.isfinite(global_loss):
                raise BgkitError(f"training loss became {global_loss} at step {step}; "
                                 "lower the learning rate, clip gradients or check the data")
            gnorm = float(torch.nn.utils.clip_grad_norm_(flow.parameters(), cfg.grad_clip or math.inf))
            if not math.isfinite(gnorm):
                raise BgkitError(f"gradient norm became {gnorm} at step {step}; "
                                 "lower the learning rate, clip gradients or check the data")
            optimizer.step()
            scheduler.step()
            ema.update(flow)
            window.append(global_loss)
            is_last = step == cfg.steps
            if cfg.max_seconds is not None and not is_last:  # wall-clock budget: every rank stops at the same step
                over = float(time.perf_counter() - t0 + wall_before >= cfg.max_seconds)
                is_last = bool(ctx.all_mean(torch.tensor([over], dtype=torch.float64, device=ctx.device))[0] > 0)
            if val is not None and (step % cfg.val_every == 0 or is_last):
                last_val = _validate(ema.model, val, cfg, ctx)
                history.append({"step": step, "train_loss": float(np.mean(window)), "val_loss": last_val,
                                "lr": scheduler.get_last_lr()[0],
                                **{k: stats[k] for k in ("kl", "log_w_std") if k in stats}})
            elapsed = time.perf_counter() - t0
            rate = (step - start_step) * cfg.batch_size / max(elapsed, 1e-9)
            if step % cfg.ckpt_every == 0 or is_last:
                metrics = {
                    "final_train_loss": float(np.mean(window)),
                    "final_val_loss": last_val,
                    "samples_per_s": rate,
                    "wall_time_s": elapsed,
                    "total_wall_time_s": wall_before + elapsed,
                    "steps": step,
                    "objective": cfg.objective,
                    "loss_units": _loss_units(cfg),
                    "world_size": ctx.world,
                }
                rng = ctx.gather(_get_rng(ctx.device))
                if ctx.rank == 0:
                    atomic_save(_checkpoint(flow, ema, optimizer, scheduler, rng, cfg, ctx, n, step, is_last,
                                            metrics, history, list(window), extra, flow_info), out_path)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or is_last:
                    post = {"loss": f"{global_loss:.4g}", "samples/s": f"{rate:.0f}"}
                    if last_val is not None:
                        post["val"] = f"{last_val:.4g}"
                    if "log_w_std" in stats:
                        post["logw_std"] = f"{stats['log_w_std']:.3g}"
                    bar.set_postfix(post, refresh=False)
            if is_last:
                break
    finally:
        if bar is not None:
            bar.close()
    flow.load_state_dict(ema.model.state_dict())
    return _result(out_path, metrics, history)


def _check_resume(ckpt: dict[str, Any], cfg: TrainConfig, ctx: _Dist, n: int, path: Path,
                  flow_info: dict[str, Any] | None = None) -> None:
    old = ckpt["config"]
    old_flow = ckpt.get("flow") or {}
    if flow_info is not None and old_flow:
        for key in ("arch", "dim"):
            if old_flow.get(key) != flow_info.get(key):
                raise BgkitError(f"cannot resume from {path}: flow {key} was {old_flow.get(key)!r}, now {flow_info.get(key)!r}")
        a, b = old_flow.get("hparams") or {}, flow_info.get("hparams") or {}
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if changed:
            diffs = ", ".join(f"{k} was {a.get(k)!r}, now {b.get(k)!r}" for k in changed[:3])
            raise BgkitError(f"cannot resume from {path}: flow hyperparameters differ ({diffs})")
    for name in _RESUME_FIELDS:
        a, b = old.get(name), getattr(cfg, name)
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            a, b = list(a or []), list(b or [])
        if a != b:
            raise BgkitError(f"cannot resume from {path}: config {name} was {a!r}, now {b!r}")
    if int(ckpt.get("world_size", 1)) != ctx.world:
        raise BgkitError(f"cannot resume from {path}: written with world size {ckpt.get('world_size')}, now {ctx.world}")
    if int(ckpt["data_order"]["n"]) != n:
        raise BgkitError(f"cannot resume from {path}: training set had {ckpt['data_order']['n']} samples, now {n}")
    for key in ("raw_model", "optimizer", "scheduler", "rng", "ema_updates"):
        if key not in ckpt:
            raise BgkitError(f"cannot resume from {path}: checkpoint lacks {key}")


def _checkpoint(flow: nn.Module, ema: _EMA, optimizer: torch.optim.Optimizer, scheduler: Any, rng: list[Any],
                cfg: TrainConfig, ctx: _Dist, n: int, step: int, final: bool, metrics: dict[str, Any],
                history: list[dict[str, float]], window: list[float], extra: dict[str, Any],
                flow_info: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": _CHECKPOINT_VERSION,
        "step": step,
        "final": final,
        "model": ema.model.state_dict(),
        "raw_model": flow.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema_updates": ema.updates,
        "rng": rng,
        "data_order": {"scheme": "numpy default_rng([seed, epoch]).permutation(n), drop last",
                       "seed": cfg.seed, "n": n, "batch_size": cfg.batch_size},
        "config": _sanitize(asdict(cfg), "config"),
        "world_size": ctx.world,
        "flow": flow_info,
        "history": _sanitize(history, "history"),
        "loss_window": window,
        "metrics": _sanitize(metrics, "metrics"),
        "extra": extra,
        "provenance": _sanitize(provenance(seed=cfg.seed, objective=cfg.objective), "provenance"),
    }


def _loss_units(cfg: TrainConfig) -> str:
    if cfg.objective == "mle":
        return "nats per sample (negative log-likelihood summed over dims, flow space)"
    if cfg.objective == "kl":
        return ("nats per sample: NLL of the data (flow space) + kl_weight * mean(u/kT + log q) of flow samples "
                "(nm density); validation: the NLL alone")
    return "squared error summed over dims, flow-space units^2 (+ reg_weight * regulariser)"


@torch.no_grad()
def _validate(model: nn.Module, val: tuple[Tensor, ...], cfg: TrainConfig, ctx: _Dist) -> float:
    """Mean loss over the validation set (no target noise), sharded over ranks."""
    total, count = 0.0, 0
    idx = torch.arange(ctx.rank, val[0].shape[0], ctx.world)
    for chunk in torch.split(idx, cfg.val_batch_size):
        batch = tuple(t[chunk].to(ctx.device) for t in val)
        loss, _ = _loss(model, batch, cfg, noise_std=0.0)
        total += float(loss) * len(chunk)
        count += len(chunk)
    sums = ctx.all_sum(torch.tensor([total, float(count)], dtype=torch.float64, device=ctx.device))
    return float(sums[0] / sums[1])


def _augment(augment: Augment, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    out = augment(batch)
    if isinstance(out, Tensor):
        out = (out,)
    out = tuple(out)
    if len(out) != len(batch) or any(o.shape != b.shape for o, b in zip(out, batch)):
        raise BgkitError("augment(batch) must return a tuple of tensors with the shapes of its input")
    return out


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def _result(path: Path, metrics: dict[str, Any], history: list[dict[str, float]]) -> TrainResult:
    return TrainResult(
        checkpoint=path,
        steps=int(metrics.get("steps", 0)),
        final_train_loss=float(metrics.get("final_train_loss", math.nan)),
        final_val_loss=metrics.get("final_val_loss"),
        samples_per_s=float(metrics.get("samples_per_s", math.nan)),
        wall_time_s=float(metrics.get("wall_time_s", math.nan)),
        history=history,
        metrics=dict(metrics),
    )
