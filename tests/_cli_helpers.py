"""Running the ``bgkit`` command line as a user does: the one runner and one-line-error check of the CLI tests,
and the process-tree helpers of the no-orphan tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bgkit(*args, cwd=None, env=None, timeout=300, prefix=(), **kw) -> subprocess.CompletedProcess:
    """``python -m bgkit.cli ARGS`` in a subprocess (text output captured), after the command ``prefix``."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("BGKIT_DEBUG", None)
    return subprocess.run([*prefix, sys.executable, "-m", "bgkit.cli", *map(str, args)], check=False,
                          capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout, **kw)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A bad-input error as the CLI documents it: exit status 1, no traceback on stderr or stdout, and stderr
    exactly one ``error: ...`` line naming the problem (containing every fragment); returns that line."""
    err = result.stderr.strip()
    assert result.returncode == 1, (result.returncode, err)
    assert "Traceback" not in err and "Traceback" not in result.stdout, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    for f in fragments:
        assert f in err, (f, err)
    return err


def cli_commands(group, prefix: str = ""):
    """(full name, click command) of every command below the click ``group``, e.g. ("teacher train", ...)."""
    import click

    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from cli_commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def _children() -> dict[int, list[int]]:
    """parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            tree.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(d.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited


def survivors(pids: list[int], timeout: float = 20.0) -> list[int]:
    """The processes of ``pids`` still alive after waiting up to ``timeout`` seconds for all to exit."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and any(process_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if process_alive(p)]


def kill_all(pids: list[int]) -> None:
    """SIGKILL every process of ``pids`` that is still alive (test clean-up)."""
    import signal

    for p in pids:
        if process_alive(p):
            os.kill(p, signal.SIGKILL)

