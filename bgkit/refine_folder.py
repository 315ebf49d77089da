"""The work folder of a refinement run (``OUT.refine/``): its state, checksummed draw chunks, resampling.

``state.json`` holds the run's settings, its starting proposal (path and sha256), the per-round
history, the sha256 of every finished draw chunk and a log of every chunk drawn. ``round_K/`` holds
round K's draws (``draws_I.npz``: positions float32 [n, N, 3] nm, log q, reduced energies, the
wrong-chirality flags) and its training checkpoint ``proposal.pt``. A chunk is written under a
temporary name and renamed when complete, then its checksum recorded, so a killed run never leaves a
half chunk that counts; a chunk whose file is missing or damaged is drawn again with the same seed.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from bgkit import BgkitError
from bgkit.provenance import file_sha256

if TYPE_CHECKING:
    from bgkit.proposal import Proposal
    from bgkit.systems import System

__all__ = ["STATE_FILE", "RefinementFolder", "is_refinement_folder", "draw_chunks", "resampled_flow_vectors",
           "chunk_seed"]

STATE_FILE = "state.json"


def chunk_seed(seed: int, round_: int, chunk: int) -> int:
    """A distinct sampling seed per (run seed, round, chunk); chunk −1 is the validation draw."""
    return int(seed) * 1_000_003 + 10_007 * round_ + chunk + 1


class RefinementFolder:
    """One refinement run's work folder: state.json (config, history), round_K/ (draw chunks, checkpoint)."""

    def __init__(self, work: Path, config: Any, start: dict[str, Any], may_change: tuple[str, ...] = ()):
        import json

        from bgkit.provenance import atomic_write_json

        self.work = work
        self.config = config
        self._write = atomic_write_json
        path = work / STATE_FILE
        if path.is_file():
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise BgkitError(f"{path} cannot be read ({exc}): pass --force to start the refinement over") from None
            old = state.get("config", {})
            new = asdict(config)
            changed = [k for k in new if k not in may_change and old.get(k) != new[k]]
            if changed:
                k = changed[0]
                raise BgkitError(f"{work} holds a refinement run with {k.replace('_', '-')} {old.get(k)!r}, not "
                                 f"{new[k]!r}: repeat its options to continue it, or pass --force to start over")
            if state.get("start") != start:
                raise BgkitError(f"{work} holds a refinement run of another starting proposal "
                                 f"({state.get('start', {}).get('model')}): pass --force to start over")
            self.state = state
            self.state["config"] = new
        else:
            work.mkdir(parents=True, exist_ok=True)
            self.state = {"kind": "bgkit.refinement", "config": asdict(config), "start": start, "history": []}
            self.save()

    def save(self) -> None:
        self._write(self.state, self.work / STATE_FILE)

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.state["history"]

    def round_dir(self, k: int) -> Path:
        d = self.work / f"round_{k:03d}"
        d.mkdir(exist_ok=True)
        return d

    def chunks(self, k: int) -> dict[str, str]:
        """Finished draw chunks of round k: file name -> sha256."""
        return self.state.setdefault("chunks", {}).setdefault(str(k), {})


def is_refinement_folder(work: Path) -> bool:
    """Whether ``work`` is a folder this module made (a state.json of kind bgkit.refinement, or empty)."""
    import json

    if not work.is_dir():
        return False
    if not any(work.iterdir()):
        return True
    try:
        return json.loads((work / STATE_FILE).read_text()).get("kind") == "bgkit.refinement"
    except (OSError, ValueError, AttributeError):
        return False


def draw_chunks(run: RefinementFolder, k: int, proposal: Proposal, system: System, energy: Any, say: Callable[[str], None],
                 progress: bool) -> list[Path]:
    """Round k's draw chunks (drawn now unless finished and intact), in order."""
    from bgkit.sample import draw

    cfg = run.config
    done = run.chunks(k)
    paths = []
    n_chunks = math.ceil(cfg.draws / cfg.chunk_size)
    for i in range(n_chunks):
        name = f"draws_{i:04d}.npz"
        path = run.round_dir(k) / name
        if name in done and path.is_file() and file_sha256(path) == done[name]:
            paths.append(path)
            continue
        if name in done:
            say(f"round {k}: chunk {path} is damaged or missing: drawing it again")
        n = min(cfg.chunk_size, cfg.draws - i * cfg.chunk_size)
        res = draw(proposal, system, n=n, batch_size=min(n, 5000), seed=chunk_seed(cfg.seed, k, i),
                   clip_fraction=0.0, progress=progress, energy_model=energy)
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}.npz")
        np.savez(tmp, xyz=res.xyz.astype(np.float32), log_q=res.log_q, energy_kt=res.energy_kt,
                 wrong_chirality=res.wrong_chirality)
        os.replace(tmp, path)
        done[name] = file_sha256(path)
        run.state.setdefault("drawn", []).append(f"{k}/{name}")  # a log of every chunk drawn, for audits
        run.save()
        paths.append(path)
    return paths


def resampled_flow_vectors(paths: list[Path], proposal: Proposal, cfg: Any, k: int
                            ) -> tuple[np.ndarray, dict[str, Any]]:
    """Flow vectors [M, D] float32 of the resampled draws of one round, and what the resampling did."""
    import torch

    from bgkit.reweight import clip_log_weights, ess_fraction, log_weights, resample

    log_w_parts = []
    for p in paths:
        with np.load(p) as z:
            e = np.where(z["wrong_chirality"], np.inf, z["energy_kt"])
            log_w_parts.append(log_weights(e, z["log_q"])[0])
    log_w = np.concatenate(log_w_parts)
    clipped, n_clip = clip_log_weights(log_w, cfg.clip_fraction)
    idx = resample(clipped, cfg.n_resampled, seed=chunk_seed(cfg.seed, k, -2), scheme=cfg.resampling)
    bounds = np.cumsum([0] + [len(p) for p in log_w_parts])
    rows = []
    for j, p in enumerate(paths):
        mine = idx[(idx >= bounds[j]) & (idx < bounds[j + 1])] - bounds[j]
        if len(mine):
            with np.load(p) as z:
                xyz = z["xyz"][mine].astype(np.float64)
            y, _ = proposal.transform.to_flow(torch.as_tensor(xyz))
            rows.append(y.float().numpy())
    y = np.concatenate(rows)
    finite = np.isfinite(y).all(axis=1)
    info = {"draws": int(len(log_w)), "ess_fraction_draws": ess_fraction(log_w), "n_clipped": n_clip,
            "resampled": int(len(idx)), "unique_resampled": int(len(np.unique(idx))),
            "n_zero_weight": int((~np.isfinite(log_w)).sum()), "dropped_outside_support": int((~finite).sum())}
    return y[finite], info
