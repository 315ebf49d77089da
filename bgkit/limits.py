"""Bounds of the size and number options, checked before a command does any work.

Every count a user gives (samples, pairs, steps, frames, chunk and batch sizes, workers) is checked
against a stated bound and, where it decides how much memory or disk a run takes, against what this
machine has; every float option must be finite and in its range. Each failure is a one-line
:class:`~bgkit.BgkitError` naming the option and the bound. Worker counts above the core count are
capped (:func:`cap_workers`), with a note for the user.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from bgkit import BgkitError

__all__ = ["MAX_COUNT", "MAX_STEPS", "MAX_BATCH", "check_int", "check_float", "available_memory", "free_disk",
           "check_memory", "check_disk", "cap_workers", "human_bytes"]

#: largest number of samples, pairs or frames a command accepts
MAX_COUNT = 10**9
#: largest number of optimiser or integration steps
MAX_STEPS = 10**8
#: largest batch or chunk of rows handled at once
MAX_BATCH = 10**7
#: the share of the available memory (disk) one command may plan to use
_SHARE = 0.8


def check_int(option: str, value: int | None, low: int = 1, high: int = MAX_COUNT) -> int | None:
    """``value`` (None passes) unless it is not an integer in [low, high]: BgkitError naming ``option``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BgkitError(f"{option} must be a whole number, got {value!r}")
    if value < low:
        raise BgkitError(f"{option} must be >= {low}, got {value}")
    if value > high:
        raise BgkitError(f"{option} must be <= {high:,}, got {value:,}")
    return value


def check_float(option: str, value: float | None, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float | None:
    """``value`` (None passes) unless it is not a finite number in its range: BgkitError naming ``option``."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise BgkitError(f"{option} must be a number, got {value!r}") from None
    lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    rng = " and ".join(r for r in (lo, hi) if r)
    ok = math.isfinite(x) and (low is None or (x > low if low_open else x >= low)) \
        and (high is None or (x < high if high_open else x <= high))
    if not ok:
        raise BgkitError(f"{option} must be a finite number{' ' + rng if rng else ''}, got {value}")
    return x


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system that will hold ``path`` (its nearest existing folder), None if unknown."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000.0
    return f"{n:.3g} EB"  # pragma: no cover


def check_memory(option: str, value: int | float, nbytes: float, what: str) -> None:
    """BgkitError if ``nbytes`` (what ``option value`` makes the run hold in memory) exceeds the memory available."""
    avail = available_memory()
    if avail is not None and nbytes > _SHARE * avail:
        raise BgkitError(f"{option} {value} needs about {human_bytes(nbytes)} of memory for {what}, more than this "
                         f"machine has available ({human_bytes(avail)}): choose a smaller {option}")


def check_disk(option: str, value: int | float, nbytes: float, path: str | os.PathLike, what: str) -> None:
    """BgkitError if ``nbytes`` (what ``option value`` writes under ``path``) exceeds the free disk space there."""
    free = free_disk(path)
    if free is not None and nbytes > _SHARE * free:
        raise BgkitError(f"{option} {value} writes about {human_bytes(nbytes)} of {what}, more than the free disk "
                         f"space at {path} ({human_bytes(free)}): choose a smaller {option} or another --out")


def cap_workers(option: str, workers: int | None, note=None) -> int | None:
    """``workers`` (None: all cores) checked (>= 1) and capped at the core count; ``note(text)`` is told of a cap."""
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise BgkitError(f"{option} must be >= 1 (omit it to use all cores), got {workers}")
    cores = os.cpu_count() or 1
    if workers > cores:
        if note is not None:
            note(f"{option} {workers} is more than the {cores} cores of this machine: using {cores}")
        return cores
    return workers
