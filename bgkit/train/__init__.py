"""Training: objectives, regression targets and the one training loop.

* :mod:`bgkit.train.objectives` — the registry of objectives (what the loop and the CLI offer).
* :mod:`bgkit.train.regflow`, :mod:`bgkit.train.mle`, :mod:`bgkit.train.kl` — losses of classical flows
  (RegFlow: Rehman et al., arXiv 2506.01158).
* :mod:`bgkit.train.matching` — flow-matching losses of CNF teachers (CFM, OT-CFM, W-CFM, FDM).
* :mod:`bgkit.train.targets` — exact (blocked) OT pairs, targets files;
  :mod:`bgkit.train.reflow` — reflow pairs from a teacher, chunked (:mod:`~bgkit.train.reflow_chunks`) and
  streamed (:mod:`~bgkit.train.reflow_folder`).
* :mod:`bgkit.train.config` — ``TrainConfig`` and the schedule policy; :mod:`bgkit.train.state` — RNG
  states and EMA; :mod:`bgkit.train.distributed` — torchrun context.
* :mod:`bgkit.train.loop` — ``train`` (AdamW, EMA, cosine schedule, resumable checkpoints, data parallel).
* :mod:`bgkit.train.molecular` — what ``bgkit targets``/``train``/``teacher train`` run for a system.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> module of bgkit.train (imported on first use: torch is heavy, and the CLI lists choices cheaply)
_LAZY = {"load_checkpoint": "bgkit.checkpoint", "TrainConfig": "bgkit.train.config", "schedule_for": "bgkit.train.config",
         "TrainResult": "bgkit.train.loop", "train": "bgkit.train.loop", "flow_matching_loss": "bgkit.train.matching",
         "OBJECTIVES": "bgkit.train.objectives", "mle_loss": "bgkit.train.mle", "regflow_loss": "bgkit.train.regflow",
         "Targets": "bgkit.train.targets", "load_targets": "bgkit.train.targets",
         "ot_assignment": "bgkit.train.targets", "ot_pairs": "bgkit.train.targets",
         "save_targets": "bgkit.train.targets"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
