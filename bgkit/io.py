"""Reading trajectories for a System, and writing arrays atomically."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bgkit import BgkitError
from bgkit.systems import System, _one_line

#: formats that carry their own topology (no --top needed)
_SELF_DESCRIBING = {".h5", ".pdb", ".pdb.gz", ".mol2", ".gro", ".cif", ".pdbx"}


def load_mdtraj(path: str | os.PathLike, system: System, stride: int | None = None):
    """An ``mdtraj.Trajectory`` of ``path`` with the system's topology, atom count checked."""
    import mdtraj

    path = Path(path)
    if not path.exists():
        raise BgkitError(f"trajectory {path} not found")
    if path.is_dir():
        raise BgkitError(f"trajectory {path} is a folder, not a file")
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    try:
        if suffix.lower() in _SELF_DESCRIBING:
            traj = mdtraj.load(str(path), stride=stride)
        else:
            traj = mdtraj.load(str(path), top=system.topology, stride=stride)
    except (ValueError, IOError, OSError, RuntimeError, TypeError, KeyError, IndexError, EOFError) as exc:
        raise BgkitError(f"cannot read trajectory {path} for system '{system.name}': {_one_line(exc)}") from None
    if traj.n_atoms != system.n_atoms:
        raise BgkitError(f"trajectory {path} has {traj.n_atoms} atoms, system '{system.name}' has {system.n_atoms}")
    if suffix.lower() in _SELF_DESCRIBING:
        traj.topology = system.topology  # one topology object for every consumer
    return traj


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
