"""``bgkit fep``: free-energy difference between two conformational states (:mod:`bgkit.fep_workflow`).

The system is resolved here, once, and passed on as a :class:`bgkit.systems.System`."""
from __future__ import annotations

from pathlib import Path

import click

from bgkit import BgkitError
from bgkit.cli.common import _COORDS, _SYSTEM_HELP, _check_workers
from bgkit.coords import DEFAULT_COORDS

_STATES_HELP = ("Named states of a dipeptide (degrees; an arc runs counter-clockwise from its first to its second "
                "value): C7eq_beta phi [-180, 0), psi [50, -120) through 180; beta_planar phi [-180, -120), "
                "psi [120, -150) (inside C7eq_beta); alpha_R phi [-180, 0), psi [-120, 50); alpha_L phi [0, 180). "
                "Others: --states FILE.")


@click.command(help="Free-energy difference ΔF = F_to − F_from (kT and kcal/mol) between two states by counting "
                    "in MD, reweighting the proposal and targeted FEP with a learned map (EXP both ways, BAR). "
                    + _STATES_HELP)
@click.option("--system", "system_name", required=True, help=_SYSTEM_HELP)
@click.option("--from", "state_from", required=True, help="State A (a name, see above, or one of --states).")
@click.option("--to", "state_to", required=True, help="State B.")
@click.option("--states", "states_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML file of states: 'NAME: {phi1: [LO, HI], psi1: [LO, HI]}' in degrees, on backbone dihedrals "
                   "phi<i>/psi<i> (i: 0-based residue index; phi/psi where one residue has both; a label the system "
                   "lacks is reported with the system's list).")
@click.option("--data", default=None, help="Dataset for counting and TFEP (default: the md/ folder inside the system folder).")
@click.option("--reference", default=None,
              help="Reference dataset for the reference ΔF (default: the system's replica-exchange data md_rex "
                   "where shipped, else --data).")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Proposal for reweighting (default: the system's shipped proposal.pt).")
@click.option("--n", "n_samples", type=int, default=10000, show_default=True, help="Proposal samples for reweighting.")
@click.option("--methods", default=",".join(("counting", "reweighting", "tfep")), show_default=True,
              help="Comma-separated subset of counting, reweighting, tfep.")
@click.option("--map", "map_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Use this TFEP map (a map.pt of an earlier run) instead of training one.")
@click.option("--coords", type=click.Choice(_COORDS), default=DEFAULT_COORDS, show_default=True,
              help="Flow space of the map.")
@click.option("--map-steps", type=int, default=1000, show_default=True, help="RegFlow steps of the map.")
@click.option("--map-threshold", type=float, default=1.0, show_default=True,
              help="The map moves the flow coordinates whose distributions in the two states differ by more than "
                   "this (1-D Wasserstein-1 distance, flow units: standardised bonds/angles, radians), at least two.")
@click.option("--map-seconds", type=float, default=None, help="Stop map training after this wall time (s).")
@click.option("--map-frames", type=int, default=20000, show_default=True,
              help="At most this many train-split frames per state for the map (evenly spaced).")
@click.option("--work-frames", type=int, default=5000, show_default=True,
              help="At most this many held-out frames (validation and test splits) per state for the works "
                   "(evenly spaced).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of sampling, map training, bootstrap.")
@click.option("--workers", type=int, default=None, help="Energy worker processes, >= 1 (default: all cores).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder, new or one bgkit wrote (default: bgkit-fep-SYSTEM-FROM-TO).")
@click.option("--force", is_flag=True, help="Replace an existing --out folder that bgkit wrote (never another).")
def fep(system_name, state_from, state_to, states_file, data, reference, model, n_samples, methods, map_path, coords,
        map_steps, map_threshold, map_seconds, map_frames, work_frames, seed, workers, out, force) -> None:
    from bgkit.fep_workflow import run_fep
    from bgkit.limits import MAX_COUNT, MAX_STEPS, check_int
    from bgkit.sample import check_sizes
    from bgkit.systems import load_system

    workers = _check_workers(workers)
    for name, value, high in (("--map-steps", map_steps, MAX_STEPS), ("--map-frames", map_frames, MAX_COUNT),
                              ("--work-frames", work_frames, MAX_COUNT)):
        if value < 1:
            raise BgkitError(f"{name} must be >= 1, got {value}")
        check_int(name, value, 1, high)
    check_int("--seed", seed, 0, 2**63 - 1)
    if not (map_threshold >= 0 and map_threshold < float("inf")):
        raise BgkitError(f"--map-threshold must be a finite number >= 0, got {map_threshold}")
    if map_seconds is not None and not (0 < map_seconds < float("inf")):
        raise BgkitError(f"--map-seconds must be a finite number > 0, got {map_seconds}")
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    system = load_system(system_name)
    out = out or Path(f"bgkit-fep-{system.name}-{state_from}-{state_to}")
    if "reweighting" in chosen:  # the proposal samples are held in memory
        check_sizes(n_samples, min(n_samples, 2000) if n_samples >= 1 else 1, n_atoms=system.n_atoms)
    config = {"steps": map_steps, **({"max_seconds": map_seconds} if map_seconds is not None else {})}
    result = run_fep(system, state_from, state_to, out, states_file=states_file, data=data, reference=reference,
                     model=str(model) if model else None, n_samples=n_samples,
                     map_path=str(map_path) if map_path else None, coords=coords, map_config=config,
                     map_threshold=map_threshold,
                     map_frames=map_frames, work_frames=work_frames, methods=chosen, seed=seed, workers=workers,
                     force=force)
    click.echo(f"ΔF({result['from']} → {result['to']}) = F_to − F_from, kT (kcal/mol) ± error:")
    rows = [("reference", result["reference"])] + list(result["estimates"].items())
    for name, row in rows:
        if row.get("dF_kT") is None:
            click.echo(f"  {name:<17} no estimate")
        else:
            click.echo(f"  {name:<17} {row['dF_kT']:8.3f} ± {row['dF_err_kT']:.3f}  "
                       f"({row['dF_kcal_mol']:.3f} ± {row['dF_err_kcal_mol']:.3f})")
        for flag in row.get("flags", []):
            click.echo(f"warning: {name}: {flag}", err=True)
    click.echo(f"wrote {out}/ (fep.json" + (", works.png, works.npz" if "tfep" in chosen else "") + ")")
