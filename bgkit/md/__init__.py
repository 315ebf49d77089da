"""Reference molecular dynamics: simulating, storing and reading MD datasets.

* :mod:`~bgkit.md.settings`: the validated settings of a dataset (:class:`MDSettings`);
* :mod:`~bgkit.md.chunks`: the chunk/commit protocol of a replica folder and the one chunk loop;
* :mod:`~bgkit.md.simulate`: plain Langevin MD, the dataset folder and :func:`simulate`;
* :mod:`~bgkit.md.replica_exchange`: parallel tempering (openmmtools), in the same chunk format;
* :mod:`~bgkit.md.pool`: replica processes that die with the command, and the progress bar;
* :mod:`~bgkit.md.dataset`: loading datasets (:func:`load_dataset`), splits;
* :mod:`~bgkit.md.check`: convergence check of a dataset (basin populations in both halves).

OpenMM and mdtraj are imported only when used. The :func:`~bgkit.md.simulate.simulate` function is not
re-exported here: its name would hide the :mod:`bgkit.md.simulate` module.
"""
from __future__ import annotations

from bgkit.md.dataset import Dataset, load_dataset
from bgkit.md.replica_exchange import acceptance, temperature_ladder
from bgkit.md.settings import MDSettings

__all__ = ["Dataset", "load_dataset", "MDSettings", "temperature_ladder", "acceptance"]
