"""Provenance records and atomic file writes.

Every bgkit artefact (dataset, targets, checkpoint, samples) carries a
provenance dict: software versions, UTC time, host, the command line, plus
caller-supplied fields (system, seed, config, ...). Files are written
atomically: to a temporary file in the destination directory, flushed,
fsync'ed, then ``os.replace``'d over the destination, so a crash never leaves
a half-written file under the final name.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import socket
import sys
import tempfile
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, BinaryIO, Callable

import bgkit

__all__ = ["provenance", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_save"]


def _version(dist: str) -> str | None:
    """Installed version of distribution ``dist`` (None if not installed)."""
    try:
        return _metadata.version(dist)
    except _metadata.PackageNotFoundError:
        return None


def provenance(**extra: Any) -> dict[str, Any]:
    """Return a JSON-friendly provenance record.

    Keys: ``bgkit_version``, ``python_version``, ``numpy_version``,
    ``torch_version``, ``openmm_version`` (None when OpenMM is not installed),
    ``time_utc`` (ISO 8601), ``hostname``, ``platform``, ``command`` (the
    shell-quoted ``sys.argv``), followed by every keyword in ``extra``
    (e.g. ``system="ala2", seed=0, config={...}``), which override defaults.
    """
    openmm_version = _version("openmm")
    if openmm_version is None:
        try:  # conda builds of OpenMM may lack pip metadata
            import openmm  # noqa: PLC0415

            openmm_version = str(openmm.__version__)
        except ImportError:
            openmm_version = None
    record: dict[str, Any] = {
        "bgkit_version": bgkit.__version__,
        "python_version": platform.python_version(),
        "numpy_version": _version("numpy"),
        "torch_version": _version("torch"),
        "openmm_version": openmm_version,
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }
    record.update(extra)
    return record


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Atomically create/replace ``path`` with what ``write(fileobj)`` writes.

    The temporary file lives in the destination directory (same file system,
    so ``os.replace`` is atomic) and is removed if ``write`` fails.
    Returns the destination path.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(dest.parent)
    return dest


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Atomically write raw ``data`` to ``path``."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Atomically write ``obj`` as UTF-8 JSON (non-JSON values via ``str``)."""
    text = json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n"
    return atomic_write_bytes(text.encode("utf-8"), path)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    import torch  # noqa: PLC0415  (keep ``import bgkit.provenance`` light)

    return atomic_write(path, lambda fh: torch.save(obj, fh))
