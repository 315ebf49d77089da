"""Running the ``bgkit`` command line as a user does, for the CLI safety tests."""
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
    return subprocess.run([*prefix, sys.executable, "-m", "bgkit.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=full_env, timeout=timeout, **kw)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 1, stderr exactly one ``error: ...`` line containing every fragment; returns it."""
    err = result.stderr.strip()
    assert result.returncode == 1, (result.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    for f in fragments:
        assert f in err, (f, err)
    return err
