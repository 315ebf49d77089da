"""``bgkit plot ramachandran|energies|weights``: single figures from datasets or sample folders."""
from __future__ import annotations

from pathlib import Path

import click

from bgkit import BgkitError
from bgkit.cli.common import _Group


@click.group(cls=_Group)
def plot() -> None:
    """Draw single figures from datasets or sample folders."""


_PLOT_OUT_HELP = "Figure file: .png, or .pdf (written with a .png beside it)."
_PLOT_FORCE_HELP = "Overwrite an existing --out file."


def _check_plot_out(out: Path, force: bool) -> str:
    """--out of a plot command: .png or .pdf (+ .png), each new or replaced only with --force. Returns what the
    command says it wrote (a .pdf's .png named, and said to be replaced if it exists)."""
    from bgkit.outputs import check_output_file

    if out.suffix.lower() not in (".png", ".pdf"):
        raise BgkitError(f"--out must end in .png or .pdf, got {out.name}")
    check_output_file(out, force)
    if out.suffix.lower() != ".pdf":
        return f"wrote {out}"
    png = out.with_suffix(".png")
    check_output_file(png, force, hint="a .pdf is written with a .png beside it: pass --force to replace it")
    return f"wrote {out} and {png}" + (f" (replacing the existing {png.name})" if png.exists() else "")


@plot.command("ramachandran")
@click.argument("source")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help=_PLOT_OUT_HELP)
@click.option("--reweighted", is_flag=True, help="Sample folder: weight samples by their importance weights.")
@click.option("--force", is_flag=True, help=_PLOT_FORCE_HELP)
def plot_ramachandran(source: str, out: Path, reweighted: bool, force: bool) -> None:
    """Ramachandran free energy (kT) of a dataset (name or folder) or a sample folder; every φ/ψ pair."""
    wrote = _check_plot_out(out, force)
    from bgkit import plots
    from bgkit.dihedrals import phi_psi
    from bgkit.evaluate import positions_of

    xyz, system, weights, label = positions_of(source, reweighted)
    phi, psi, labels = phi_psi(xyz, system)
    plots.ramachandran_panels({label: (phi, psi) if weights is None else (phi, psi, weights)}, out,
                              title=f"{system.name}: {label}", pair_labels=labels)
    click.echo(wrote)


@plot.command("energies")
@click.argument("sample_folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help=_PLOT_OUT_HELP)
@click.option("--force", is_flag=True, help=_PLOT_FORCE_HELP)
def plot_energies(sample_folder: Path, out: Path, force: bool) -> None:
    """Energy histograms (MD test split, proposal, reweighted) of a sample folder."""
    wrote = _check_plot_out(out, force)
    from bgkit import plots
    from bgkit.evaluate import energy_sets

    name, data = energy_sets(sample_folder)
    plots.energy_histograms(data, out, title=f"{name}: energies")
    click.echo(wrote)


@plot.command("weights")
@click.argument("sample_folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help=_PLOT_OUT_HELP)
@click.option("--force", is_flag=True, help=_PLOT_FORCE_HELP)
def plot_weights(sample_folder: Path, out: Path, force: bool) -> None:
    """Log-weight histogram of a sample folder."""
    wrote = _check_plot_out(out, force)
    from bgkit import plots
    from bgkit.sample import load_sample_folder

    d = load_sample_folder(sample_folder)
    plots.log_weight_histogram(d["log_w"], out, title=f"{d['summary']['system']}: log-weights")
    click.echo(wrote)
