"""Training: objectives, regression targets and the one training loop.

* :mod:`bgkit.train.objectives` — the registry of objectives (what the loop and the CLI offer).
* :mod:`bgkit.train.regflow`, :mod:`bgkit.train.mle`, :mod:`bgkit.train.kl` — losses of classical flows
  (RegFlow: Rehman et al., arXiv 2506.01158).
* :mod:`bgkit.train.matching` — flow-matching losses of CNF teachers (CFM, OT-CFM, W-CFM, FDM).
* :mod:`bgkit.train.targets` — exact (blocked) OT pairs, targets files;
  :mod:`bgkit.train.reflow` — reflow pairs from a teacher, chunked and streamed.
* :mod:`bgkit.train.config` — ``TrainConfig`` and the schedule policy; :mod:`bgkit.train.state` — RNG
  states and EMA; :mod:`bgkit.train.distributed` — torchrun context.
* :mod:`bgkit.train.loop` — ``train`` (AdamW, EMA, cosine schedule, resumable checkpoints, data parallel).
* :mod:`bgkit.train.molecular` — what ``bgkit targets``/``train``/``teacher train`` run for a system.
"""
from __future__ import annotations

from bgkit.checkpoint import load_checkpoint
from bgkit.train.config import TrainConfig, schedule_for
from bgkit.train.loop import TrainResult, train
from bgkit.train.matching import flow_matching_loss
from bgkit.train.objectives import OBJECTIVES
from bgkit.train.mle import mle_loss
from bgkit.train.regflow import regflow_loss
from bgkit.train.targets import Targets, load_targets, ot_assignment, ot_pairs, save_targets

__all__ = [
    "TrainConfig", "TrainResult", "train", "load_checkpoint", "schedule_for", "OBJECTIVES",
    "mle_loss", "regflow_loss", "flow_matching_loss",
    "Targets", "ot_assignment", "ot_pairs", "save_targets", "load_targets",
]
