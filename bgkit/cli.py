"""The ``bgkit`` command line: thin wrappers over library functions.

Errors from bad input are printed as one line (``error: ...``) with exit
code 1 and no traceback; set ``BGKIT_DEBUG=1`` to see the traceback.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from bgkit import BgkitError, __version__


class _Group(click.Group):
    """A click group that turns exceptions into one-line errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the CLI's one place that reports any failure
            if os.environ.get("BGKIT_DEBUG"):
                raise
            if isinstance(exc, BgkitError):
                message = str(exc)
            elif isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
                message = f"{exc.strerror}: {exc.filename}"
            else:
                message = f"{type(exc).__name__}: {exc}"
            click.echo("error: " + " ".join(message.split()), err=True)
            sys.exit(1)


def _dump(data) -> str:
    return json.dumps(data, indent=2, default=str)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="bgkit")
def main() -> None:
    """bgkit: Boltzmann Generators for molecular systems (OpenMM + normalizing flows)."""


# ------------------------------------------------------------------ systems
@main.group(cls=_Group)
def systems() -> None:
    """List, show and build molecular systems."""


@systems.command("list")
def systems_list() -> None:
    """The shipped systems, one line each."""
    from bgkit.systems import load_system, shipped_systems

    for name in shipped_systems():
        s = load_system(name)
        click.echo(f"{name:6s} {s.n_atoms:4d} atoms  {s.temperature:6.1f} K  {'+'.join(s.spec.forcefield):40s} {s.spec.description}")


@systems.command("show")
@click.argument("system")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def systems_show(system: str, as_json: bool) -> None:
    """Details of SYSTEM (a shipped name or a system folder)."""
    from bgkit.systems import load_system

    info = load_system(system).summary()
    if as_json:
        click.echo(_dump(info))
        return
    s = load_system(system)
    click.echo(f"system        {info['name']}  ({info['folder']})")
    if info["description"]:
        click.echo(f"description   {info['description']}")
    click.echo(f"atoms         {info['atoms']}")
    click.echo(f"residues      {' '.join(info['residues'])}")
    click.echo(f"temperature   {info['temperature_K']} K   kT = {info['kT_kJ_per_mol']:.6f} kJ/mol")
    click.echo(f"force field   {' + '.join(info['forcefield'])}")
    cutoff = f", cutoff {info['nonbonded_cutoff_nm']} nm" if info["nonbonded_cutoff_nm"] else ""
    click.echo(f"nonbonded     {info['nonbonded_method']}{cutoff}; constraints: {info['constraints'] or 'none'}")
    click.echo(f"platform      {info['platform']} (fastest for single-point energies)")
    names = [a.name for a in s.topology.atoms]
    for kind in ("phi", "psi"):
        for quad in info[f"{kind}_atoms"]:
            res = s.topology.atom(quad[1] if kind == "phi" else quad[1]).residue
            label = "-".join(names[i] for i in quad)
            click.echo(f"{kind:3s} {str(res):8s} atoms {quad}  ({label})")
    click.echo(f"topology hash {info['topology_hash'][:16]}")


@systems.command("build")
@click.argument("system")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of the system's PDB.")
@click.option("--force", is_flag=True, help="Replace an existing, different PDB.")
def systems_build(system: str, out: Path | None, force: bool) -> None:
    """Build SYSTEM's topology PDB from its sequence (deterministic)."""
    from bgkit.build import write_built_pdb
    from bgkit.systems import load_system

    path, changed = write_built_pdb(load_system(system), out, force)
    click.echo(f"{'wrote' if changed else 'unchanged'} {path}")


# ------------------------------------------------------------------- energy
@main.command()
@click.option("--system", "system_name", required=True, help="Shipped system name or system folder.")
@click.argument("traj", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write energies (kT) as a .npy array [n_frames].")
@click.option("--workers", type=int, default=None, help="Energy worker processes (default: all cores).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
def energy(system_name: str, traj: Path, out: Path | None, workers: int | None, force: bool) -> None:
    """Reduced energies u/kT of every frame of TRAJ (any format mdtraj reads)."""
    import numpy as np

    from bgkit.energy import EnergyModel
    from bgkit.io import load_trajectory
    from bgkit.io import atomic_save_npy
    from bgkit.systems import load_system

    if out is not None and out.exists() and not force:
        raise BgkitError(f"{out} exists: pass --force to overwrite it")
    s = load_system(system_name)
    xyz = load_trajectory(traj, s)
    with EnergyModel(s, n_workers=workers) as model:
        batch = model.evaluate(xyz)
    e = batch.energy_kt
    finite = e[np.isfinite(e)]
    click.echo(f"{s.name}: {len(e)} frames from {traj}")
    if len(finite):
        click.echo(f"energy / kT   mean {finite.mean():.4f}  std {finite.std():.4f}  min {finite.min():.4f}  max {finite.max():.4f}")
    click.echo(f"invalid (+inf): {batch.n_invalid}  (non-finite positions {batch.n_nonfinite_positions}, "
               f"overlapping atoms {batch.n_overlapping}, non-finite energy {batch.n_nonfinite_energy})")
    if out is not None:
        atomic_save_npy(out, e.astype(np.float64))
        click.echo(f"wrote {out}  (float64 [{len(e)}], kT at {s.temperature} K)")


# ----------------------------------------------------------------- simulate
@main.command()
@click.option("--system", "system_name", required=True, help="Shipped system name or system folder.")
@click.option("--ns", type=float, required=True, help="Production length per replica (ns).")
@click.option("--replicas", type=int, default=1, show_default=True, help="Independent replicas, run in parallel processes.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Dataset folder (resumed if it exists).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--friction", type=float, default=None, help="Langevin friction (1/ps); default from system.yaml (md.friction_per_ps) or 1.")
@click.option("--save-every", type=float, default=1.0, show_default=True, help="Frame interval (ps).")
@click.option("--chunk", type=float, default=1000.0, show_default=True, help="Chunk length (ps): the unit of resuming.")
@click.option("--equilibrate", type=float, default=100.0, show_default=True, help="Equilibration before saving (ps).")
@click.option("--step", type=float, default=1.0, show_default=True, help="Time step (fs).")
@click.option("--platform", default=None, help="OpenMM platform (default: fastest for the system).")
def simulate(system_name, ns, replicas, out, seed, friction, save_every, chunk, equilibrate, step, platform) -> None:
    """Reference Langevin MD; run the same command again to resume an interrupted run."""
    from bgkit.simulate import simulate as run

    frames = run(system_name, out, ns=ns, replicas=replicas, seed=seed, friction_per_ps=friction,
                 save_every_ps=save_every, chunk_ps=chunk, equilibrate_ps=equilibrate, step_fs=step, platform=platform)
    click.echo(f"{out}: {frames} frames in {replicas} replica(s)")


if __name__ == "__main__":
    main()
