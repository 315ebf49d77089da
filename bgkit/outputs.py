"""Where a bgkit command may write: one check for every output file and folder.

Rules (every command applies them before it spends any time):

* an output *file* (.npy, .npz, .pt, .pdb, .png, .json, ...) that exists is replaced only with
  ``--force``, and a folder is never replaced by a file;
* an output *folder* that exists is replaced only with ``--force`` and only if bgkit wrote it: it
  holds bgkit's marker file ``.bgkit-output`` (JSON) and nothing but the files the marker lists;
* the current directory, its parents and the home directory are never replaced;
* the folder that will receive the output must be writable (checked by creating a probe file).

An output folder is written completely or not at all: :func:`write_output_folder` fills a working folder
beside it, writes the marker and moves the folder into place.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from bgkit import BgkitError, __version__

#: name of the marker file bgkit writes into every output folder it creates
MARKER = ".bgkit-output"


def protected(path: str | os.PathLike) -> str | None:
    """What ``path`` is if bgkit must never replace it (current/home directory or a parent), else None."""
    target = Path(path).resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if target == cwd:
        return "the current directory"
    if target in cwd.parents:
        return "a parent of the current directory"
    if target == home or target in home.parents:
        return "the home directory" if target == home else "a parent of the home directory"
    return None


def check_writable(path: str | os.PathLike) -> None:
    """Raise BgkitError unless ``path`` (a file or folder to be created) can be created.

    The nearest existing folder above ``path`` must be a folder in which a file can be
    created; missing folders in between are created later by the writer.
    """
    path = Path(os.path.abspath(path))
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise BgkitError(f"cannot write {path}: {ancestor} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".bgkit-probe-", dir=ancestor)
    except OSError as exc:
        raise BgkitError(f"cannot write {path}: {ancestor} is not writable ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike, force: bool, option: str = "--out",
                      hint: str = "pass --force to replace it") -> Path:
    """Check that the output file ``path`` may be written (replaced only with ``force``); returns it."""
    path = Path(path)
    if path.is_dir():
        raise BgkitError(f"{option} {path} is a folder: give a file name (bgkit never replaces a folder by a file)")
    if (path.exists() or path.is_symlink()) and not force:
        raise BgkitError(f"{path} exists: {hint}")
    check_writable(path)
    return path


def check_output_folder(path: str | os.PathLike, force: bool, option: str = "--out") -> Path:
    """Check that the output folder ``path`` may be created, or replaced (``force``, bgkit's own only)."""
    path = Path(path)
    where = protected(path)
    if where is not None:
        raise BgkitError(f"{option} {path} is {where}: bgkit never writes over it; choose a new folder")
    if path.is_symlink():
        raise BgkitError(f"{option} {path} is a symbolic link: choose a new folder")
    if path.exists():
        if not path.is_dir():
            raise BgkitError(f"{option} {path} exists and is not a folder: choose another {option}")
        if not force:
            raise BgkitError(f"{path} exists: choose another {option} or pass --force to replace it")
        problem = foreign_content(path)
        if problem is not None:
            raise BgkitError(f"{path} was not written by bgkit ({problem}): not replacing it; "
                             f"choose another {option} or remove it yourself")
    check_writable(path)
    return path


def write_marker(folder: str | os.PathLike, kind: str, files: Iterable[str] | None = None) -> Path:
    """Write ``folder/.bgkit-output``: what bgkit wrote there (``kind``) and the names it may hold."""
    from bgkit.provenance import atomic_write_json

    record = {"kind": kind, "bgkit_version": __version__,
              "files": None if files is None else sorted(set(files))}
    return atomic_write_json(record, Path(folder) / MARKER)


def add_to_marker(folder: str | os.PathLike, names: Iterable[str]) -> Path:
    """Add ``names`` (files bgkit has just written into ``folder``) to its marker's file list."""
    record = json.loads((Path(folder) / MARKER).read_text())
    return write_marker(folder, record["kind"], [*(record["files"] or []), *names])


def foreign_content(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a replaceable bgkit output (no marker, a file bgkit did not write), or None."""
    folder = Path(folder)
    try:
        record = json.loads((folder / MARKER).read_text())
        files = set(record["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"no valid {MARKER} marker"
    for entry in folder.iterdir():
        if entry.name == MARKER or (_own_temporary(entry.name, files) and entry.is_file()
                                    and not entry.is_symlink()):
            continue
        if entry.name not in files or entry.is_dir() or entry.is_symlink():
            return f"it holds {entry.name}, which bgkit did not write"
    return None


#: the random part of a temporary name from :func:`bgkit.provenance.atomic_write` (``tempfile.mkstemp``)
_TEMP_SUFFIX = re.compile(r"\.[a-z0-9_]{8}$")


def _own_temporary(name: str, files: set[str]) -> bool:
    """Whether ``name`` is one of bgkit's own temporary files for a file it writes into the folder:
    ``.NAME.<8 random characters>.tmp`` (an atomic write in progress, or left by a killed run) or ``.NAME.tmp``, NAME being
    the marker or a file the marker lists. Any other name (a user's ``.notes.tmp``) is not bgkit's."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    base = name[1:-len(".tmp")]
    own = files | {MARKER}
    return base in own or (_TEMP_SUFFIX.search(base) is not None and base[:-9] in own)


def partial_folder(out: str | os.PathLike) -> Path:
    """A fresh, empty working folder ``.NAME.partial-PID`` beside ``out``, to be moved onto it by
    :func:`replace_folder` once complete.

    Leftovers of earlier runs that were killed (``.NAME.partial-PID`` and ``.NAME.old-PID`` of
    processes that no longer exist) are removed first; those of running processes are left alone.
    """
    out = Path(out)
    prefix = f".{out.name}."
    for entry in out.parent.iterdir() if out.parent.is_dir() else ():
        kind, _, pid = entry.name[len(prefix):].rpartition("-")
        if (entry.name.startswith(prefix) and kind in ("partial", "old") and pid.isdigit()
                and not _running(int(pid))):
            shutil.rmtree(entry, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _running(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_folder(tmp: str | os.PathLike, out: str | os.PathLike, force: bool, option: str = "--out") -> Path:
    """Move the complete folder ``tmp`` to ``out``, replacing an existing ``out`` only as the rules allow.

    ``out`` is checked again here, since the user may have changed it while bgkit was working.
    """
    tmp, out = Path(tmp), Path(out)
    if out.exists() or out.is_symlink():
        check_output_folder(out, force, option)
        trash = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def write_output_folder(out: str | os.PathLike, kind: str, write: Callable[[Path], Iterable[str]], force: bool,
                        option: str = "--out") -> Path:
    """Write the output folder ``out`` completely or not at all; returns ``out``.

    ``write(tmp)`` fills ``tmp``, a fresh empty working folder beside ``out`` (:func:`partial_folder`), and
    returns the names the folder may hold: the files it wrote and any that a later step will add. The
    marker (``kind`` and those names) is written, and the folder is moved onto ``out``, replacing an
    existing one only as the rules allow (:func:`replace_folder`). On any error, or an interrupt, the
    working folder is removed and ``out`` is left as it was. Check ``out`` with :func:`check_output_folder`
    before the work starts.
    """
    tmp = partial_folder(out)
    try:
        files = list(write(tmp))
        write_marker(tmp, kind, files)
        return replace_folder(tmp, out, force, option)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
