"""bgkit: Boltzmann Generator sampling toolkit for molecular systems.

Sub-modules are imported lazily so that worker processes and the CLI start
fast (``import bgkit`` does not import torch or OpenMM).
"""
from __future__ import annotations

__version__ = "0.2.0"


class BgkitError(Exception):
    """An error caused by the user's input (bad system, file, shape, ...).

    The CLI prints its message as one line and exits non-zero.
    """


__all__ = ["BgkitError", "__version__"]
