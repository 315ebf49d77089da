"""The README's "From Python" snippet runs as a script saved anywhere, not only in Jupyter at the root."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from _cli_helpers import REPO


def _snippet() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_snippet_guards_its_worker_processes():
    code = _snippet()
    assert 'if __name__ == "__main__":' in code
    assert '"systems/' not in code  # no path relative to the repository root


@pytest.mark.slow
def test_snippet_runs_as_a_script_from_another_folder(tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(_snippet())
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    ess = float(res.stdout.split()[0])
    assert 0 < ess <= 1
