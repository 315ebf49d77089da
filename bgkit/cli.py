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


def _check_workers(workers: int | None) -> None:
    """--workers: None means all cores; anything else must be a positive number of processes."""
    if workers is not None and workers < 1:
        raise BgkitError(f"--workers must be >= 1 (omit it to use all cores), got {workers}")


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

    from bgkit.outputs import check_output_file

    if out is not None:
        check_output_file(out, force=True)  # a differing existing file still needs --force (write_built_pdb)
    path, changed = write_built_pdb(load_system(system), out, force)
    click.echo(f"{'wrote' if changed else 'unchanged'} {path}")


# ------------------------------------------------------------------- energy
@main.command()
@click.option("--system", "system_name", required=True, help="Shipped system name or system folder.")
@click.argument("traj", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write energies (kT) as a .npy array [n_frames].")
@click.option("--workers", type=int, default=None, help="Energy worker processes, >= 1 (default: all cores).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
def energy(system_name: str, traj: Path, out: Path | None, workers: int | None, force: bool) -> None:
    """Reduced energies u/kT of every frame of TRAJ (any format mdtraj reads)."""
    import numpy as np

    from bgkit.energy import EnergyModel
    from bgkit.io import load_trajectory
    from bgkit.io import atomic_save_npy
    from bgkit.systems import load_system

    from bgkit.outputs import check_output_file

    _check_workers(workers)
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


# ----------------------------------------------------------------- simulate
@main.command()
@click.option("--system", "system_name", required=True, help="Shipped system name or system folder.")
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
    from bgkit.simulate import simulate as run

    frames = run(system_name, out, ns=ns, replicas=replicas, seed=seed, friction_per_ps=friction,
                 save_every_ps=save_every, chunk_ps=chunk, equilibrate_ps=equilibrate, step_fs=step, platform=platform,
                 exchange_temperatures=exchange, t_max=t_max)
    click.echo(f"{out}: {frames} frames in {replicas} replica(s)")
    if exchange >= 2:
        from bgkit.replica_exchange import acceptance

        for stats_path in sorted(out.glob("rep*/exchange.json")):
            stats = json.loads(stats_path.read_text())
            ladder = ", ".join(f"{t:.0f}" for t in stats["temperatures_K"])
            rates = ", ".join(f"{r:.2f}" for r in acceptance(stats))
            click.echo(f"{stats_path.parent.name}: temperatures {ladder} K; neighbour swap acceptance {rates}")


# -------------------------------------------------------------------- data
@main.group(cls=_Group)
def data() -> None:
    """Inspect reference MD datasets."""


@data.command("check")
@click.argument("dataset")
@click.option("--blocks", type=int, default=20, show_default=True, help="Contiguous blocks per half for the bootstrap.")
@click.option("--json", "as_json", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report as JSON.")
@click.option("--force", is_flag=True, help="Overwrite an existing --json file.")
def data_check(dataset: str, blocks: int, as_json: Path | None, force: bool) -> None:
    """Basin populations in the first and second half of DATASET (name or folder), with errors."""
    from bgkit.datacheck import check_dataset
    from bgkit.outputs import check_output_file

    if as_json is not None:
        check_output_file(as_json, force, option="--json")
    report = check_dataset(dataset, n_blocks=blocks)
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


# ------------------------------------------------------------------ training
@main.group(cls=_Group)
def targets() -> None:
    """Make RegFlow regression targets."""


_COORDS = ["cartesian", "internal"]


@targets.command("ot")
@click.option("--system", "system_name", required=True, help="Shipped system name or system folder.")
@click.option("--data", default=None, help="Dataset folder (default: the system's shipped data).")
@click.option("--n", type=int, default=None, help="Use this many train frames (evenly spaced; default all).")
@click.option("--block-size", type=int, default=4096, show_default=True, help="Exact OT per block of this many pairs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prior draws.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Targets file to write (.npz).")
@click.option("--align/--no-align", default=True, show_default=True,
              help="Cartesian only: relabel equivalent terminal atoms (methyl H, ...) of each target to its prior draw.")
@click.option("--coords", type=click.Choice(_COORDS), default="cartesian", show_default=True,
              help="Flow space: centred Cartesian, or internal (bonds, angles, torsions; OT cost wrapped on torsions).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
def targets_ot(system_name, data, n, block_size, seed, out, force, align, coords) -> None:
    """Exact optimal-transport pairs (prior sample -> training frame)."""
    from bgkit.train.molecular import make_ot_targets

    from bgkit.outputs import check_output_file

    check_output_file(out, force, hint="pass --force to overwrite it")
    info = make_ot_targets(system_name, out, data=data, n=n, block_size=block_size, seed=seed, align=align,
                           coords=coords)
    click.echo(f"wrote {out}: {info['frames']} OT pairs (blocks of {block_size}) in {info['seconds']:.1f} s; "
               f"{len(info['aligned_groups'])} equivalent atom groups aligned ({info['relabelled_pairs']} pairs "
               f"relabelled)" + (f", {len(info['rejected_groups'])} groups rejected (energy not invariant)"
                                 if info["rejected_groups"] else ""))


@main.command()
@click.option("--system", "system_name", required=True, help="Shipped system name or system folder.")
@click.option("--arch", type=click.Choice(["realnvp", "nsf", "tarflow"]), required=True, help="Flow architecture.")
@click.option("--objective", type=click.Choice(["regflow", "mle", "kl"]), required=True,
              help="RegFlow (regression onto --targets), maximum likelihood on the data (mle), or maximum "
                   "likelihood + --kl-weight x reverse KL to the Boltzmann distribution (kl; needs energies and "
                   "forces each step, best started from an mle flow with --init).")
@click.option("--init", "init", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Start from this proposal's weights and coordinates (same --arch; its hyperparameters are used).")
@click.option("--kl-weight", type=float, default=1.0, show_default=True, help="kl: weight of the reverse-KL term.")
@click.option("--energy-workers", type=int, default=1, show_default=True,
              help="kl: OpenMM worker processes for the energies and forces of flow samples.")
@click.option("--targets", "targets_path", default=None, help="Targets file (RegFlow).")
@click.option("--coords", type=click.Choice(_COORDS), default=None,
              help="Flow space for MLE (default cartesian); RegFlow takes it from --targets.")
@click.option("--data", default=None, help="Dataset folder (default: the system's shipped data).")
@click.option("--steps", type=int, default=20000, show_default=True, help="Total optimiser steps (a --resume continues up to this count).")
@click.option("--batch-size", type=int, default=512, show_default=True, help="Training pairs or frames per step.")
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Peak learning rate (AdamW; linear warm-up, then cosine decay).")
@click.option("--reg", type=click.Choice(["fb", "logdet", "none"]), default="fb", show_default=True,
              help="RegFlow regulariser: forward-backward inverse consistency (fb), squared log-det (logdet) or none.")
@click.option("--reg-weight", type=float, default=1e-6, show_default=True, help="Weight of the --reg term.")
@click.option("--noise", type=float, default=0.0, show_default=True, help="Target noise std (flow units).")
@click.option("--hparams", default="{}", help='Architecture hyperparameters as JSON, e.g. \'{"hidden": 128}\'.')
@click.option("--max-frames", type=int, default=None, help="MLE: use at most this many train frames.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, batches and noise.")
@click.option("--max-seconds", type=float, default=None,
              help="Stop (with a checkpoint) after this much wall time (s), even before --steps; counted over "
                   "all runs of a checkpoint, so a --resume continues the same budget.")
@click.option("--device", default=None, help="torch device (default: cuda if available).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Checkpoint file to write (.pt), also a proposal.")
@click.option("--resume", is_flag=True, help="Continue the run in --out.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
def train(system_name, arch, objective, init, kl_weight, energy_workers, targets_path, coords, data, steps,
          batch_size, lr, reg, reg_weight, noise, hparams, max_frames, seed, max_seconds, device, out, resume,
          force) -> None:
    """Train a flow; the checkpoint --out is a self-contained proposal."""
    from bgkit.train.molecular import train_proposal

    from bgkit.outputs import check_output_file

    check_output_file(out, resume or force, hint="pass --resume to continue it or --force to replace it")
    try:
        hp = json.loads(hparams)
    except json.JSONDecodeError:
        raise BgkitError(f"--hparams is not valid JSON: {hparams}") from None
    cfg = {"steps": steps, "batch_size": batch_size, "lr": lr, "reg": None if reg == "none" else reg,
           "reg_weight": reg_weight, "noise_std": noise, "seed": seed, "device": device,
           "warmup_steps": min(500, steps // 10), "val_every": max(1, min(500, steps // 10)),
           "ckpt_every": max(1, min(1000, steps // 5)), "max_seconds": max_seconds}
    if objective == "kl":
        cfg["kl_weight"] = kl_weight
    if energy_workers < 1:
        raise BgkitError(f"--energy-workers must be >= 1, got {energy_workers}")
    if init is not None and init.resolve() == out.resolve():
        raise BgkitError("--init and --out are the same file: write the new run to another --out")
    result = train_proposal(system_name, arch, objective, out, targets=targets_path, data=data,
                            max_frames=max_frames, hparams=hp, config_overrides=cfg, resume=resume, coords=coords,
                            init=init, energy_workers=energy_workers)
    m = result.metrics
    click.echo(f"wrote {out}: {m.get('steps')} steps, final train loss {m.get('final_train_loss'):.4g}, "
               f"val loss {m.get('final_val_loss')}, {m.get('samples_per_s', 0):.0f} samples/s")


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="metrics.json of `bgkit evaluate` to store in the proposal.")
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
@click.option("--unfinished", is_flag=True, help="Export the checkpoint of an interrupted training run anyway.")
def export(checkpoint: Path, out: Path, metrics_path: Path | None, force: bool, unfinished: bool) -> None:
    """Slim copy of a training CHECKPOINT for shipping (EMA weights + metadata, no optimiser state)."""
    from bgkit.train.molecular import export_proposal

    if not checkpoint.is_file():
        raise BgkitError(f"checkpoint {checkpoint} does not exist")
    from bgkit.outputs import check_output_file

    check_output_file(out, force, option="OUT")
    metrics = None
    if metrics_path is not None:
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BgkitError(f"cannot read metrics {metrics_path}: {exc}") from None
    export_proposal(checkpoint, out, metrics=metrics, unfinished=unfinished)
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


# ---------------------------------------------------------------- sampling
def _proposal_for(system_name: str, model: Path | None):
    from bgkit.proposal import Proposal
    from bgkit.systems import load_system

    system = load_system(system_name)
    path = model or system.folder / "proposal.pt"
    if model is None and not path.is_file():
        raise BgkitError(f"system '{system.name}' ships no proposal ({path} missing): pass --model")
    proposal = Proposal.load(path, system=system)
    note = proposal.unfinished_note()
    if note:
        click.echo("warning: " + note, err=True)
    return system, proposal


def _default_out(prefix: str) -> Path:
    import datetime

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(f"{prefix}-{stamp}")
    k = 1
    while out.exists():
        k += 1
        out = Path(f"{prefix}-{stamp}-{k}")
    return out


_sample_options = [
    click.option("--system", "system_name", required=True, help="Shipped system name or system folder."),
    click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Proposal checkpoint (default: the system's shipped proposal.pt)."),
    click.option("--n", type=int, default=10000, show_default=True, help="Number of samples."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prior draws and the resampling."),
    click.option("--batch-size", type=int, default=2000, show_default=True,
                 help="Samples drawn per flow batch (energies of one batch run while the next is drawn)."),
    click.option("--device", default="cpu", show_default=True, help="torch device for the flow."),
    click.option("--workers", type=int, default=None, help="Energy worker processes, >= 1 (default: all cores)."),
    click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="Output folder, new or one bgkit wrote (default: a new timestamped folder "
                      "bgkit-COMMAND-SYSTEM-YYYYmmdd-HHMMSS here)."),
    click.option("--force", is_flag=True, help="Replace an existing --out folder that bgkit wrote (never another)."),
]


def _with_options(options):
    def wrap(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return wrap


def _sample_out(out: Path | None, force: bool, prefix: str) -> Path:
    """The --out folder of sample/evaluate (default: a new timestamped one), checked before any work."""
    from bgkit.outputs import check_output_folder

    return check_output_folder(out or _default_out(prefix), force)


def _draw(system_name, model, n, seed, batch_size, device, workers, out, force, prefix):
    from bgkit.sample import draw

    if n < 1:
        raise BgkitError(f"--n must be a positive number of samples, got {n}")
    if batch_size < 1:
        raise BgkitError(f"--batch-size must be positive, got {batch_size}")
    _check_workers(workers)
    out = _sample_out(out, force, prefix)
    system, proposal = _proposal_for(system_name, model)
    proposal.flow.to(device)
    result = draw(proposal, system, n=n, batch_size=batch_size, seed=seed, n_workers=workers)
    return system, proposal, result, out


LOW_ESS_FRACTION = 0.01  #: below this ESS/N, sample and evaluate warn that reweighted results are unreliable


def _print_summary(result) -> None:
    s = result.summary()
    click.echo(f"samples        {s['n']}")
    click.echo(f"ESS            {s['ess']:.1f}  ({s['ess_fraction']:.4f} of N; {s['ess_fraction_clipped']:.4f} after clipping)")
    click.echo(f"non-finite     {s['n_nonfinite']} zero-weight samples (invalid energy {s['n_invalid_energy']}, "
               f"wrong chirality {s['n_wrong_chirality']})")
    click.echo(f"clipped        {s['n_clipped']} largest log-weights ({100 * s['clip_fraction']:.2f} %)")
    click.echo(f"time           {s['seconds']:.2f} s  ({s['samples_per_second']:.0f} samples/s; flow {s['flow_seconds']:.2f} s, "
               f"waiting for energies {s['energy_seconds']:.2f} s)")
    if s["ess_fraction"] < LOW_ESS_FRACTION:
        click.echo(f"warning: ESS/N {s['ess_fraction']:.4f} < {LOW_ESS_FRACTION}: a few samples carry the weight; "
                   "reweighted averages and free energies from these samples are unreliable", err=True)


@main.command()
@_with_options(_sample_options)
def sample(system_name, model, n, seed, batch_size, device, workers, out, force) -> None:
    """Draw samples from a proposal, with log q, energies and importance weights."""
    from bgkit.sample import write_sample_folder

    system, proposal, result, out = _draw(system_name, model, n, seed, batch_size, device, workers, out, force,
                                          f"bgkit-sample-{system_name if '/' not in system_name else 'custom'}")
    if result is None:  # a non-zero rank under torchrun
        return
    _print_summary(result)
    write_sample_folder(result, system, out, force, extra={"model": str(proposal.path), "seed": seed})
    click.echo(f"wrote {out}/ (samples.h5, weights.npz, summary.json)")


@main.command()
@_with_options(_sample_options)
@click.option("--data", default=None, help="Reference dataset (default: the system's shipped data); its test split is used.")
def evaluate(system_name, model, n, seed, batch_size, device, workers, out, force, data) -> None:
    """Sample, then compare with the system's MD test split: metrics.json and figures."""
    from bgkit.data import load_dataset
    from bgkit.evaluate import compute_metrics, write_figures, write_metrics
    from bgkit.outputs import add_to_marker
    from bgkit.sample import write_sample_folder
    from bgkit.systems import load_system

    prefix = f"bgkit-evaluate-{system_name if '/' not in system_name else 'custom'}"
    out = _sample_out(out, force, prefix)  # fail before reading data or sampling, not after
    dataset = load_dataset(data or load_system(system_name).folder)
    if dataset.meta["topology_hash"] != load_system(system_name).topology_hash:
        raise BgkitError(f"dataset {dataset.folder} belongs to another topology than system '{system_name}'")
    dataset.xyz  # read (and check) the data now
    system, proposal, result, out = _draw(system_name, model, n, seed, batch_size, device, workers, out, force, prefix)
    if result is None:
        return
    _print_summary(result)
    metrics = compute_metrics(result, proposal, dataset, seed=seed)
    write_sample_folder(result, system, out, force, extra={"model": str(proposal.path), "seed": seed},
                        kind="bgkit.evaluation",
                        more_files=("metrics.json", "ramachandran.png", "energies.png", "log_weights.png"))
    write_metrics(metrics, out)
    add_to_marker(out, ["metrics.json", *write_figures(result, dataset, out)])
    for key in ("ess", "ess_fraction", "ess_fraction_clipped", "e_w2_proposal", "e_w2_resampled",
                "e_w2_resampled_unclipped", "t_w2_proposal", "t_w2_resampled", "t_w2_resampled_unclipped",
                "nll_test", "samples_per_second"):
        click.echo(f"{key:20s} {metrics[key]:.4f}")
    if metrics.get("noise_floor"):
        f = metrics["noise_floor"]
        click.echo(f"{'noise floor':20s} E-W2 {f['e_w2']:.4f} kT, T-W2 {f['t_w2']:.4f} rad "
                   f"(MD test split vs {f['frames']} other MD frames)")
    click.echo(f"wrote {out}/ (metrics.json, ramachandran.png, energies.png, log_weights.png, samples)")


# -------------------------------------------------------------------- plots
@main.group(cls=_Group)
def plot() -> None:
    """Draw single figures from datasets or sample folders."""


_PLOT_OUT_HELP = "Figure file: .png, or .pdf (written with a .png beside it)."
_PLOT_FORCE_HELP = "Overwrite an existing --out file."


def _check_plot_out(out: Path, force: bool) -> None:
    """--out of a plot command: .png or .pdf (+ .png), each new or replaced only with --force."""
    from bgkit.outputs import check_output_file

    if out.suffix.lower() not in (".png", ".pdf"):
        raise BgkitError(f"--out must end in .png or .pdf, got {out.name}")
    check_output_file(out, force)
    if out.suffix.lower() == ".pdf":
        check_output_file(out.with_suffix(".png"), force, hint="a .pdf is written with a .png beside it: "
                                                                  "pass --force to replace it")


@plot.command("ramachandran")
@click.argument("source")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help=_PLOT_OUT_HELP)
@click.option("--reweighted", is_flag=True, help="Sample folder: weight samples by their importance weights.")
@click.option("--force", is_flag=True, help=_PLOT_FORCE_HELP)
def plot_ramachandran(source: str, out: Path, reweighted: bool, force: bool) -> None:
    """Ramachandran free energy (kT) of a dataset (name or folder) or a sample folder; every φ/ψ pair."""
    _check_plot_out(out, force)
    from bgkit import plots
    from bgkit.evaluate import pairs

    xyz, system, weights, label = _positions_of(source, reweighted)
    phi, psi, labels = pairs(xyz, system)
    plots.ramachandran_panels({label: (phi, psi) if weights is None else (phi, psi, weights)}, out,
                              title=f"{system.name}: {label}", pair_labels=labels)
    click.echo(f"wrote {out}")


@plot.command("energies")
@click.argument("sample_folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help=_PLOT_OUT_HELP)
@click.option("--force", is_flag=True, help=_PLOT_FORCE_HELP)
def plot_energies(sample_folder: Path, out: Path, force: bool) -> None:
    """Energy histograms (MD test split, proposal, reweighted) of a sample folder."""
    _check_plot_out(out, force)
    import numpy as np

    from bgkit import plots
    from bgkit.data import load_dataset
    from bgkit.sample import load_sample_folder
    from bgkit.systems import load_system

    d = load_sample_folder(sample_folder)
    data = {}
    try:
        ds = load_dataset(load_system(d["summary"]["system"]).folder)
        data["reference MD"] = ds.energies_kt[ds.split_indices()["test"]]
    except BgkitError:
        pass
    lw = d["log_w_clipped"]
    data["proposal"] = d["energy_kt"]
    data["reweighted"] = (d["energy_kt"], np.exp(lw - lw[np.isfinite(lw)].max()))
    plots.energy_histograms(data, out, title=f"{d['summary']['system']}: energies")
    click.echo(f"wrote {out}")


@plot.command("weights")
@click.argument("sample_folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help=_PLOT_OUT_HELP)
@click.option("--force", is_flag=True, help=_PLOT_FORCE_HELP)
def plot_weights(sample_folder: Path, out: Path, force: bool) -> None:
    """Log-weight histogram of a sample folder."""
    _check_plot_out(out, force)
    from bgkit import plots
    from bgkit.sample import load_sample_folder

    d = load_sample_folder(sample_folder)
    plots.log_weight_histogram(d["log_w"], out, title=f"{d['summary']['system']}: log-weights")
    click.echo(f"wrote {out}")


def _positions_of(source: str, reweighted: bool):
    """(xyz, system, weights or None, label) of a dataset or a sample folder."""
    import numpy as np

    from bgkit.data import load_dataset

    path = Path(source)
    if (path / "summary.json").is_file():
        from bgkit.io import load_trajectory
        from bgkit.sample import load_sample_folder
        from bgkit.systems import load_system

        d = load_sample_folder(path)
        system = load_system(d["summary"]["system"])
        xyz = load_trajectory(d["samples"], system)  # topology checked against the system
        if reweighted:
            lw = d["log_w_clipped"]
            return xyz, system, np.exp(lw - lw[np.isfinite(lw)].max()), "reweighted"
        return xyz, system, None, "proposal"
    ds = load_dataset(source)
    return ds.xyz, ds.system, None, "reference MD"


if __name__ == "__main__":
    main()
