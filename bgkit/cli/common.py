"""Shared pieces of the ``bgkit`` commands: the error-reporting group class and common options."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from bgkit import BgkitError
from bgkit.coords import REPRESENTATIONS
from bgkit.train.config import CLI_OPTIONS, TrainConfig
from bgkit.train.objectives import option_owners


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that every command cleans up the same way."""


def _raise_terminated(signum, frame):
    raise _Terminated


def _rank() -> int:
    """This process's rank under torchrun (0 alone)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _torchrun_error_file(message: str) -> None:
    """Under torchrun, give its failure report the one-line error (instead of a pointer to its docs)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    import time

    from bgkit.provenance import dumps_json

    tmp = f"{path}.{os.getpid()}.tmp"
    try:  # written whole before it appears: torchrun reads it as soon as the process has exited
        with open(tmp, "w") as fh:
            fh.write(dumps_json({"message": "error: " + " ".join(message.split()), "timestamp": int(time.time())},
                                indent=None))
        os.replace(tmp, path)
    except OSError:
        pass


class _Group(click.Group):
    """A click group that turns exceptions into one-line errors, and SIGTERM into an interruption like SIGINT.

    Under torchrun only rank 0 reports a user error (every rank checks the same arguments); the other ranks
    exit with status 1 silently.
    """

    def invoke(self, ctx: click.Context):
        import signal
        import threading

        previous = None
        if ctx.parent is None and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return self._invoke(ctx)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt as exc:
            if _rank() == 0:
                click.echo("error: interrupted" + (" (SIGTERM)" if isinstance(exc, _Terminated) else ""), err=True)
            sys.exit(143 if isinstance(exc, _Terminated) else 130)
        except Exception as exc:  # noqa: BLE001 - the CLI's one place that reports any failure
            if os.environ.get("BGKIT_DEBUG"):
                raise
            if isinstance(exc, BgkitError):
                _torchrun_error_file(str(exc))
                if _rank() != 0:  # rank 0 says it; torchrun stops every rank once one has exited: let rank 0 first
                    import time

                    time.sleep(2.0)
                    sys.exit(1)
                message = str(exc)
            elif isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
                message = f"{exc.strerror}: {exc.filename}"
            else:
                message = f"{type(exc).__name__}: {exc}"
            prefix = "error: " if _rank() == 0 else f"error: rank {_rank()}: "
            click.echo(prefix + " ".join(message.split()), err=True)
            sys.exit(1)


def _dump(data: Any) -> str:
    from bgkit.provenance import dumps_json

    return dumps_json(data)


def _with_options(options: list[Callable]) -> Callable:
    """Apply a list of click options (shared by several commands) in order."""
    def wrap(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return wrap


def _note(text: str) -> None:
    """A one-line note for the user on stderr."""
    click.echo("note: " + text, err=True)


def _check_workers(workers: int | None, option: str = "--workers") -> int | None:
    """--workers: None means all cores; anything else must be a positive number of processes, capped (with a
    note) at the core count. Returns the number to use."""
    from bgkit.limits import cap_workers

    return cap_workers(option, workers, note=_note)


_SYSTEM_HELP = "Shipped system name or system folder."

_COORDS = list(REPRESENTATIONS)

_TRAIN_DEFAULTS = TrainConfig()


def _config_option(field: str, help: str, **kwargs: Any) -> Callable:
    """The option of training-config field ``field``: named as :data:`~bgkit.train.config.CLI_OPTIONS` says, the
    field its parameter, :class:`~bgkit.train.config.TrainConfig`'s default its default; the help of an
    objective's option starts with the objectives that read it (the registry's)."""
    owners = option_owners(field)
    default = kwargs.pop("default", getattr(_TRAIN_DEFAULTS, field))
    return click.option(CLI_OPTIONS[field], field, default=default, show_default=default is not None,
                        help=(f"{' | '.join(owners)}: " if owners else "") + help, **kwargs)

_sample_options = [
    click.option("--system", "system_name", required=True, help=_SYSTEM_HELP),
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

_train_options = [
    click.option("--system", "system_name", required=True, help=_SYSTEM_HELP),
    click.option("--data", multiple=True,
                 help="Dataset folder (default: the md/ folder inside the system folder). Repeat it to train on several datasets "
                      "of the system, e.g. plain MD and replica exchange: each is split in time, the splits joined."),
    _config_option("steps", "Total optimiser steps (a --resume continues up to this count).", type=int),
    _config_option("batch_size", "Training pairs or frames per step.", type=int),
    _config_option("lr", "Peak learning rate (AdamW; linear warm-up, then cosine decay).", type=float),
    click.option("--hparams", default="{}", help='Architecture hyperparameters as JSON, e.g. \'{"hidden": 128}\'.'),
    click.option("--max-frames", type=int, default=None, help="Frame objectives: use at most this many train frames."),
    _config_option("seed", "Seed of initialisation, batches and noise.", type=int),
    _config_option("max_seconds", "Stop (with a checkpoint) after this much wall time (s), even before --steps; "
                   "counted over all runs of a checkpoint, so a --resume continues the same budget.", type=float),
    _config_option("device", "torch device (default: cuda if available)."),
    click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
                 help="Checkpoint file to write (.pt), also a proposal."),
    click.option("--resume", is_flag=True, help="Continue the run in --out."),
    click.option("--force", is_flag=True, help="Replace an existing --out."),
]
