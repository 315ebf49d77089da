"""``bgkit systems list|show|build`` and ``bgkit energy``."""
from __future__ import annotations

from pathlib import Path

import click

from bgkit.cli.common import _SYSTEM_HELP, _Group, _check_workers, _dump


@click.group(cls=_Group)
def systems() -> None:
    """List, show and build molecular systems."""


@systems.command("list")
def systems_list() -> None:
    """The shipped systems, one line each."""
    from bgkit.systems import load_system, shipped_systems

    for name in shipped_systems():
        s = load_system(name)
        click.echo(f"{name:8s} {s.n_atoms:4d} atoms  {s.temperature:6.1f} K  {' + '.join(s.forcefield_names):44s} {s.spec.description}")


@systems.command("show")
@click.argument("system")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def systems_show(system: str, as_json: bool) -> None:
    """Details of SYSTEM (a shipped name or a system folder)."""
    from bgkit.systems import load_system

    s = load_system(system)
    info = s.summary()
    if as_json:
        click.echo(_dump(info))
        return
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
            res = s.topology.atom(quad[1]).residue  # the residue of the second atom, for φ and ψ alike
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
    from bgkit.outputs import check_output_file
    from bgkit.systems import load_system

    if out is not None:
        check_output_file(out, force=True)  # a differing existing file still needs --force (write_built_pdb)
    path, changed = write_built_pdb(load_system(system), out, force)
    click.echo(f"{'wrote' if changed else 'unchanged'} {path}")


@click.command()
@click.option("--system", "system_name", required=True, help=_SYSTEM_HELP)
@click.argument("traj", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write energies (kT) as a .npy array [n_frames].")
@click.option("--workers", type=int, default=None, help="Energy worker processes, >= 1 (default: all cores).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
def energy(system_name: str, traj: Path, out: Path | None, workers: int | None, force: bool) -> None:
    """Reduced energies u/kT of every frame of TRAJ (any format mdtraj reads)."""
    import numpy as np

    from bgkit.energy import EnergyModel
    from bgkit.io import atomic_save_npy, load_trajectory
    from bgkit.outputs import check_output_file
    from bgkit.systems import load_system

    workers = _check_workers(workers)
    if out is not None:
        check_output_file(out, force, hint="pass --force to overwrite it")
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
