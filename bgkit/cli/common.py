"""Shared pieces of the ``bgkit`` commands: the error-reporting group class and common options."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from bgkit import BgkitError
from bgkit.coords import REPRESENTATIONS


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


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


def _with_options(options: list[Callable]) -> Callable:
    """Apply a list of click options (shared by several commands) in order."""
    def wrap(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return wrap


def _check_workers(workers: int | None) -> None:
    """--workers: None means all cores; anything else must be a positive number of processes."""
    if workers is not None and workers < 1:
        raise BgkitError(f"--workers must be >= 1 (omit it to use all cores), got {workers}")


_SYSTEM_HELP = "Shipped system name or system folder."

_COORDS = list(REPRESENTATIONS)

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
                 help="Dataset folder (default: the system's shipped data). Repeat it to train on several datasets "
                      "of the system, e.g. plain MD and replica exchange: each is split in time, the splits joined."),
    click.option("--steps", type=int, default=20000, show_default=True,
                 help="Total optimiser steps (a --resume continues up to this count)."),
    click.option("--batch-size", type=int, default=512, show_default=True, help="Training pairs or frames per step."),
    click.option("--lr", type=float, default=5e-4, show_default=True,
                 help="Peak learning rate (AdamW; linear warm-up, then cosine decay)."),
    click.option("--hparams", default="{}", help='Architecture hyperparameters as JSON, e.g. \'{"hidden": 128}\'.'),
    click.option("--max-frames", type=int, default=None, help="Frame objectives: use at most this many train frames."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, batches and noise."),
    click.option("--max-seconds", type=float, default=None,
                 help="Stop (with a checkpoint) after this much wall time (s), even before --steps; counted over "
                      "all runs of a checkpoint, so a --resume continues the same budget."),
    click.option("--device", default=None, help="torch device (default: cuda if available)."),
    click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
                 help="Checkpoint file to write (.pt), also a proposal."),
    click.option("--resume", is_flag=True, help="Continue the run in --out."),
    click.option("--force", is_flag=True, help="Replace an existing --out."),
]
