"""Training: RegFlow / MLE objectives, OT targets and the one training loop.

* :mod:`bgkit.train.targets` — exact (blocked) OT pairs, targets files.
* :mod:`bgkit.train.regflow` — RegFlow regression loss (Rehman et al., arXiv 2506.01158).
* :mod:`bgkit.train.mle` — maximum-likelihood baseline.
* :mod:`bgkit.train.loop` — ``train`` (AdamW, EMA, cosine schedule, resumable
  checkpoints, torchrun data parallelism) and ``load_checkpoint``.
"""
from __future__ import annotations

from bgkit.train.loop import TrainConfig, TrainResult, load_checkpoint, train
from bgkit.train.mle import mle_loss
from bgkit.train.regflow import regflow_loss
from bgkit.train.targets import Targets, load_targets, ot_assignment, ot_pairs, save_targets

__all__ = [
    "TrainConfig", "TrainResult", "train", "load_checkpoint",
    "mle_loss", "regflow_loss",
    "Targets", "ot_assignment", "ot_pairs", "save_targets", "load_targets",
]
