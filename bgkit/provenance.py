"""Provenance records, atomic file writes, strict JSON and YAML.

Every bgkit artefact (dataset, targets, checkpoint, samples) carries a
provenance dict: software versions, UTC time, host, the command line, plus
caller-supplied fields (system, seed, config, ...). Files are written
atomically: to a temporary file in the destination directory, flushed,
fsync'ed, then ``os.replace``'d over the destination, so a crash never leaves
a half-written file under the final name.

Every JSON file bgkit writes goes through :func:`dumps_json` (strict JSON:
undefined values such as NaN or infinity are written as ``null``), and every
YAML file it reads through :func:`load_yaml` (a key given twice is an error,
not a silent override).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
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

__all__ = ["provenance", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_save", "json_safe",
           "dumps_json", "load_yaml"]


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


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Atomically write raw ``data`` to ``path``."""
    return atomic_write(path, lambda fh: fh.write(data))


def json_safe(value: Any) -> Any:
    """A plain-data copy of ``value`` for strict JSON.

    Dicts (keys as strings), lists and tuples are copied recursively; numpy scalars and
    arrays become Python numbers and lists; non-finite floats (NaN, ±inf) become None;
    other objects (paths, ...) their ``str``.
    """
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # numpy scalar or array, numpy not imported
        return json_safe(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as strict JSON text (:func:`json_safe`: undefined values as ``null``; never a bare NaN)."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=False, allow_nan=False)


def atomic_write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Atomically write ``obj`` as UTF-8 strict JSON (:func:`dumps_json`)."""
    return atomic_write_bytes((dumps_json(obj, indent=indent) + "\n").encode("utf-8"), path)


def load_yaml(path: str | os.PathLike, what: str = "YAML file") -> Any:
    """The contents of the YAML file ``path`` (safe loader); BgkitError naming ``what`` and ``path``
    if it cannot be read, is not valid YAML, or gives a mapping key twice (with both lines)."""
    import yaml  # noqa: PLC0415  (keep ``import bgkit.provenance`` light)

    class _StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:  # the mapping's own keys (a '<<' merge may be overridden, as YAML says)
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = loader.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise bgkit.BgkitError(f"{what} {path}: key {key!r} is given twice (lines {seen[key]} and "
                                           f"{line}); remove or rename one")
                seen[key] = line
            except TypeError:  # an unhashable key: the default constructor reports it
                break
        loader.flatten_mapping(node)
        return loader.construct_mapping(node, deep=True)

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise bgkit.BgkitError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise bgkit.BgkitError(f"{what} {path} is not valid YAML (not UTF-8 text)") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise bgkit.BgkitError(f"{what} {path} is not valid YAML{where}: {' '.join(str(exc).split())}") from None


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    import torch  # noqa: PLC0415  (keep ``import bgkit.provenance`` light)

    return atomic_write(path, lambda fh: torch.save(obj, fh))
