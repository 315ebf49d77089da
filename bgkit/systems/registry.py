"""Where systems are found: the shipped systems and :func:`load_system` (a shipped name or a folder).

The shipped systems are the sub-folders of the repository's ``systems/`` directory (or
``$BGKIT_SYSTEMS``) that hold a ``system.yaml``; every command accepts a shipped name or the path of
such a folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from bgkit import BgkitError
from bgkit.systems.spec import SystemSpec
from bgkit.systems.system import System

__all__ = ["load_system", "shipped_systems", "systems_dir"]


def systems_dir() -> Path:
    """The folder holding the shipped systems (``$BGKIT_SYSTEMS`` overrides)."""
    env = os.environ.get("BGKIT_SYSTEMS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "systems"


def shipped_systems() -> list[str]:
    """Names of the shipped systems (sub-folders with a system.yaml)."""
    root = systems_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "system.yaml").is_file())


def load_system(name_or_path: str | os.PathLike | System) -> System:
    """A shipped system by name, or a user system from a folder (or its system.yaml)."""
    if isinstance(name_or_path, System):
        return name_or_path
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        path = path.parent
    if path.is_dir():
        yaml_path = path / "system.yaml"
        if not yaml_path.is_file():
            raise BgkitError(f"{path} is not a system folder: it has no system.yaml")
        return System(SystemSpec.from_yaml(yaml_path), path)
    if text in shipped_systems():
        folder = systems_dir() / text
        return System(SystemSpec.from_yaml(folder / "system.yaml"), folder)
    choices = ", ".join(shipped_systems()) or "none found"
    raise BgkitError(f"unknown system '{text}': not a shipped system ({choices}) nor a folder with a system.yaml")
