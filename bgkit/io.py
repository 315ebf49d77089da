"""Reading trajectories for a System, and writing arrays atomically."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bgkit import BgkitError
from bgkit.systems import System, one_line_error, pdb_problem

#: formats that carry their own topology (no --top needed)
_SELF_DESCRIBING = {".h5", ".pdb", ".pdb.gz", ".mol2", ".gro", ".cif", ".pdbx"}


def load_mdtraj(path: str | os.PathLike, system: System, stride: int | None = None):
    """An ``mdtraj.Trajectory`` of ``path`` with the system's topology.

    Files that carry a topology (PDB, HDF5, ...) must list the system's atoms in its
    order: same atom names in the same residues. Files without one (XTC, DCD, ...)
    can only be checked by their atom count. Any problem is a one-line BgkitError
    naming the file.
    """
    import mdtraj

    path = Path(path)
    suffix = "".join(path.suffixes[-2:]).lower() if path.name.endswith(".gz") else path.suffix.lower()
    _check_readable(path, suffix, system)
    try:
        if suffix in _SELF_DESCRIBING:
            traj = mdtraj.load(str(path), stride=stride)
        else:
            traj = mdtraj.load(str(path), top=system.topology, stride=stride)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise BgkitError(f"cannot read trajectory {path} for system '{system.name}': {_reader_error(exc)}") from None
    if traj.n_frames == 0:
        raise BgkitError(f"trajectory {path} holds no frames")
    if traj.n_atoms != system.n_atoms:
        raise BgkitError(f"trajectory {path} has {traj.n_atoms} atoms, system '{system.name}' has {system.n_atoms}")
    if suffix in _SELF_DESCRIBING:
        mismatch = topology_mismatch(traj.topology, system)
        if mismatch is not None:
            raise BgkitError(f"trajectory {path} does not match system '{system.name}': {mismatch}")
        traj.topology = system.topology  # one topology object for every consumer
    return traj


def _check_readable(path: Path, suffix: str, system: System) -> None:
    """BgkitError if ``path`` is missing, a folder, empty, or a PDB without atoms."""
    if not path.exists():
        raise BgkitError(f"trajectory {path} not found")
    if path.is_dir():
        raise BgkitError(f"trajectory {path} is a folder, not a file")
    if path.stat().st_size == 0:
        raise BgkitError(f"cannot read trajectory {path} for system '{system.name}': the file is empty")
    if suffix == ".pdb":
        problem = pdb_problem(path)
        if problem is not None:
            raise BgkitError(f"cannot read trajectory {path} for system '{system.name}': {problem}")


def _reader_error(exc: BaseException) -> str:
    """A reader's exception as one line; bare index errors say that the file is malformed."""
    text = one_line_error(exc)
    if isinstance(exc, (IndexError, KeyError, EOFError)):
        return f"malformed or truncated file ({type(exc).__name__}: {text})"
    return text


def topology_mismatch(topology, system: System) -> str | None:
    """The first difference between a file's mdtraj topology and the system's (atom names, residues, order)."""
    mine = system.topology
    if topology.n_atoms != mine.n_atoms:
        return f"{topology.n_atoms} atoms, system has {mine.n_atoms}"
    for i, (a, b) in enumerate(zip(topology.atoms, mine.atoms)):
        if (a.name, a.residue.name, a.residue.index) != (b.name, b.residue.name, b.residue.index):
            return (f"atom {i} is {a.name} of residue {a.residue.index} ({a.residue.name}) in the file, "
                    f"{b.name} of residue {b.residue.index} ({b.residue.name}) in the system")
    return None


def load_trajectory(path: str | os.PathLike, system: System, stride: int | None = None) -> np.ndarray:
    """Positions of every frame of ``path``, float64 [n_frames, N, 3] in nm."""
    return np.asarray(load_mdtraj(path, system, stride).xyz, dtype=np.float64)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` atomically (temporary file beside ``path``, then rename)."""
    from bgkit.provenance import atomic_write

    atomic_write(path, lambda fh: np.save(fh, array))


def verify_zip(path: str | os.PathLike, what: str) -> None:
    """Check that ``path`` is a readable zip archive (.pt, .npz) whose every member passes its CRC.

    Raises BgkitError naming ``what`` (e.g. "checkpoint") if the file is missing,
    truncated or corrupted; torch and numpy do not verify data checksums themselves.
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise BgkitError(f"{what} not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except Exception as exc:  # BadZipFile, OSError, UnicodeDecodeError, ...
        raise BgkitError(f"{what} {path} is truncated or corrupted ({type(exc).__name__}: {exc})") from None
    if bad is not None:
        raise BgkitError(f"{what} {path} is corrupted (bad checksum in {bad})")
