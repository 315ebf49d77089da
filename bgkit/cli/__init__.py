"""The ``bgkit`` command line: thin wrappers over library functions, one module per command group.

Errors from bad input are printed as one line (``error: ...``) with exit
code 1 and no traceback; set ``BGKIT_DEBUG=1`` to see the traceback.

Modules: :mod:`.common` (error handling, shared options), :mod:`.systems`
(systems, energy), :mod:`.md` (simulate, data), :mod:`.training` (targets,
train, teacher, export), :mod:`.refine`, :mod:`.sampling` (sample, evaluate), :mod:`.fep`, :mod:`.plot`.
"""
from __future__ import annotations

import click

from bgkit import __version__
from bgkit.cli.common import (_COORDS, _Group, _check_workers, _dump, _sample_options, _train_options,
                              _with_options)
from bgkit.cli.diagnose import diagnose
from bgkit.cli.fep import fep
from bgkit.cli.md import data, simulate
from bgkit.cli.plot import plot
from bgkit.cli.refine import refine
from bgkit.cli.sampling import evaluate, sample
from bgkit.cli.systems import energy, systems
from bgkit.cli.training import export, targets, teacher, train

__all__ = ["main", "_Group", "_check_workers", "_dump", "_with_options", "_sample_options", "_train_options",
           "_COORDS"]


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="bgkit")
def main() -> None:
    """bgkit: Boltzmann Generators for molecular systems (OpenMM + normalizing flows)."""


for _command in (systems, energy, simulate, data, targets, train, teacher, refine, export, sample, evaluate,
                 diagnose, fep, plot):
    main.add_command(_command)
del _command
