"""``bgkit targets ot|reflow``, ``bgkit train``, ``bgkit teacher train`` and ``bgkit export``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from bgkit import BgkitError
from bgkit.cli.common import _COORDS, _SYSTEM_HELP, _Group, _check_workers, _note, _train_options, _with_options
from bgkit.flows import FLOW_ARCHITECTURES
from bgkit.train.objectives import REGULARISERS


@click.group(cls=_Group)
def targets() -> None:
    """Make RegFlow regression targets."""


@targets.command("ot")
@click.option("--system", "system_name", required=True, help=_SYSTEM_HELP)
@click.option("--data", default=None, help="Dataset folder (default: the md/ folder inside the system folder).")
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
    from bgkit.outputs import check_output_file
    from bgkit.train.molecular import make_ot_targets

    from bgkit.limits import MAX_COUNT, check_int

    check_int("--n", n, 2, MAX_COUNT)
    check_int("--block-size", block_size, 1, MAX_COUNT)
    check_int("--seed", seed, 0, 2**63 - 1)
    check_output_file(out, force, hint="pass --force to overwrite it")
    info = make_ot_targets(system_name, out, data=data, n=n, block_size=block_size, seed=seed, align=align,
                           coords=coords)
    click.echo(f"wrote {out}: {info['frames']} OT pairs (blocks of {block_size}) in {info['seconds']:.1f} s; "
               f"{len(info['aligned_groups'])} equivalent atom groups aligned ({info['relabelled_pairs']} pairs "
               f"relabelled)" + (f", {len(info['rejected_groups'])} groups rejected (energy not invariant)"
                                 if info["rejected_groups"] else ""))


@targets.command("reflow")
@click.option("--teacher", "teacher_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Teacher checkpoint (`bgkit teacher train`); any other proposal works too (its forward map).")
@click.option("--n", type=int, required=True, help="Number of pairs (rounded up to whole chunks).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Targets folder; an unfinished one made with the same settings is completed, a larger --n extends it.")
@click.option("--chunk-size", type=int, default=10000, show_default=True, help="Pairs per chunk file (the unit of resuming).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prior draws.")
@click.option("--method", default="rk4", show_default=True, help="torchdiffeq ODE method (rk4, dopri5, ...).")
@click.option("--steps", type=int, default=20, show_default=True, help="Steps of a fixed-step --method.")
@click.option("--batch-size", type=int, default=2000, show_default=True, help="Pairs integrated at once.")
@click.option("--n-val", type=int, default=2000, show_default=True, help="Held-out validation pairs.")
@click.option("--workers", type=int, default=1, show_default=True, help="Processes sharing the chunks.")
@click.option("--logdet", is_flag=True,
              help="Also store the teacher's log|det| of each pair (exact divergence, ~D times slower), for "
                   "`bgkit train --logdet-weight`.")
@click.option("--logdet-divergence", type=click.Choice(["exact", "hutchinson"]), default="exact", show_default=True,
              help="With --logdet: the exact divergence, or one Rademacher probe per pair (unbiased, ~2 nats of noise "
                   "per pair on ala2, ~30x cheaper).")
@click.option("--force", is_flag=True, help="Replace an existing --out made with other settings.")
def targets_reflow(teacher_path, n, out, chunk_size, seed, method, steps, batch_size, n_val, workers, logdet,
                   logdet_divergence, force) -> None:
    """Reflow pairs (prior sample -> teacher image), written in resumable chunks."""
    from bgkit.flows.cnf import ADAPTIVE_METHODS, FIXED_STEP_METHODS
    from bgkit.train.reflow import make_reflow_targets

    if method not in FIXED_STEP_METHODS + ADAPTIVE_METHODS:
        raise BgkitError(f"unknown --method {method!r}; choose one of {', '.join(FIXED_STEP_METHODS + ADAPTIVE_METHODS)}")
    if not teacher_path.is_file():
        raise BgkitError(f"teacher {teacher_path} does not exist")
    workers = _check_workers(workers)
    info = make_reflow_targets(teacher_path, out, n, chunk_size=chunk_size, seed=seed, method=method, steps=steps,
                               batch_size=batch_size, n_val=n_val, workers=workers, force=force, logdet=logdet,
                               logdet_divergence=logdet_divergence, note=_note)
    if not info["teacher_finished"]:
        click.echo(f"warning: {teacher_path} is the checkpoint of an unfinished training run", err=True)
    click.echo(f"wrote {out}: {info['n']} reflow pairs in {info['n_chunks']} chunks + {info['n_val']} validation pairs "
               f"({info['method']}, {info['steps']} steps"
               + (f", with teacher log-dets, {logdet_divergence} divergence)" if logdet else ")"))


def _run_training(system_name: str, arch: str, objective: str, out: Path, resume: bool, force: bool, hparams: str,
                  steps: int, config: dict, **kwargs) -> None:
    """Shared body of `bgkit train` and `bgkit teacher train`: check --out, parse --hparams, train, report."""
    from bgkit.outputs import check_output_file
    from bgkit.train.config import schedule_for
    from bgkit.train.molecular import train_proposal

    from bgkit.limits import MAX_COUNT, MAX_STEPS, check_int
    from bgkit.train.config import TrainConfig

    check_output_file(out, resume or force, hint="pass --resume to continue it or --force to replace it")
    try:
        hp = json.loads(hparams)
    except json.JSONDecodeError:
        raise BgkitError(f"--hparams is not valid JSON: {hparams}") from None
    if not isinstance(hp, dict):
        raise BgkitError(f"--hparams must be a JSON object, got {hparams}")
    if steps < 1:
        raise BgkitError(f"--steps must be >= 1, got {steps}")
    check_int("--steps", steps, 1, MAX_STEPS)
    if kwargs.get("max_frames") is not None:
        check_int("--max-frames", kwargs["max_frames"], 2, MAX_COUNT)  # a representation is fitted on >= 2 frames
    cfg = {**schedule_for(steps), **config}
    TrainConfig.from_dict({"objective": objective, **cfg}).validate()  # every number checked before any work
    from bgkit.flows import check_hparams

    check_hparams(arch, hp)
    if resume and out.is_file():  # the warm-up is part of the run; a larger --steps only stretches the cosine
        from bgkit.checkpoint import load_checkpoint

        cfg["warmup_steps"] = load_checkpoint(out)["config"].get("warmup_steps", cfg["warmup_steps"])
    kwargs["data"] = list(kwargs.get("data") or ()) or None
    result = train_proposal(system_name, arch, objective, out, hparams=hp, config_overrides=cfg, resume=resume,
                            **kwargs)
    m = result.metrics
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 wrote the checkpoint
        click.echo(f"wrote {out}: {m.get('steps')} steps, final train loss {m.get('final_train_loss'):.4g}, "
                   f"val loss {m.get('final_val_loss')}, {m.get('samples_per_s', 0):.0f} samples/s")


def _only_for(objective: str, applies: dict[str, tuple[str, ...]]) -> None:
    """Refuse an option given on the command line that the chosen --objective would ignore."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    for name, objectives in applies.items():
        if objective in objectives:
            continue
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            param = next(p for p in ctx.command.params if p.name == name)
            raise BgkitError(f"{param.opts[0]} applies to --objective {' or '.join(objectives)}, not {objective}: "
                             "leave it out")


def _objective_help(names: list[str]) -> str:
    from bgkit.train.objectives import OBJECTIVES

    return "; ".join(f"{n}: {OBJECTIVES[n].summary}" for n in names) + "."


def _choices(kind: str) -> list[str]:
    from bgkit.train.objectives import FLOW_OBJECTIVES, TEACHER_OBJECTIVES

    return list(TEACHER_OBJECTIVES if kind == "cnf" else FLOW_OBJECTIVES)


_ROTOR_AUGMENT = click.option(
    "--rotor-augment", is_flag=True,
    help="Relabel each training frame's methyl hydrogens by a random 120° rotation whenever it is drawn (an exact "
         "symmetry of u; the flow learns a relabelling-invariant density). Frame objectives only, not regflow.")


@click.command()
@click.option("--arch", type=click.Choice(list(FLOW_ARCHITECTURES)), required=True, help="Flow architecture.")
@click.option("--objective", type=click.Choice(_choices("flow")), required=True, help=_objective_help(_choices("flow")))
@click.option("--targets", "targets_path", default=None,
              help="RegFlow: an OT targets file (`bgkit targets ot`) or a reflow targets folder (`bgkit targets reflow`).")
@click.option("--coords", type=click.Choice(_COORDS), default=None,
              help="Flow space for frame objectives (default cartesian); RegFlow takes it from --targets.")
@click.option("--init", "init", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Start from this proposal's weights and coordinates (same --arch; its hyperparameters are used).")
@click.option("--kl-weight", type=float, default=1.0, show_default=True, help="kl: weight of the reverse-KL term.")
@click.option("--energy-workers", type=int, default=1, show_default=True,
              help="kl: OpenMM worker processes for the energies and forces of flow samples.")
@click.option("--reg", type=click.Choice([r or "none" for r in REGULARISERS]), default="fb", show_default=True,
              help="RegFlow regulariser: forward-backward inverse consistency (fb), squared log-det (logdet) or none.")
@click.option("--reg-weight", type=float, default=1e-6, show_default=True, help="Weight of the --reg term.")
@click.option("--noise", type=float, default=0.0, show_default=True, help="RegFlow target noise std (flow units).")
@click.option("--logdet-weight", type=float, default=0.0, show_default=True,
              help="RegFlow on reflow targets made with --logdet: weight of the squared error between the flow's and "
                   "the teacher's log|det| of each pair (nats^2).")
@_ROTOR_AUGMENT
@_with_options(_train_options)
def train(arch, objective, targets_path, coords, init, kl_weight, energy_workers, reg, reg_weight, noise, logdet_weight,
          rotor_augment, system_name, data, steps, batch_size, lr, hparams, max_frames, seed, max_seconds, device, out,
          resume, force) -> None:
    """Train a flow; the checkpoint --out is a self-contained proposal."""
    _only_for(objective, {"kl_weight": ("kl",), "energy_workers": ("kl",), "reg": ("regflow",),
                          "reg_weight": ("regflow",), "noise": ("regflow",), "targets_path": ("regflow",),
                          "max_frames": ("mle", "kl")})
    if energy_workers < 1:
        raise BgkitError(f"--energy-workers must be >= 1, got {energy_workers}")
    energy_workers = _check_workers(energy_workers, "--energy-workers")
    if init is not None and init.resolve() == out.resolve():
        raise BgkitError("--init and --out are the same file: write the new run to another --out")
    if logdet_weight and objective != "regflow":
        raise BgkitError(f"--logdet-weight applies to --objective regflow (on reflow targets made with --logdet), "
                         f"not {objective}")
    config = {"batch_size": batch_size, "lr": lr, "reg": None if reg == "none" else reg, "reg_weight": reg_weight,
              "noise_std": noise, "logdet_weight": logdet_weight, "seed": seed, "device": device,
              "max_seconds": max_seconds}
    if objective == "kl":
        config["kl_weight"] = kl_weight
    _run_training(system_name, arch, objective, out, resume, force, hparams, steps, config, targets=targets_path,
                  data=data, max_frames=max_frames, coords=coords, init=init, energy_workers=energy_workers,
                  rotor_augment=rotor_augment)


@click.group(cls=_Group)
def teacher() -> None:
    """Continuous-flow teachers (flow matching) for reflow targets; a teacher is also a proposal."""


@teacher.command("train")
@click.option("--objective", type=click.Choice(_choices("cnf")), default="cfm", show_default=True,
              help=_objective_help(_choices("cnf")))
@click.option("--coords", type=click.Choice(_COORDS), default="internal", show_default=True,
              help="Flow space of the teacher (and of the students regressed onto its reflow targets).")
@click.option("--wcfm-kappa", type=float, default=1.0, show_default=True,
              help="wcfm: temperature eps = kappa * sqrt(D) of the pair weights exp(-|x1 - x0| / eps).")
@click.option("--fdm-weight", type=float, default=0.01, show_default=True,
              help="fdm: weight of the conditional continuity residual (the CFM term has weight 1).")
@_ROTOR_AUGMENT
@_with_options(_train_options)
def teacher_train(objective, coords, wcfm_kappa, fdm_weight, rotor_augment, system_name, data, steps, batch_size, lr, hparams,
                  max_frames, seed, max_seconds, device, out, resume, force) -> None:
    """Train a CNF teacher by flow matching on the system's MD frames; --out is a checkpoint and a proposal."""
    _only_for(objective, {"wcfm_kappa": ("wcfm",), "fdm_weight": ("fdm",)})
    config = {"batch_size": batch_size, "lr": lr, "seed": seed, "device": device, "max_seconds": max_seconds,
              "wcfm_kappa": wcfm_kappa, "fdm_cdm_weight": fdm_weight}
    _run_training(system_name, "cnf", objective, out, resume, force, hparams, steps, config, data=data,
                  max_frames=max_frames, coords=coords, rotor_augment=rotor_augment)


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="metrics.json of `bgkit evaluate` to store in the proposal.")
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
@click.option("--unfinished", is_flag=True, help="Export the checkpoint of an interrupted training run anyway.")
def export(checkpoint: Path, out: Path, metrics_path: Path | None, force: bool, unfinished: bool) -> None:
    """Slim copy of a training CHECKPOINT for shipping (EMA weights + metadata, no optimiser state)."""
    from bgkit.outputs import check_output_file
    from bgkit.proposal import export_proposal

    if not checkpoint.is_file():
        raise BgkitError(f"checkpoint {checkpoint} does not exist")
    check_output_file(out, force, option="OUT")
    metrics = None
    if metrics_path is not None:
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BgkitError(f"cannot read metrics {metrics_path}: {exc}") from None
    export_proposal(checkpoint, out, metrics=metrics, unfinished=unfinished)
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
