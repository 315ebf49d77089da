"""Parallel tempering through openmmtools: only the target temperature is exported, resumably."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from _cli_helpers import assert_one_line_error, bgkit
from conftest import wait_for_chunks

from bgkit import BgkitError
from bgkit.md.dataset import load_dataset
from bgkit.md.replica_exchange import acceptance, temperature_ladder

ARGS = ["--system", "ala2", "--chunk", "5", "--save-every", "0.5", "--equilibrate", "1", "--seed", "5",
        "--replica-exchange", "3", "--t-max", "450"]


def run_cli(out, ns, **kw):
    return bgkit("simulate", *ARGS, "--ns", ns, "--out", out, **kw)


def test_temperature_ladder_is_geometric():
    t = temperature_ladder(300.0, 600.0, 5)
    assert t[0] == 300.0 and t[-1] == pytest.approx(600.0)
    np.testing.assert_allclose(np.diff(np.log(t)), np.log(2.0) / 4)
    with pytest.raises(BgkitError, match="at least 2"):
        temperature_ladder(300.0, 600.0, 1)
    with pytest.raises(BgkitError, match="exceed"):
        temperature_ladder(300.0, 250.0, 3)


def test_acceptance_counts_both_directions():
    stats = {"accepted": [[0, 3, 0], [1, 0, 0], [0, 0, 0]], "proposed": [[0, 4, 1], [4, 0, 0], [1, 0, 0]]}
    rates = acceptance(stats)
    assert rates[0] == pytest.approx(0.5) and np.isnan(rates[1])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_and_resumed_parallel_tempering(tmp_path):
    out = tmp_path / "pt"
    proc = subprocess.Popen([sys.executable, "-m", "bgkit.cli", "simulate", *ARGS, "--ns", "0.03", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    progress = out / "rep000" / "progress.json"
    wait_for_chunks(progress, 2, timeout=200)
    os.killpg(proc.pid, signal.SIGKILL)  # workers included, probably inside openmmtools
    proc.wait()
    done = json.loads(progress.read_text())["chunks_done"]
    assert 2 <= done < 6, "the run was not interrupted"
    res = run_cli(out, 0.03)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "neighbour swap acceptance" in res.stdout
    data = load_dataset(out)
    assert data.n_frames == 60 and data.xyz.shape == (60, 22, 3)
    np.testing.assert_allclose(data.times_ps, 0.5 * np.arange(1, 61), atol=1e-4)  # no gap, no duplicate
    assert len(np.unique(data.xyz.reshape(60, -1), axis=0)) == 60  # every iteration a new configuration
    assert not (out / "rep000" / "scratch").exists() and not list((out / "rep000").glob(".*.tmp"))
    from bgkit.energy import EnergyModel

    with EnergyModel("ala2", n_workers=1) as model:  # energies at the *target* temperature, of the stored frames
        np.testing.assert_allclose(model(data.xyz), data.energies_kt, rtol=1e-6)
    meta = data.meta
    assert meta["replica_exchange"]["temperatures_K"] == pytest.approx([300.0, 367.42346, 450.0])
    assert meta["replica_exchange"]["exported_temperature_K"] == 300.0
    stats = json.loads((out / "rep000" / "exchange.json").read_text())
    rates = acceptance(stats)
    assert np.asarray(stats["proposed"]).sum() > 0 and all(0.0 < r <= 1.0 for r in rates)
    # extending the run continues the same chain
    assert run_cli(out, 0.04).returncode == 0
    data = load_dataset(out)
    assert data.n_frames == 80
    np.testing.assert_allclose(np.diff(data.times_ps), 0.5, atol=1e-4)
    # the exported frames are a 300 K ensemble: mean u/kT near the shipped 300 K MD's (-23.5, std 5.5),
    # far from the 367 K and 450 K replicas (equipartition over 60 degrees of freedom: about +7 and +15 kT)
    reference = load_dataset("ala2").energies_kt.mean()
    assert abs(data.energies_kt[20:].mean() - reference) < 5.0


def test_replica_exchange_bad_options(tmp_path):
    base = ["simulate", "--system", "ala2", "--ns", "0.01", "--out"]
    assert_one_line_error(bgkit(*base, tmp_path / "a", "--replica-exchange", 3), "--t-max")
    assert_one_line_error(bgkit(*base, tmp_path / "b", "--replica-exchange", 3, "--t-max", 200), "must exceed")
    assert_one_line_error(bgkit(*base, tmp_path / "c", "--t-max", 400), "--replica-exchange")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
