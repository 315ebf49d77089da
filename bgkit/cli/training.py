"""``bgkit targets ot|reflow``, ``bgkit train``, ``bgkit teacher train`` and ``bgkit export``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from bgkit import BgkitError
from bgkit.cli.common import (_COORDS, _SYSTEM_HELP, _TRAIN_DEFAULTS, _check_workers, _config_option, _Group, _note,
                              _rank, _train_options, _with_options)
from bgkit.coords import DEFAULT_COORDS
from bgkit.flows import FLOW_ARCHITECTURES
from bgkit.train.objectives import (DEFAULT_TEACHER_OBJECTIVE, FLOW_OBJECTIVES, OBJECTIVES, REGULARISERS,
                                    TEACHER_OBJECTIVES, Objective, objective_options, option_owners)


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
@click.option("--coords", type=click.Choice(_COORDS), default=DEFAULT_COORDS, show_default=True,
              help="Flow space: centred Cartesian, or internal (bonds, angles, torsions; OT cost wrapped on torsions).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
def targets_ot(system_name, data, n, block_size, seed, out, force, align, coords) -> None:
    """Exact optimal-transport pairs (prior sample -> training frame)."""
    from bgkit.limits import MAX_COUNT, check_int
    from bgkit.outputs import check_output_file
    from bgkit.systems import load_system
    from bgkit.train.molecular import make_ot_targets

    check_int("--n", n, 2, MAX_COUNT)
    check_int("--block-size", block_size, 1, MAX_COUNT)
    check_int("--seed", seed, 0, 2**63 - 1)
    check_output_file(out, force, hint="pass --force to overwrite it")
    info = make_ot_targets(load_system(system_name), out, data=data, n=n, block_size=block_size, seed=seed, align=align,
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


def _run_training(arch: str, params: dict[str, Any], among: tuple[str, ...], only: dict[str, tuple[str, ...]],
                  **kwargs: Any) -> None:
    """Shared body of `bgkit train` and `bgkit teacher train` (``params``: the command's parameters; ``among``:
    its objectives): refuse the options the chosen objective ignores (those of other objectives, and the
    parameters of ``only`` given for objectives it does not list), check --out and --hparams, build the
    training config (every number checked before any work), resolve the system once, train, report."""
    from bgkit.flows import check_hparams
    from bgkit.limits import MAX_COUNT, MAX_STEPS, check_int
    from bgkit.outputs import check_output_file
    from bgkit.systems import load_system
    from bgkit.train.config import TrainConfig, schedule_for
    from bgkit.train.molecular import train_for_system

    steps, out = params["steps"], params["out"]
    fields = [name for name in params if name in _CONFIG_FIELDS]
    cfg = TrainConfig.from_dict({**schedule_for(steps), "objective": params["objective"],
                                 **{name: params[name] for name in fields}})
    _refuse_others(cfg.spec, among, only)
    if kwargs.get("init") is not None and kwargs["init"].resolve() == out.resolve():
        raise BgkitError("--init and --out are the same file: write the new run to another --out")
    check_output_file(out, params["resume"] or params["force"], hint="pass --resume to continue it or --force to "
                      "replace it")
    try:
        hp = json.loads(params["hparams"])
    except json.JSONDecodeError:
        raise BgkitError(f"--hparams is not valid JSON: {params['hparams']}") from None
    if not isinstance(hp, dict):
        raise BgkitError(f"--hparams must be a JSON object, got {params['hparams']}")
    if steps < 1:
        raise BgkitError(f"--steps must be >= 1, got {steps}")
    check_int("--steps", steps, 1, MAX_STEPS)
    if params["max_frames"] is not None:
        check_int("--max-frames", params["max_frames"], 2, MAX_COUNT)  # a representation is fitted on >= 2 frames
    cfg.validate()
    check_hparams(arch, hp)
    result = train_for_system(load_system(params["system_name"]), arch, cfg, out, hparams=hp, resume=params["resume"],
                              data=list(params["data"]) or None, max_frames=params["max_frames"], **kwargs)
    m = result.metrics
    if _rank() == 0:  # under torchrun, rank 0 wrote the checkpoint
        click.echo(f"wrote {out}: {m.get('steps')} steps, final train loss {m.get('final_train_loss'):.4g}, "
                   f"val loss {m.get('final_val_loss')}, {m.get('samples_per_s', 0):.0f} samples/s")


def _refuse_others(objective: Objective, among: tuple[str, ...], only: dict[str, tuple[str, ...]]) -> None:
    """Refuse an option given on the command line that ``objective`` would ignore: an option of the other
    objectives of ``among`` (the registry says which read it), or a parameter of ``only`` (-> the objectives it
    applies to)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    applies = {o.field: option_owners(o.field, among) for o in objective_options() if o.field in ctx.params}
    for name, owners in {**applies, **only}.items():
        if objective.name in owners:
            continue
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            param = next(p for p in ctx.command.params if p.name == name)
            raise BgkitError(f"{param.opts[0]} applies to --objective {' or '.join(owners)}, not {objective.name}: "
                             "leave it out")


def _objective_help(names: tuple[str, ...]) -> str:
    return "; ".join(f"{n}: {OBJECTIVES[n].summary}" for n in names) + "."


def _of(among: tuple[str, ...], test: Callable[[Objective], bool]) -> tuple[str, ...]:
    """The objectives of ``among`` that pass ``test``."""
    return tuple(n for n in among if test(OBJECTIVES[n]))


#: the training-config fields a command may set (the others keep TrainConfig's defaults)
_CONFIG_FIELDS = ("batch_size", "lr", "seed", "device", "max_seconds", *(o.field for o in objective_options()))

_ROTOR_AUGMENT = click.option(
    "--rotor-augment", is_flag=True,
    help="Relabel each training frame's methyl hydrogens by a random 120° rotation whenever it is drawn (an exact "
         "symmetry of u; the flow learns a relabelling-invariant density). Frame objectives only, not regflow.")


@click.command()
@click.option("--arch", type=click.Choice(list(FLOW_ARCHITECTURES)), required=True, help="Flow architecture.")
@click.option("--objective", type=click.Choice(FLOW_OBJECTIVES), required=True, help=_objective_help(FLOW_OBJECTIVES))
@click.option("--targets", "targets_path", default=None,
              help="RegFlow: an OT targets file (`bgkit targets ot`) or a reflow targets folder (`bgkit targets reflow`).")
@click.option("--coords", type=click.Choice(_COORDS), default=None,
              help=f"Flow space for frame objectives (default {DEFAULT_COORDS}); RegFlow takes it from --targets, "
                   "--init from its proposal.")
@click.option("--init", "init", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Start from this proposal's weights and coordinates (same --arch; its hyperparameters are used).")
@_config_option("kl_weight", "weight of the reverse-KL term.", type=float)
@click.option("--energy-workers", type=int, default=1, show_default=True,
              help="kl: OpenMM worker processes for the energies and forces of flow samples.")
@_config_option("reg", "regulariser: forward-backward inverse consistency (fb), squared log-det (logdet) or none.", type=click.Choice([r or "none" for r in REGULARISERS]),
                default=_TRAIN_DEFAULTS.reg or "none", callback=lambda ctx, param, value: None if value == "none" else value)
@_config_option("reg_weight", "weight of the --reg term.", type=float)
@_config_option("noise_std", "target noise std (flow units).", type=float)
@_config_option("logdet_weight", "on reflow targets made with --logdet: weight of the squared error between the "
                "flow's and the teacher's log|det| of each pair (nats^2).", type=float)
@_ROTOR_AUGMENT
@_with_options(_train_options)
def train(**params: Any) -> None:
    """Train a flow; the checkpoint --out is a self-contained proposal."""
    among = FLOW_OBJECTIVES
    only = {"targets_path": _of(among, lambda o: o.pairs), "energy_workers": _of(among, lambda o: o.energy),
            "max_frames": _of(among, lambda o: not o.pairs)}
    if params["energy_workers"] < 1:
        raise BgkitError(f"--energy-workers must be >= 1, got {params['energy_workers']}")
    _run_training(params["arch"], params, among, only, targets=params["targets_path"], coords=params["coords"],
                  init=params["init"], rotor_augment=params["rotor_augment"],
                  energy_workers=_check_workers(params["energy_workers"], "--energy-workers"))


@click.group(cls=_Group)
def teacher() -> None:
    """Continuous-flow teachers (flow matching) for reflow targets; a teacher is also a proposal."""


@teacher.command("train")
@click.option("--objective", type=click.Choice(TEACHER_OBJECTIVES), default=DEFAULT_TEACHER_OBJECTIVE,
              show_default=True, help=_objective_help(TEACHER_OBJECTIVES))
@click.option("--coords", type=click.Choice(_COORDS), default=DEFAULT_COORDS, show_default=True,
              help="Flow space of the teacher (and of the students regressed onto its reflow targets).")
@_config_option("wcfm_kappa", "temperature eps = kappa * sqrt(D) of the pair weights exp(-|x1 - x0| / eps).",
                type=float)
@_config_option("fdm_cdm_weight", "weight of the conditional continuity residual (the CFM term has weight 1).",
                type=float)
@_ROTOR_AUGMENT
@_with_options(_train_options)
def teacher_train(**params: Any) -> None:
    """Train a CNF teacher by flow matching on the system's MD frames; --out is a checkpoint and a proposal."""
    _run_training("cnf", params, TEACHER_OBJECTIVES, {}, coords=params["coords"],
                  rotor_augment=params["rotor_augment"])


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
