"""`bgkit simulate` extends short datasets, validates before writing, leaves no orphan processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _cli_helpers import assert_one_line_error, bgkit, descendants, kill_all, survivors

from bgkit import BgkitError
from bgkit.md.dataset import load_dataset
from bgkit.md.simulate import simulate

FAST = dict(save_every_ps=0.1, chunk_ps=2.0, equilibrate_ps=0.5, progress=False)


# ------------------------------------------------ extending a run
def test_larger_ns_extends_a_run_whose_last_chunk_is_short(tmp_path):
    out = tmp_path / "md"
    assert simulate("ala2", out, ns=0.001, **FAST) == 10  # one chunk of 10 frames, shorter than --chunk (20)
    assert simulate("ala2", out, ns=0.0015, **FAST) == 15  # ends inside that chunk: one more chunk of 5
    assert simulate("ala2", out, ns=0.003, **FAST) == 30
    ds = load_dataset(out)
    assert ds.n_frames == 30
    np.testing.assert_allclose(ds.times_ps, 0.1 * np.arange(1, 31), atol=1e-4)  # contiguous, no gap or repeat
    assert json.loads((out / "dataset.json").read_text())["settings"]["ns"] == 0.003
    with pytest.raises(BgkitError, match="cannot shorten"):
        simulate("ala2", out, ns=0.002, **FAST)
    assert json.loads((out / "dataset.json").read_text())["settings"]["ns"] == 0.003


# ----------------------------------------- validate before writing
@pytest.mark.parametrize("args, message", [
    (["--ns", "inf"], "--ns must be a finite number"),
    (["--ns", "nan"], "--ns must be a finite number"),
    (["--ns", "1e300"], "too many"),
    (["--ns", "0.01", "--save-every", "inf"], "--save-every must be a finite number"),
    (["--ns", "0.01", "--seed", "-1"], "--seed must be >= 0"),
    (["--ns", "0.01", "--platform", "Nope"], "--platform Nope"),
    (["--ns", "0.01", "--replica-exchange", "2", "--t-max", "inf"], "--t-max must be a finite"),
])
def test_bad_numbers_fail_before_anything_is_written(tmp_path, args, message):
    out = tmp_path / "md"
    assert_one_line_error(bgkit("simulate", "--system", "ala2", *args, "--out", out), message)
    assert not out.exists()


def test_an_unrelated_folder_is_not_used_as_a_dataset(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    assert_one_line_error(bgkit("simulate", "--system", "ala2", "--ns", "0.001", "--out", tmp_path),
                          "is not a bgkit dataset")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


# --------------------------------------------------- no orphans
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_simulate_leaves_no_orphan_processes(tmp_path):
    out = tmp_path / "md"
    proc = subprocess.Popen([sys.executable, "-m", "bgkit.cli", "simulate", "--system", "ala2", "--ns", "10",
                             "--chunk", "2", "--save-every", "0.1", "--equilibrate", "0.5", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    helpers: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "rep000" / "progress.json").exists():
            time.sleep(0.05)
        assert (out / "rep000" / "progress.json").exists(), "the run did not start"
        helpers = descendants(proc.pid)
        assert helpers, "no worker processes found"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert survivors(helpers, timeout=20) == []
    finally:
        proc.kill()
        kill_all(helpers)
