"""Helper for tests/test_distributed.py: a tiny training run, launched by torchrun or directly.

Usage: python _dist_train.py OUT.pt DUMP_DIR [--objective regflow|mle] [--steps N]
       [--crash-at K] [--resume] [--augment]
Each rank writes DUMP_DIR/rank{r}.pt with its final flow parameters (EMA weights).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from bgkit.flows import build_flow
from bgkit.train import TrainConfig, train

DIM = 4
N = 256


def toy_data(objective: str) -> tuple:
    """Deterministic toy data: RegFlow pairs (x0, x1) or MLE samples x, [N, DIM] float32."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((N, DIM)).astype(np.float32)
    x1 = (0.5 * x0 + np.sin(x0[:, ::-1]) + 1.0).astype(np.float32)
    return (x0, x1) if objective == "regflow" else x1


def small_flow() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_flow("nsf", DIM, n_layers=2, hidden=16, n_blocks=1, bins=4)


def rotate_pairs(batch: tuple) -> tuple:
    """Rotate each row's 2-D point pairs by one random angle, the same for every tensor of the tuple."""
    b = batch[0].shape[0]
    theta = 2 * torch.pi * torch.rand(b, 1, 1)
    rot = torch.cat([torch.cat([theta.cos(), -theta.sin()], 2), torch.cat([theta.sin(), theta.cos()], 2)], 1)
    return tuple(torch.einsum("bij,bpj->bpi", rot, t.reshape(b, -1, 2)).reshape(b, -1) for t in batch)


class CrashingAugment:
    """rotate_pairs that raises RuntimeError on call number `crash_at` (simulates a killed job)."""

    def __init__(self, crash_at: int | None) -> None:
        self.calls, self.crash_at = 0, crash_at

    def __call__(self, batch: tuple) -> tuple:
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise RuntimeError(f"simulated crash at step {self.calls}")
        return rotate_pairs(batch)


def config(objective: str, steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=32, lr=2e-3, warmup_steps=3, val_every=4, ckpt_every=5,
                       objective=objective, reg="fb", reg_weight=1e-5, noise_std=0.0, seed=3, val_batch_size=50)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("dump")
    p.add_argument("--objective", default="regflow")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--crash-at", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--augment", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    data = toy_data(a.objective)
    val = tuple(d[:64] for d in data) if a.objective == "regflow" else data[:64]
    augment = CrashingAugment(a.crash_at) if (a.augment or a.crash_at) else None
    flow = small_flow()
    train(flow, data, val, config(a.objective, a.steps), a.out, resume=a.resume, augment=augment,
          extra_checkpoint={"system": "toy", "scale": np.float64(1.5)}, progress=False)
    rank = int(os.environ.get("RANK", "0"))
    Path(a.dump).mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in flow.state_dict().items()}, Path(a.dump) / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
