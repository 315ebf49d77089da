"""Reference MD: a run killed at an arbitrary moment and resumed equals an uninterrupted run."""
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

ARGS = ["--system", "ala2", "--ns", "0.03", "--chunk", "2", "--save-every", "0.1", "--equilibrate", "0.5", "--seed", "7"]


def run_cli(out, **kw):
    return bgkit("simulate", *ARGS, "--out", out, **kw)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("md") / "full"
    res = run_cli(out)
    assert res.returncode == 0, res.stderr
    return load_dataset(out)


@pytest.mark.timeout(300)
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, uninterrupted):
    out = tmp_path / "resumed"
    proc = subprocess.Popen([sys.executable, "-m", "bgkit.cli", "simulate", *ARGS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    progress = out / "rep000" / "progress.json"
    wait_for_chunks(progress, 4, timeout=120)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, workers included, mid-chunk
    proc.wait()
    done = json.loads(progress.read_text())["chunks_done"]
    assert 4 <= done < 15, "the run was not interrupted"
    # debris a crash can leave: a half-written temporary file and a chunk beyond the recorded progress
    (out / "rep000" / f".chunk{done:05d}.xtc.tmp").write_bytes(b"partial")
    (out / "rep000" / f"chunk{done + 1:05d}.xtc").write_bytes(b"garbage")
    res = run_cli(out)
    assert res.returncode == 0, res.stderr
    data = load_dataset(out)
    assert data.n_frames == uninterrupted.n_frames == 300
    np.testing.assert_allclose(np.diff(data.times_ps), 0.1, atol=1e-4)  # continuous, no gap, no duplicate
    assert data.times_ps[0] == pytest.approx(0.1, abs=1e-4)
    np.testing.assert_array_equal(data.xyz, uninterrupted.xyz)  # the same trajectory, frame for frame
    np.testing.assert_array_equal(data.energies_kt, uninterrupted.energies_kt)
    assert not list((out / "rep000").glob(".*.tmp"))
    # running the finished command again changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in (out / "rep000").iterdir()}
    assert run_cli(out).returncode == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "rep000").iterdir() if p.name != "progress.json"} == \
        {k: v for k, v in before.items() if k != "progress.json"}


def test_dataset_contents_and_provenance(uninterrupted):
    d = uninterrupted
    meta = d.meta
    assert meta["integrator"] == "LangevinMiddleIntegrator" and meta["settings"]["friction_per_ps"] == 1.0
    assert meta["settings"]["step_fs"] == 1.0 and meta["temperature_K"] == 300.0
    assert "bgkit_version" in meta["provenance"][0] and "simulate" in meta["provenance"][0]["command"]
    assert d.xyz.shape == (300, 22, 3) and d.simulated_ns == pytest.approx(0.03)
    from bgkit.energy import EnergyModel

    with EnergyModel("ala2", n_workers=1) as model:
        np.testing.assert_allclose(model(d.xyz), d.energies_kt, rtol=1e-6)
    assert d.trajectory().n_frames == 300


def test_splits_are_contiguous_blocks(uninterrupted):
    idx = uninterrupted.split_indices((0.8, 0.1, 0.1))
    assert [len(idx[k]) for k in ("train", "val", "test")] == [240, 30, 30]
    assert np.array_equal(np.sort(np.concatenate(list(idx.values()))), np.arange(300))
    assert idx["train"].max() < idx["val"].min() and idx["val"].max() < idx["test"].min()
    with pytest.raises(BgkitError, match="fractions"):
        uninterrupted.split_indices((0.5, 0.6, 0.1))


def test_changed_settings_refuse_to_resume(uninterrupted):
    res = bgkit("simulate", *ARGS[:-2], "--seed", "8", "--out", uninterrupted.folder, timeout=120)
    assert_one_line_error(res, "other settings")


def _run_ns(out, ns):
    args = [a if a != "0.03" else str(ns) for a in ARGS]
    return bgkit("simulate", *args, "--out", out)


@pytest.mark.timeout(300)
def test_state_written_before_the_commit_is_ignored(tmp_path, uninterrupted):
    """Killed after a chunk's end state was written but before progress.json named it: resume from the old state."""
    out = tmp_path / "window"
    assert _run_ns(out, 0.02).returncode == 0  # 10 of the 15 chunks
    rep = out / "rep000"
    progress = json.loads((rep / "progress.json").read_text())
    assert progress["chunks_done"] == 10 and progress["state"] == "state00010.xml"
    assert sorted(p.name for p in rep.glob("state*")) == ["state00010.xml"]
    # debris of chunk 10 killed just before its commit: its frames and a state from further along
    (rep / "state00011.xml").write_text((uninterrupted.folder / "rep000" / "state00015.xml").read_text())
    (rep / "chunk00010.xtc").write_bytes((uninterrupted.folder / "rep000" / "chunk00010.xtc").read_bytes())
    assert run_cli(out).returncode == 0
    data = load_dataset(out)
    np.testing.assert_array_equal(data.xyz, uninterrupted.xyz)  # continued from state00010, not the debris
    assert sorted(p.name for p in rep.glob("state*")) == ["state00015.xml"]


@pytest.mark.timeout(300)
def test_datasets_with_a_single_state_file_resume(tmp_path, uninterrupted):
    """Datasets written before end states were named per chunk (the shipped ones) keep one state.xml."""
    out = tmp_path / "legacy"
    assert _run_ns(out, 0.02).returncode == 0
    rep = out / "rep000"
    (rep / "state00010.xml").rename(rep / "state.xml")
    progress = json.loads((rep / "progress.json").read_text())
    del progress["state"]
    (rep / "progress.json").write_text(json.dumps(progress))
    assert run_cli(out).returncode == 0
    np.testing.assert_array_equal(load_dataset(out).xyz, uninterrupted.xyz)
    assert not (rep / "state.xml").exists()
