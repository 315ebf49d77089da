"""Run state that makes training resumable bit for bit: RNG states, the EMA of the weights, what a checkpoint
holds of a run (:func:`run_state`) and whether a checkpoint can be continued (:func:`check_resumable`)."""
from __future__ import annotations

import copy
import random
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from bgkit import BgkitError
from bgkit.checkpoint import sanitize
from bgkit.provenance import provenance

if TYPE_CHECKING:
    from bgkit.train.config import TrainConfig

__all__ = ["EMA", "get_rng", "set_rng", "seed_all", "run_state", "check_resumable"]


def get_rng(device: torch.device) -> dict[str, Any]:
    """Every RNG state a run depends on (torch CPU/CUDA, numpy, python), in checkpointable types."""
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


def set_rng(state: dict[str, Any], device: torch.device) -> None:
    """Restore the states of :func:`get_rng`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    pyst = state["python"]
    random.setstate((pyst["version"], tuple(pyst["state"]), pyst["gauss_next"]))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_all(seed: int, rank: int) -> None:
    """Seed torch, numpy and python global RNGs distinctly per rank."""
    s = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


class EMA:
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


def check_resumable(ckpt: dict[str, Any], cfg: TrainConfig, world: int, n: int, path: Path,
                    flow_info: dict[str, Any] | None = None) -> None:
    """BgkitError unless the run state ``ckpt`` can be continued by a run of ``cfg`` on ``world`` ranks, ``n``
    training rows and the flow ``flow_info`` (same architecture, dimension, hyperparameters)."""
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
    mismatch = cfg.resume_mismatch(old)
    if mismatch:
        raise BgkitError(f"cannot resume from {path}: {mismatch}")
    if int(ckpt.get("world_size", 1)) != world:
        raise BgkitError(f"cannot resume from {path}: written with world size {ckpt.get('world_size')}, now {world}")
    if int(ckpt["data_order"]["n"]) != n:
        raise BgkitError(f"cannot resume from {path}: training set had {ckpt['data_order']['n']} samples, now {n}")
    for key in ("raw_model", "optimizer", "scheduler", "rng", "ema_updates"):
        if key not in ckpt:
            raise BgkitError(f"cannot resume from {path}: checkpoint lacks {key}")


def run_state(flow: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, scheduler: Any, rng: list[Any],
              cfg: TrainConfig, world: int, n: int, step: int, final: bool, metrics: dict[str, Any],
              history: list[dict[str, float]], window: list[float], extra: dict[str, Any],
              flow_info: dict[str, Any]) -> dict[str, Any]:
    """The contents of a training checkpoint at ``step`` (:mod:`bgkit.checkpoint`; ``final``: the run's last)."""
    return {
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
        "config": sanitize(asdict(cfg), "config"),
        "world_size": world,
        "flow": flow_info,
        "history": sanitize(history, "history"),
        "loss_window": window,
        "metrics": sanitize(metrics, "metrics"),
        "extra": extra,
        "provenance": sanitize(provenance(seed=cfg.seed, objective=cfg.objective), "provenance"),
    }
