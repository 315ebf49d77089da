"""``bgkit simulate`` (reference MD) and ``bgkit data check``."""
from __future__ import annotations

import json
from pathlib import Path

import click

from bgkit.cli.common import _SYSTEM_HELP, _Group


@click.command()
@click.option("--system", "system_name", required=True, help=_SYSTEM_HELP)
@click.option("--ns", type=float, required=True, help="Production length per replica (ns).")
@click.option("--replicas", type=int, default=1, show_default=True, help="Independent replicas, run in parallel processes.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Dataset folder (resumed if it exists).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the Langevin noise (>= 0).")
@click.option("--friction", type=float, default=None, help="Langevin friction (1/ps); default from system.yaml (md.friction_per_ps) or 1.")
@click.option("--save-every", type=float, default=1.0, show_default=True, help="Frame interval (ps).")
@click.option("--chunk", type=float, default=1000.0, show_default=True, help="Chunk length (ps): the unit of resuming.")
@click.option("--equilibrate", type=float, default=100.0, show_default=True, help="Equilibration before saving (ps).")
@click.option("--step", type=float, default=1.0, show_default=True, help="Time step (fs).")
@click.option("--platform", default=None, help="OpenMM platform (default: fastest for the system).")
@click.option("--replica-exchange", "exchange", type=int, default=0, show_default=True,
              help="Parallel tempering over this many temperatures per replica (0: plain MD); "
                   "swaps every --save-every, only the system's temperature is saved.")
@click.option("--t-max", type=float, default=None, help="Highest replica-exchange temperature (K); geometric ladder.")
def simulate(system_name, ns, replicas, out, seed, friction, save_every, chunk, equilibrate, step, platform,
             exchange, t_max) -> None:
    """Reference Langevin MD; run the same command again to resume an interrupted run."""
    from bgkit.md.simulate import simulate as run
    from bgkit.systems import load_system

    frames = run(load_system(system_name), out, ns=ns, replicas=replicas, seed=seed, friction_per_ps=friction,
                 save_every_ps=save_every, chunk_ps=chunk, equilibrate_ps=equilibrate, step_fs=step, platform=platform,
                 exchange_temperatures=exchange, t_max=t_max)
    click.echo(f"{out}: {frames} frames in {replicas} replica(s)")
    if exchange >= 2:
        from bgkit.md.replica_exchange import acceptance

        for stats_path in sorted(out.glob("rep*/exchange.json")):
            stats = json.loads(stats_path.read_text())
            ladder = ", ".join(f"{t:.0f}" for t in stats["temperatures_K"])
            rates = ", ".join(f"{r:.2f}" for r in acceptance(stats))
            click.echo(f"{stats_path.parent.name}: temperatures {ladder} K; neighbour swap acceptance {rates}")


@click.group(cls=_Group)
def data() -> None:
    """Inspect reference MD datasets."""


@data.command("check")
@click.argument("dataset")
@click.option("--blocks", type=int, default=20, show_default=True, help="Contiguous blocks per half for the bootstrap.")
@click.option("--json", "as_json", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report as JSON.")
@click.option("--force", is_flag=True, help="Overwrite an existing --json file.")
def data_check(dataset: str, blocks: int, as_json: Path | None, force: bool) -> None:
    """Basin populations in the first and second half of DATASET (name or folder), with errors."""
    from bgkit.free_energy.states import ALA2_BASINS
    from bgkit.md.check import check_dataset
    from bgkit.outputs import check_output_file

    from bgkit.limits import check_int

    check_int("--blocks", blocks, 2, 100_000)
    if as_json is not None:
        check_output_file(as_json, force, option="--json")
    report = check_dataset(dataset, ALA2_BASINS, n_blocks=blocks)
    s = report["summary"]
    click.echo(f"{s['system']}: {s['simulated_ns']:.1f} ns in {s['replicas']} replica(s), {s['frames']} frames "
               f"every {s['frame_interval_ps']} ps  ({s['folder']})")
    click.echo(f"{'residue':8s} {'basin':8s} {'first half':>18s} {'second half':>18s}  agree")
    for row in report["basins"]:
        a, b = row["first_half"], row["second_half"]
        click.echo(f"{row['residue']:8s} {row['basin']:8s} {a[0]:9.5f} ± {a[1]:<7.5f} {b[0]:9.5f} ± {b[1]:<7.5f}  "
                   f"{'yes' if row['agree'] else 'NO'}")
    click.echo(f"all basins agree within 3 combined standard errors: {'yes' if report['all_agree'] else 'NO'}")
    if as_json:
        from bgkit.provenance import atomic_write_json

        atomic_write_json(report, as_json)
