"""``bgkit refine``: self-refinement of a proposal by importance resampling (:mod:`bgkit.refine`)."""
from __future__ import annotations

from pathlib import Path

import click

from bgkit.cli.common import _SYSTEM_HELP, _check_workers, _note
from bgkit.refine import RefineConfig

_D = RefineConfig()


@click.command()
@click.option("--system", "system_name", required=True, help=_SYSTEM_HELP)
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Starting proposal (default: the system's shipped proposal.pt).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Proposal to write (the best round); OUT.refine/ holds the run and continues it, "
                   "OUT.history.json and OUT.history.png its history.")
@click.option("--rounds", type=int, default=_D.rounds, show_default=True, help="Rounds (a larger number continues a run).")
@click.option("--draws", type=int, default=_D.draws, show_default=True, help="Samples drawn and scored per round.")
@click.option("--resampled", type=int, default=None, help="Indices resampled per round (default: --draws).")
@click.option("--clip-fraction", type=float, default=_D.clip_fraction, show_default=True,
              help="Largest fraction of log-weights dropped before resampling.")
@click.option("--resampling", type=click.Choice(["systematic", "multinomial"]), default=_D.resampling,
              show_default=True, help="Resampling scheme.")
@click.option("--md-fraction", type=float, default=_D.md_fraction, show_default=True,
              help="Fraction of each round's training set taken from MD train frames.")
@click.option("--data", multiple=True, help="MD dataset folder(s) for --md-fraction and the validation NLL "
              "(default: the system's own md/); repeatable.")
@click.option("--basin-data", multiple=True, help="Dataset folder(s) whose basin populations (all frames) the "
              "reweighted draws are compared with (default: the system's reference datasets); repeatable.")
@click.option("--steps", type=int, default=_D.steps, show_default=True, help="Training steps per round.")
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True, help="Training rows per step.")
@click.option("--lr", type=float, default=_D.lr, show_default=True, help="Peak learning rate of each round.")
@click.option("--warmup-steps", type=int, default=_D.warmup_steps, show_default=True,
              help="Linear warm-up of each round's learning rate.")
@click.option("--min-lr-factor", type=float, default=_D.min_lr_factor, show_default=True,
              help="Each round's cosine ends at lr × this.")
@click.option("--ema", type=float, default=_D.ema, show_default=True, help="EMA decay of the weights.")
@click.option("--val-draws", type=int, default=_D.val_draws, show_default=True,
              help="Independent validation draw after each round (its ESS/N picks the best round).")
@click.option("--chunk-size", type=int, default=_D.chunk_size, show_default=True,
              help="Draws per chunk file (the unit of resuming).")
@click.option("--seed", type=int, default=_D.seed, show_default=True, help="Seed of every draw, resampling and batch.")
@click.option("--workers", type=int, default=None, help="Energy worker processes (default: all cores).")
@click.option("--force", is_flag=True, help="Discard an existing run in OUT.refine/ and replace --out.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def refine(system_name, model, out, rounds, draws, resampled, clip_fraction, resampling, md_fraction, data, basin_data, steps,
           batch_size, lr, warmup_steps, min_lr_factor, ema, val_draws, chunk_size, seed, workers, force,
           no_progress) -> None:
    """Draw from the proposal, reweight by the energy, resample, retrain by maximum likelihood; repeat.

    The same command continues a killed run (finished chunks and rounds are kept).
    """
    from bgkit.md.dataset import load_dataset
    from bgkit.refine import refine as run_refine
    from bgkit.sample import load_proposal
    from bgkit.systems import load_system

    config = RefineConfig(rounds=rounds, draws=draws, resampled=resampled, clip_fraction=clip_fraction,
                          resampling=resampling, md_fraction=md_fraction, steps=steps, batch_size=batch_size, lr=lr,
                          warmup_steps=warmup_steps, min_lr_factor=min_lr_factor, ema=ema, val_draws=val_draws,
                          chunk_size=chunk_size, seed=seed)
    config.validate()
    workers = _check_workers(workers)
    system = load_system(system_name)
    start = load_proposal(system, model)
    datasets = [load_dataset(d, system) for d in data] if data else None
    basins = [load_dataset(d, system) for d in basin_data] if basin_data else None
    result = run_refine(system, start, out, config, datasets=datasets, basin_datasets=basins,
                        energy_workers=workers, force=force,
                        progress=not no_progress, say=lambda line: click.echo(line, err=True))
    best = result.history[result.best_round]["validation"]
    click.echo(f"wrote {result.out}: round {result.best_round} of {len(result.history) - 1}, validation ESS/N "
               f"{best['ess_fraction']:.4f} on {best['val_draws']} fresh draws; history in "
               f"{result.out.with_suffix('.history.json')}")
    if result.best_round == 0:
        _note("no round beat the starting proposal on the validation draw: the output is a copy of it")
