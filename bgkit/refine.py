"""Self-refinement of a proposal by importance resampling: draw, reweight, resample, retrain (``bgkit refine``).

Round k draws N samples from the current flow q_k, gives each the log-weight
log w = −u/kT − log q_k (one energy, no forces, per draw), sets the largest
``clip_fraction`` of the log-weights to −inf, resamples M indices ∝ w
(systematic or multinomial, :func:`bgkit.reweight.resample`) and continues
maximum-likelihood training of q_k on the resampled draws, optionally mixed
with a fraction of MD train frames, in the one training loop
(:mod:`bgkit.train.loop`: warm-up, cosine, EMA, checkpoints, rotor relabelling).
As N grows the resampled set is distributed as the Boltzmann density, so this
is forward KL(p‖q) with ~ESS effective samples per round (docs/methods.md,
"Self-refinement").

After each round an independent validation draw (its own seed, never trained on)
gives ESS/N and the other metrics of :func:`bgkit.evaluate.compute_metrics`
plus reweighted basin populations; they go into the history (``state.json`` of
the work folder, the output proposal's metrics, a JSON file and a PNG of ESS/N
against cumulative energy evaluations). The output is the round with the best
validation ESS/N (round 0 is the starting proposal itself).

Draws are written in chunks (``round_K/draws_I.npz``, checksummed) into the work
folder, so N of several million never sits in memory as frames; a killed run
continues with the same command: finished chunks and rounds are kept, no chunk is
drawn twice, and the result equals an uninterrupted run's (every draw and batch
is a function of the seed).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from bgkit import BgkitError
from bgkit.arrays import evenly_spaced
from bgkit.provenance import file_sha256
from bgkit.refine_folder import (RefinementFolder, chunk_seed, draw_chunks, is_refinement_folder,
                                 resampled_flow_vectors)

if TYPE_CHECKING:
    from bgkit.proposal import Proposal
    from bgkit.systems import System

__all__ = ["RefineConfig", "RefineResult", "refine"]



@dataclass
class RefineConfig:
    """Settings of a refinement run (counts are per round; lr etc. as in :class:`bgkit.train.config.TrainConfig`).

    draws: N samples drawn per round; resampled: M indices resampled from them (None: N);
    clip_fraction: largest fraction of log-weights dropped before resampling; resampling: scheme;
    md_fraction: fraction of each round's training set taken from MD train frames (0: draws only);
    steps, batch_size, lr, warmup_steps, min_lr_factor, ema: each round's maximum-likelihood training;
    val_draws: the independent validation draw after each round; chunk_size: draws per chunk file;
    max_ot: samples per side in the validation's exact-OT T-W2.
    """

    rounds: int = 4
    draws: int = 200_000
    resampled: int | None = None
    clip_fraction: float = 1e-4
    resampling: str = "systematic"
    md_fraction: float = 0.0
    steps: int = 2000
    batch_size: int = 512
    lr: float = 5e-5
    warmup_steps: int = 100
    min_lr_factor: float = 0.1
    ema: float = 0.999
    val_draws: int = 20_000
    chunk_size: int = 50_000
    max_ot: int = 1000
    seed: int = 0

    def validate(self) -> None:
        from bgkit.limits import MAX_BATCH, MAX_COUNT, MAX_STEPS, check_int
        from bgkit.reweight import RESAMPLING_SCHEMES

        for option, value, high in (("--rounds", self.rounds, 10_000), ("--draws", self.draws, MAX_COUNT),
                                    ("--resampled", self.resampled, MAX_COUNT), ("--steps", self.steps, MAX_STEPS),
                                    ("--batch-size", self.batch_size, MAX_BATCH),
                                    ("--warmup-steps", self.warmup_steps, MAX_STEPS),
                                    ("--val-draws", self.val_draws, MAX_COUNT),
                                    ("--chunk-size", self.chunk_size, MAX_BATCH), ("--max-ot", self.max_ot, 20_000),
                                    ("--seed", self.seed, 2**31 - 1)):
            check_int(option, value, 0, high)

        checks = [("--rounds", self.rounds >= 1), ("--draws", self.draws >= 2),
                  ("--resampled", self.resampled is None or self.resampled >= 2),
                  ("--clip-fraction", 0 <= self.clip_fraction < 0.5),
                  ("--md-fraction", 0 <= self.md_fraction < 1), ("--steps", self.steps >= 1),
                  ("--batch-size", self.batch_size >= 1), ("--lr", math.isfinite(self.lr) and 0 < self.lr <= 1),
                  ("--warmup-steps", 0 <= self.warmup_steps <= self.steps),
                  ("--min-lr-factor", 0 <= self.min_lr_factor <= 1), ("--ema", 0 <= self.ema < 1),
                  ("--val-draws", self.val_draws >= 100), ("--chunk-size", self.chunk_size >= 1),
                  ("--max-ot", self.max_ot >= 10), ("--seed", self.seed >= 0)]
        for option, ok in checks:
            if not ok:
                value = getattr(self, option[2:].replace("-", "_"))
                raise BgkitError(f"{option} {value} is out of range")
        if self.resampling not in RESAMPLING_SCHEMES:
            raise BgkitError(f"--resampling must be one of {', '.join(RESAMPLING_SCHEMES)}, got {self.resampling!r}")
        if self.n_resampled < self.batch_size:
            raise BgkitError(f"--resampled {self.n_resampled} is smaller than --batch-size {self.batch_size}")

    @property
    def n_resampled(self) -> int:
        return self.draws if self.resampled is None else self.resampled

    def check_resources(self, n_atoms: int, dim: int, work: Path) -> None:
        """BgkitError naming the option when a round would not fit in memory or its draws on disk."""
        from bgkit.limits import check_disk, check_memory

        chunk = min(self.chunk_size, self.draws)
        check_memory("--draws", self.draws, 40.0 * self.draws + 80.0 * chunk * n_atoms * 3, "log-weights and a chunk")
        check_memory("--resampled", self.n_resampled, 4.0 * self.n_resampled * dim * 3, "the resampled training rows")
        check_memory("--val-draws", self.val_draws, 100.0 * self.val_draws * n_atoms * 3, "the validation draw")
        check_disk("--draws", self.draws, (12.0 * n_atoms + 32) * self.draws * (self.rounds + 1), work.parent,
                   "draw chunks (all rounds)")

    #: fields that may change when a run is continued (more rounds)
    MAY_CHANGE = ("rounds",)


@dataclass
class RefineResult:
    out: Path
    best_round: int
    history: list[dict[str, Any]]


# --------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------- the run


def _validate(proposal: Proposal, system: System, reference: Any, basin_xyz: np.ndarray, cfg: RefineConfig, k: int,
              energy: Any, progress: bool) -> tuple[dict[str, Any], list[str]]:
    """Metrics of an independent validation draw (never trained on) of ``cfg.val_draws`` samples."""
    from bgkit.evaluate import compute_metrics
    from bgkit.reweight import clip_log_weights, ess_fraction
    from bgkit.sample import draw

    res = draw(proposal, system, n=cfg.val_draws, batch_size=min(cfg.val_draws, 5000),
               seed=chunk_seed(cfg.seed, k, -1), progress=progress, energy_model=energy)
    m = compute_metrics(res, proposal, reference, max_ot=cfg.max_ot, seed=cfg.seed, nll_frames=2000, floor=False,
                        basin_xyz=basin_xyz)
    keep = ("ess_fraction", "ess_fraction_clipped", "e_w2_resampled", "e_w2_resampled_unclipped",
            "t_w2_resampled", "t_w2_resampled_unclipped", "nll_test", "log_w_std_test", "ram_tv",
            "n_nonfinite", "n_wrong_chirality")
    out = {key: m.get(key) for key in keep}
    finite = res.weights.log_w[np.isfinite(res.weights.log_w)]
    out["log_w_std_draws"] = float(np.std(finite)) if len(finite) > 1 else None
    out["ess_fraction_clipped_1e-4"] = ess_fraction(clip_log_weights(res.weights.log_w, 1e-4)[0])
    out["val_draws"] = cfg.val_draws
    # compute_metrics compares basins with unclipped weights: clipping drops exactly the heavy draws of an
    # under-covered basin (docs/results.md)
    basins, warnings = m["basins"], m["basins_lost"]
    out["basins"] = basins
    return out, warnings


def _train_round(run: RefinementFolder, k: int, proposal: Proposal, y: np.ndarray, md_y: np.ndarray | None,
                 val_y: np.ndarray, extra: dict[str, Any], rotors: list, progress: bool) -> Path:
    """Continue maximum likelihood on round k's training set; the round's checkpoint (a proposal)."""
    import torch

    from bgkit.symmetry import RotorRelabel
    from bgkit.train.config import TrainConfig
    from bgkit.train.loop import train

    cfg = run.config
    data = y
    if md_y is not None and cfg.md_fraction > 0:
        n_md = int(round(cfg.md_fraction / (1 - cfg.md_fraction) * len(y)))
        pick = np.random.default_rng(chunk_seed(cfg.seed, k, -3)).choice(len(md_y), n_md, replace=n_md > len(md_y))
        data = np.concatenate([y, md_y[pick]])
    tc = TrainConfig(objective="mle", steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                     warmup_steps=cfg.warmup_steps, min_lr_factor=cfg.min_lr_factor, ema=cfg.ema,
                     seed=cfg.seed + k, val_every=max(1, cfg.steps // 5), ckpt_every=max(1, cfg.steps // 5))
    path = run.round_dir(k) / "proposal.pt"
    augment = RotorRelabel(proposal.transform, rotors) if rotors else None
    flow = proposal.flow.train()
    extra = {**extra, "refinement": {"round": k, "config": asdict(cfg), "training_rows": int(len(data)),
                                     "md_rows": int(len(data) - len(y))}}
    train(flow, torch.as_tensor(data), torch.as_tensor(val_y), tc, path, resume=path.is_file(), augment=augment,
          extra_checkpoint=extra, progress=progress)
    return path


def refine(system: System, model: str | Path | Proposal, out: str | Path, config: RefineConfig,
           datasets: list[Any] | None = None, reference: Any = None, basin_datasets: list[Any] | None = None,
           energy_workers: int | None = None,
           force: bool = False, progress: bool = True, say: Callable[[str], None] | None = None) -> RefineResult:
    """Refine the proposal ``model`` (a file, or one loaded for ``system``) of ``system`` for ``config.rounds``
    rounds; write the best round to ``out``.

    datasets: MD datasets whose train frames are mixed in (``md_fraction``) and whose validation frames
    give the training loop's validation NLL (default: the system's own ``md``); reference: a
    :class:`bgkit.evaluate.Reference` for the validation metrics (default: the system's); basin_datasets: the
    datasets (all their frames, joined) whose basin populations the reweighted draws are compared with
    (default: the reference's datasets; pass the best-converged one, e.g. replica exchange). The work folder
    ``OUT.refine/`` beside ``out`` holds the draws and the rounds; the same call continues it.
    """
    from bgkit.checkpoint import current_extra, load_checkpoint
    from bgkit.energy import EnergyModel
    from bgkit.evaluate import Reference
    from bgkit.outputs import check_output_file
    from bgkit.proposal import Proposal, export_proposal
    from bgkit.provenance import atomic_write_json, provenance
    from bgkit.train.molecular import to_flow_space

    say = say or (lambda line: print(line, file=sys.stderr))
    config.validate()
    out = Path(os.path.abspath(out))
    work = out.with_name(out.name + ".refine")
    start = model if isinstance(model, Proposal) else Proposal.load(model, system=system)
    system = start.bind(system)
    model = start.path
    if work.exists() and not is_refinement_folder(work):
        raise BgkitError(f"{work} exists and is not a bgkit refinement folder: move it away")
    if force and work.exists():
        import shutil

        shutil.rmtree(work)
    if out.exists() and not force and not work.exists():
        check_output_file(out, force, hint="pass --force to overwrite it")
    check_output_file(out, True)  # writable, not a folder
    config.check_resources(system.n_atoms, start.transform.dim, work)
    start_record = {"model": str(Path(model).resolve()), "sha256": file_sha256(Path(model))}
    run = RefinementFolder(work, config, start_record, may_change=RefineConfig.MAY_CHANGE)
    reference = reference if reference is not None else Reference.of_system(system)
    if datasets is None:
        from bgkit.md.dataset import load_dataset

        datasets = [load_dataset(f, system) for f in system.reference_folders[:1]]
    basin_xyz = np.concatenate([d.xyz for d in (basin_datasets or reference.datasets)])
    md_train = np.concatenate([d.split("train") for d in datasets]).astype(np.float64)
    md_val = np.concatenate([d.split("val") for d in datasets]).astype(np.float64)
    md_val = md_val[evenly_spaced(len(md_val), 2000)]
    md_y = to_flow_space(start.transform, md_train).astype(np.float32) if config.md_fraction > 0 else None
    val_y = to_flow_space(start.transform, md_val).astype(np.float32)
    extra = current_extra(load_checkpoint(model).get("extra") or {})  # each round's proposal keeps the start's record
    rotors = ((extra.get("training") or {}).get("rotor_groups")) or []
    t_run = time.perf_counter()
    with EnergyModel(system, n_workers=energy_workers) as energy:
        if not run.history:
            say("round 0: validating the starting proposal")
            metrics, warnings = _validate(start, system, reference, basin_xyz, config, 0, energy, progress)
            run.history.append({"round": 0, "energy_evaluations": config.val_draws, "wall_time_s": 0.0,
                                "validation": metrics, "warnings": warnings})
            run.save()
            _report(run.history[-1], say)
        current = start
        if len(run.history) > 1:
            current = Proposal.load(run.round_dir(len(run.history) - 1) / "proposal.pt", system=system)
        for k in range(len(run.history), config.rounds + 1):
            t0 = time.perf_counter()
            paths = draw_chunks(run, k, current, system, energy, say, progress)
            y, resampling = resampled_flow_vectors(paths, current, config, k)
            path = _train_round(run, k, current, y, md_y, val_y, extra, rotors, progress)
            current = Proposal.load(path, system=system)
            metrics, warnings = _validate(current, system, reference, basin_xyz, config, k, energy, progress)
            before = run.history[-1]
            run.history.append({"round": k, "energy_evaluations": before["energy_evaluations"] + config.draws
                                + config.val_draws, "wall_time_s": before["wall_time_s"] + time.perf_counter() - t0,
                                "resampling": resampling, "validation": metrics, "warnings": warnings,
                                "train_val_nll": load_checkpoint(path)["metrics"].get("final_val_loss")})
            run.save()
            _report(run.history[-1], say)
    best = max(run.history, key=lambda h: h["validation"]["ess_fraction"] or 0.0)["round"]
    best_path = Path(model) if best == 0 else run.round_dir(best) / "proposal.pt"
    summary = {"refinement": {"best_round": best, "history": run.history, "config": asdict(config),
                              "start": run.state["start"], "command": " ".join(sys.argv)}}
    export_proposal(best_path, out, metrics=summary, unfinished=False)
    atomic_write_json({**summary, "provenance": provenance(system=system.name, seed=config.seed)},
                      out.with_suffix(".history.json"))
    _plot_history(run.history, out.with_suffix(".history.png"), system.name)
    say(f"best round {best} (validation ESS/N {run.history[best]['validation']['ess_fraction']:.4f}); "
        f"{time.perf_counter() - t_run:.0f} s this call")
    return RefineResult(out, best, run.history)


def _report(entry: dict[str, Any], say: Callable[[str], None]) -> None:
    v = entry["validation"]
    fmt = lambda x, f=".4f": "n/a" if x is None else format(x, f)  # noqa: E731
    say(f"round {entry['round']}: ESS/N {fmt(v['ess_fraction'])} (clipped {fmt(v['ess_fraction_clipped'])}), "
        f"E-W2 {fmt(v['e_w2_resampled'], '.3f')} kT, T-W2 {fmt(v['t_w2_resampled'], '.3f')} rad, "
        f"Ram-TV {fmt(v.get('ram_tv'), '.3f')}, NLL {fmt(v['nll_test'], '.2f')}, "
        f"{entry['energy_evaluations']} energies, {entry['wall_time_s']:.0f} s")
    for w in entry.get("warnings", []):
        say(f"warning: round {entry['round']}: {w}")


def _plot_history(history: list[dict[str, Any]], path: Path, name: str) -> None:
    from bgkit.plots import refinement_curve

    refinement_curve([h["energy_evaluations"] for h in history],
                     [h["validation"]["ess_fraction"] for h in history], path, title=f"{name}: self-refinement")
