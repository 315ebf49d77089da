"""Reading the files of a system folder: the topology PDB, checked before OpenMM parses it, and one-line errors.

:func:`one_line_error` turns any reader's exception (an OpenMM parser's, an HDF5 back trace) into one
line for a :class:`~bgkit.BgkitError`; :func:`pdb_problem` says why a file cannot be a PDB;
:class:`PdbTopology` is the topology and positions of the sources that come with a PDB.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from bgkit import BgkitError

__all__ = ["PdbTopology", "one_line_error", "pdb_problem", "read_topology_pdb"]


def one_line_error(exc: BaseException) -> str:
    """An exception as one line of at most 300 characters; an HDF5 back trace as its innermost cause."""
    text = str(exc)
    if "HDF5 error back trace" in text:
        text = _hdf5_cause(text)
    text = " ".join(text.split())
    return text[:300] if text else exc.__class__.__name__


def _hdf5_cause(text: str) -> str:
    """The innermost cause of an HDF5 back trace ("file signature not found", "truncated file: ...")."""
    trace = text.split("End of HDF5 error back trace")[0].splitlines()
    causes = [line.strip() for line in trace if line.startswith("    ") and line.strip()]
    if not causes:
        return text
    cause = causes[-1]
    if cause == "file signature not found":
        return "not an HDF5 file (file signature not found)"
    return f"corrupted HDF5 file ({cause})"


def pdb_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a PDB file (empty, no ATOM/HETATM records, not text), or None."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return exc.strerror or str(exc)
    if not data.strip():
        return "the file is empty"
    if b"\x00" in data:
        return "not a PDB file (binary data)"
    if not any(line.startswith(("ATOM  ", "HETATM")) for line in data.decode("latin-1").splitlines()):
        return "no ATOM/HETATM records (not a PDB file?)"
    return None


def read_topology_pdb(name: str, path: Path | None, buildable: bool) -> Any:
    """The topology PDB ``path`` of system ``name`` as an ``openmm.app.PDBFile`` (BgkitError naming the file).

    ``buildable``: the system.yaml has a ``build`` section, so a missing file hints at `bgkit systems build`.
    """
    from openmm import app

    if path is None:
        raise BgkitError(f"system '{name}' has no topology PDB")
    if not path.is_file():
        hint = " (run `bgkit systems build`?)" if buildable else ""
        raise BgkitError(f"system '{name}': topology file {path} not found{hint}")
    problem = pdb_problem(path)
    if problem is not None:
        raise BgkitError(f"system '{name}': unreadable PDB {path}: {problem}")
    try:
        return app.PDBFile(str(path))
    except Exception as exc:  # OpenMM raises bare Exceptions for bad PDBs
        raise BgkitError(f"system '{name}': unreadable PDB {path}: {one_line_error(exc)}") from None


class PdbTopology:
    """The topology and positions of a source that reads them from the system's topology PDB.

    Attributes: ``openmm_topology`` (``openmm.app.Topology``), ``positions`` (nm, float64 [N, 3]).
    """

    def __init__(self, spec: Any, folder: Path) -> None:
        self.spec = spec
        self.folder = Path(folder)

    @cached_property
    def _pdb(self) -> Any:
        path = self.folder / self.spec.topology if self.spec.topology else None
        return read_topology_pdb(self.spec.name, path, bool(self.spec.build))

    @property
    def openmm_topology(self) -> Any:
        return self._pdb.topology

    @cached_property
    def positions(self) -> np.ndarray:
        from openmm import unit

        return np.asarray(self._pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
