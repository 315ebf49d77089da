"""``bgkit sample`` and ``bgkit evaluate``: argument checks and output over :mod:`bgkit.sample` and :mod:`bgkit.evaluate`."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from bgkit import BgkitError
from bgkit.cli.common import _check_workers, _note, _sample_options, _with_options

if TYPE_CHECKING:
    from bgkit.proposal import Proposal
    from bgkit.sample import SampleResult
    from bgkit.systems import System


def _default_out(prefix: str) -> Path:
    """A new folder name ``PREFIX-YYYYmmdd-HHMMSS`` (``-2``, ``-3``, ... if taken) in the current directory."""
    import datetime

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(f"{prefix}-{stamp}")
    k = 1
    while out.exists():
        k += 1
        out = Path(f"{prefix}-{stamp}-{k}")
    return out


def _prefix(command: str, system_name: str) -> str:
    return f"bgkit-{command}-{system_name if '/' not in system_name else 'custom'}"


def _sample_out(out: Path | None, force: bool, prefix: str) -> Path:
    """The --out folder of sample/evaluate (default: a new timestamped one), checked before any work."""
    from bgkit.outputs import check_output_folder

    return check_output_folder(out or _default_out(prefix), force)


def _check_args(n: int, batch_size: int, workers: int | None, system: System | None = None,
                out: Path | None = None) -> int | None:
    """Sizes within their bounds (memory and disk for ``system``'s samples); returns the --workers to use."""
    from bgkit.sample import check_sizes

    check_sizes(n, batch_size, n_atoms=None if system is None else system.n_atoms, out=out)
    return _check_workers(workers)


def _check_seed(seed: int) -> None:
    from bgkit.limits import check_int

    check_int("--seed", seed, 0, 2**32 - 1)


def _draw(system: System, model: Path | None, n: int, seed: int, batch_size: int, device: str,
          workers: int | None, clip_fraction: float = 0.002) -> tuple[Proposal, SampleResult | None]:
    """Load the proposal (warning if unfinished) and draw; the result is None on a non-zero torchrun rank."""
    from bgkit.sample import draw, load_proposal

    proposal = load_proposal(system, model, device=device)
    for note in (proposal.unfinished_note(), proposal.temperature_note(system)):
        if note:
            click.echo("warning: " + note, err=True)
    return proposal, draw(proposal, system, n=n, batch_size=batch_size, seed=seed, n_workers=workers,
                          clip_fraction=clip_fraction)


def _print_summary(result: SampleResult) -> None:
    from bgkit.sample import low_ess_warning, summary_lines

    summary = result.summary()
    for line in summary_lines(summary):
        click.echo(line)
    warning = low_ess_warning(summary)
    if warning:
        click.echo("warning: " + warning, err=True)


@click.command()
@_with_options(_sample_options)
def sample(system_name, model, n, seed, batch_size, device, workers, out, force) -> None:
    """Draw samples from a proposal, with log q, energies and importance weights."""
    from bgkit.sample import write_sample_folder
    from bgkit.systems import load_system

    _check_args(n, batch_size, None)
    _check_seed(seed)
    out = _sample_out(out, force, _prefix("sample", system_name))
    system = load_system(system_name)
    workers = _check_args(n, batch_size, workers, system, out)
    proposal, result = _draw(system, model, n, seed, batch_size, device, workers)
    if result is None:  # a non-zero rank under torchrun
        return
    _print_summary(result)
    write_sample_folder(result, system, out, force, extra={"model": str(proposal.path), "seed": seed})
    click.echo(f"wrote {out}/ (samples.h5, weights.npz, summary.json)")


@click.command()
@_with_options(_sample_options)
@click.option("--data", multiple=True,
              help="Reference dataset folder (default: the datasets the system.yaml names as its reference, `md/` "
                   "unless it says otherwise); its test split is used. Repeat "
                   "it to judge against the test splits of several datasets of the system joined (e.g. two "
                   "independent trajectories: a reference with a lower noise floor).")
@click.option("--nll-frames", type=int, default=None,
              help="Test NLL on this many evenly spaced test frames (default: all; for teachers, whose exact "
                   "likelihood costs one ODE solve with D vector-Jacobian products per step).")
@click.option("--protocol", type=click.Choice(["bgkit", "internal", "cartesian"]), default="bgkit", show_default=True,
              help="Measure as a literature family does: internal (10^6 samples, ESS after capping the largest "
                   "10^-4 log-weights), cartesian (2·10^5 samples, top 0.2 % dropped); sets --n unless given.")
def evaluate(system_name, model, n, seed, batch_size, device, workers, out, force, data, nll_frames,
             protocol) -> None:
    """Sample, then compare with the MD test split of the reference data: metrics.json and figures."""
    from bgkit.evaluate import FIGURES, Reference, metrics_lines, write_evaluation
    from bgkit.protocols import PROTOCOLS
    from bgkit.md.dataset import load_dataset
    from bgkit.systems import load_system

    from bgkit.limits import check_int

    chosen = PROTOCOLS[protocol]
    if click.get_current_context().get_parameter_source("n") == click.core.ParameterSource.DEFAULT:
        n = chosen.n
    elif protocol != "bgkit" and n != chosen.n:
        _note(f"--protocol {protocol} measures {chosen.n} samples; measuring {n} as --n says")
    _check_args(n, batch_size, None)
    _check_seed(seed)
    out = _sample_out(out, force, _prefix("evaluate", system_name))  # fail before reading data or sampling
    system = load_system(system_name)
    if nll_frames is not None and nll_frames < 1:
        raise BgkitError(f"--nll-frames must be >= 1, got {nll_frames}")
    check_int("--nll-frames", nll_frames)
    workers = _check_args(n, batch_size, workers, system, out)
    # reads and checks the data now, before sampling
    reference = Reference([load_dataset(d, system) for d in data]) if data else Reference.of_system(system)
    proposal, result = _draw(system, model, n, seed, batch_size, device, workers, clip_fraction=chosen.clip_fraction)
    if result is None:
        return
    _print_summary(result)
    metrics = write_evaluation(result, proposal, reference, system, out, force, seed=seed, nll_frames=nll_frames,
                               protocol=chosen)
    for line in metrics_lines(metrics):
        click.echo(line)
    click.echo(f"wrote {out}/ (metrics.json, {', '.join(FIGURES)}, samples)")
