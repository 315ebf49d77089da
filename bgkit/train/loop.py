"""The one training loop (every objective of :mod:`bgkit.train.objectives`), resumable and data-parallel.

``train`` runs AdamW with a linear warm-up + cosine learning-rate schedule,
gradient-norm clipping, an exponential moving average (EMA) of the weights,
periodic validation (with the EMA weights) and atomic checkpoints. A run
stopped at any point and restarted with ``resume=True`` reproduces the
uninterrupted run bit for bit (same machine, same world size): the batch
order is a pure function of (seed, epoch) and the checkpoint stores the
optimizer, scheduler, EMA and every RNG state (torch CPU/CUDA, numpy, python
— one set per rank).

Distributed: launched by ``torchrun`` (env ``WORLD_SIZE`` > 1), ``train``
joins the process group (gloo on CPU, nccl on CUDA; :mod:`bgkit.distributed`) unless the caller
did, wraps the objective in ``DistributedDataParallel`` and gives each rank a
distinct slice of every global batch (``batch_size`` is the global batch).
Only rank 0 writes checkpoints and shows progress. One process: same code, no
DDP.

Checkpoints follow :mod:`bgkit.checkpoint` (written by :func:`~bgkit.checkpoint.write_checkpoint`, read
with :func:`~bgkit.checkpoint.load_checkpoint`).
"""
from __future__ import annotations

import collections
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from bgkit import BgkitError
from bgkit.checkpoint import load_checkpoint, non_finite_weight, sanitize, write_checkpoint
from bgkit.train.config import TrainConfig, lr_factor
from bgkit.train.distributed import Dist, setup_dist
from bgkit.train.objectives import Objective
from bgkit.train.rows import BatchOrder, prepare_rows
from bgkit.train.state import EMA, check_resumable, get_rng, run_state, seed_all, set_rng

__all__ = ["TrainConfig", "TrainResult", "train", "NonFiniteError"]

Augment = Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]
#: an objective's per-batch statistics kept in the history at each validation (KL terms, W-CFM pair-weight ESS/B, FDM residual)
_REPORTED_STATS = ("kl", "log_w_std", "weight_ess", "cdm")


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


class _Objective(nn.Module):
    """Wraps flow + loss so DDP sees one forward per step (whatever the loss calls)."""

    def __init__(self, flow: nn.Module, config: TrainConfig, target: Any = None) -> None:
        super().__init__()
        self.flow = flow
        self.config = config
        self.target = target
        self.objective: Objective = config.spec

    def forward(self, *batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        return self.objective.loss(self.flow, batch, self.config, target=self.target)


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
    if config.spec.energy and target is None:
        raise BgkitError(f"objective {config.objective!r} needs a Boltzmann target (the system's energy in the flow's "
                         "coordinates)")
    ctx = setup_dist(config)
    finished = False
    out_path = Path(out_path)
    before = _identity(out_path)
    try:
        result = _train(flow, train_data, val_data, config, out_path, resume, augment,
                        extra_checkpoint, progress, ctx, target)
        finished = True
        return result
    except NonFiniteError as exc:
        if ctx.rank == 0:
            raise NonFiniteError(f"{exc} ({_set_aside(out_path, before, resume)})") from None
        raise
    finally:
        ctx.leave(finished)


class NonFiniteError(BgkitError):
    """Training diverged: a non-finite loss, gradient norm or weight."""


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of ``path``, None if it does not exist: tells whether this run has replaced it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _set_aside(path: Path, before: tuple[int, int] | None, resume: bool) -> str:
    """After a diverged run: what became of the checkpoint at ``path`` (said in the error).

    Every checkpoint the loop writes has finite weights. A fresh run's last one is moved to
    ``PATH.stepN-before-failure``, so no model is left under the --out name (a rerun is not refused, and
    nothing samples from a failed run by mistake); a resumed run's file keeps its last good state.
    """
    now = _identity(path)
    if now is None or now == before:
        return f"no checkpoint was written to {path}" if before is None else f"{path} was not changed"
    try:
        step = int(load_checkpoint(path)["step"])
    except BgkitError:
        step = None
    if resume:
        return f"{path} keeps the last good state" + (f", step {step}" if step is not None else "")
    aside = path.with_name(f"{path.name}.step{step if step is not None else 'N'}-before-failure")
    os.replace(path, aside)
    return f"the last good checkpoint (step {step}, unfinished) is kept as {aside}, not as {path}"


def _train(
    flow: nn.Module, train_data: Any, val_data: Any, cfg: TrainConfig, out_path: Path, resume: bool,
    augment: Augment | None, extra: dict[str, Any] | None, progress: bool, ctx: Dist, target: Any = None,
) -> TrainResult:
    params = list(flow.parameters())
    if not params:
        raise BgkitError("the flow has no trainable parameters")
    dtype = params[0].dtype
    data = prepare_rows(train_data, cfg.spec, dtype, "training data")
    val = prepare_rows(val_data, cfg.spec, dtype, "validation data") if val_data is not None else None
    n, dim = data.n, data.dim
    if val is not None and val.dim != dim:
        raise BgkitError(f"validation data have {val.dim} dims, training data {dim}")
    if cfg.batch_size % ctx.world:
        raise BgkitError(f"batch_size {cfg.batch_size} is not divisible by the world size {ctx.world}")
    if n < cfg.batch_size:
        raise BgkitError(f"the training set ({n} samples) is smaller than --batch-size (batch_size) {cfg.batch_size}: choose a "
                         "smaller --batch-size (or a larger --max-frames)")
    extra = sanitize(extra or {}, "extra_checkpoint")
    flow_info = sanitize({"class": f"{type(flow).__module__}.{type(flow).__qualname__}",
                           "arch": getattr(flow, "arch", None) or None,
                           "hparams": getattr(flow, "hparams", None), "dim": dim}, "flow.hparams")

    ckpt = load_checkpoint(out_path) if resume else None
    if ckpt is not None:
        cfg = cfg.continuing(ckpt["config"])
        check_resumable(ckpt, cfg, ctx.world, n, out_path, flow_info)
    flow.to(ctx.device).train()
    optimizer = torch.optim.AdamW(flow.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    ema = EMA(flow, cfg.ema)
    history: list[dict[str, float]] = []
    window: collections.deque[float] = collections.deque(maxlen=100)  # recent global train losses
    start_step, wall_before = 0, 0.0
    if ckpt is not None:
        flow.load_state_dict(ckpt["raw_model"])
        ema.model.load_state_dict(ckpt["model"])
        ema.updates = int(ckpt["ema_updates"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng(ckpt["rng"][ctx.rank], ctx.device)
        history = list(ckpt.get("history", []))
        window.extend(float(v) for v in ckpt.get("loss_window", []))
        start_step = int(ckpt["step"])
        wall_before = float(ckpt.get("metrics", {}).get("total_wall_time_s", 0.0))
        if start_step >= cfg.steps:
            flow.load_state_dict(ckpt["model"])
            return _result(out_path, ckpt.get("metrics", {}), history)
    else:
        seed_all(cfg.seed, ctx.rank)

    objective: nn.Module = _Objective(flow, cfg, target)
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        objective = DistributedDataParallel(objective, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    order = BatchOrder(n, cfg.batch_size, cfg.seed, ctx.rank, ctx.world)
    bar = _progress_bar(cfg.steps, start_step, progress and ctx.rank == 0)
    last_val: float | None = history[-1].get("val_loss") if history else None
    metrics: dict[str, Any] = {}
    t0 = time.perf_counter()
    step = start_step
    try:
        while step < cfg.steps:
            idx = order.indices(step)
            batch = tuple(t.to(ctx.device, dtype, non_blocking=True) for t in data.take(idx))
            if augment is not None:
                batch = _augment(augment, batch)
            loss, stats = objective(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            global_loss = float(ctx.all_mean(loss.detach().reshape(1))[0])
            step += 1
            if not math.isfinite(global_loss):
                raise NonFiniteError(f"training loss became {global_loss} at step {step}; "
                                     "lower the learning rate, clip gradients or check the data")
            gnorm = float(torch.nn.utils.clip_grad_norm_(flow.parameters(), cfg.grad_clip or math.inf))
            if not math.isfinite(gnorm):
                raise NonFiniteError(f"gradient norm became {gnorm} at step {step}; "
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
                                **{k: stats[k] for k in _REPORTED_STATS if k in stats}})
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
                    "loss_units": cfg.spec.units,
                    "world_size": ctx.world,
                }
                bad = non_finite_weight(ema.model) or non_finite_weight(flow)
                if bad:  # never written: a checkpoint holds a usable model or nothing
                    raise NonFiniteError(f"the weights became non-finite at step {step} ({bad}); "
                                         "lower the learning rate, clip gradients or check the data")
                rng = ctx.gather(get_rng(ctx.device))
                if ctx.rank == 0:
                    write_checkpoint(run_state(flow, ema, optimizer, scheduler, rng, cfg, ctx.world, n, step, is_last,
                                               metrics, history, list(window), extra, flow_info), out_path)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or is_last:
                    post = {"loss": f"{global_loss:.4g}", "samples/s": f"{rate:.0f}"}
                    if last_val is not None:
                        post["val"] = f"{last_val:.4g}"
                    if "log_w_std" in stats:
                        post["logw_std"] = f"{stats['log_w_std']:.3g}"
                    if "weight_ess" in stats:  # W-CFM: ESS/B of the batch's pair weights
                        post["w_ess"] = f"{stats['weight_ess']:.3g}"
                    bar.set_postfix(post, refresh=False)
            if is_last:
                break
    finally:
        if bar is not None:
            bar.close()
    flow.load_state_dict(ema.model.state_dict())
    return _result(out_path, metrics, history)


@torch.no_grad()
def _validate(model: nn.Module, val: Any, cfg: TrainConfig, ctx: Dist) -> float:
    """Mean loss over the validation set (no target noise, the objective's draws from a fixed seed),
    sharded over ranks."""
    objective = cfg.spec
    dtype = next(model.parameters()).dtype
    generator = torch.Generator(device=ctx.device).manual_seed(int(cfg.seed) + 1_000_003 * (1 + ctx.rank))
    total, count = 0.0, 0
    idx = torch.arange(ctx.rank, val.n, ctx.world)
    for chunk in torch.split(idx, cfg.val_batch_size):
        batch = tuple(t.to(ctx.device, dtype) for t in val.take(chunk))
        loss, _ = objective.loss(model, batch, cfg, generator=generator, train=False)
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
