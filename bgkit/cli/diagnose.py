"""``bgkit diagnose``: where a proposal loses its importance weight (:mod:`bgkit.diagnose`)."""
from __future__ import annotations

from pathlib import Path

import click

from bgkit.cli.common import _SYSTEM_HELP, _check_workers


@click.command()
@click.option("--system", "system_name", required=True, help=_SYSTEM_HELP)
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Proposal (default: the system's shipped proposal.pt).")
@click.option("--n", type=int, default=20000, show_default=True, help="Samples to draw.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draw.")
@click.option("--top", type=int, default=15, show_default=True, help="Heaviest draws and worst MD frames to show.")
@click.option("--data", multiple=True, help="Training dataset folder(s) for the tails and distances "
              "(default: those the proposal was trained on, else the system's md/); repeatable.")
@click.option("--workers", type=int, default=None, help="Energy worker processes (default: all cores).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the report as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
def diagnose(system_name, model, n, seed, top, data, workers, out, force) -> None:
    """Report the draws that carry the largest weights and the MD test frames the flow covers worst:
    basin, energy, coordinates in the tails of the training frames, distance to the nearest MD frame."""
    import numpy as np

    from bgkit import BgkitError
    from bgkit.diagnose import diagnose_weights, diagnosis_lines
    from bgkit.evaluate import Reference
    from bgkit.limits import check_int
    from bgkit.md.dataset import load_dataset
    from bgkit.outputs import check_output_file
    from bgkit.provenance import atomic_write_json, provenance
    from bgkit.sample import draw, load_proposal
    from bgkit.systems import load_system

    check_int("--n", n)
    if n < 100:
        raise BgkitError(f"--n must be at least 100 samples, got {n}")
    if not 1 <= top <= n:
        raise BgkitError(f"--top must be between 1 and --n, got {top}")
    if out is not None:
        check_output_file(out, force)
    workers = _check_workers(workers)
    system = load_system(system_name)
    proposal = load_proposal(system, model)
    if not data:
        trained = (proposal.info.get("training") or {}).get("dataset")
        trained = [trained] if isinstance(trained, str) else list(trained or [])
        data = [d for d in trained if (Path(d) / "dataset.json").is_file()] or [str(system.folder / "md")]
    train_xyz = np.concatenate([load_dataset(d, system).split("train") for d in data])
    reference = Reference.of_system(system)
    result = draw(proposal, system, n=n, seed=seed, n_workers=workers)
    report = diagnose_weights(result, proposal, system, train_xyz, reference.xyz, reference.energies_kt, top=top,
                              seed=seed)
    report.update({"system": system.name, "model": str(proposal.path), "seed": seed, "training_data": list(data),
                   "reference": reference.record()})
    for line in diagnosis_lines(report):
        click.echo(line)
    if out is not None:
        atomic_write_json({**report, "provenance": provenance(system=system.name, seed=seed)}, out)
        click.echo(f"wrote {out}")
