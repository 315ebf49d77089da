"""Two-process torchrun (gloo) training: valid checkpoint, identical ranks, sharding, resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _dist_train import config, small_flow, toy_data
from bgkit.flows import build_flow
from bgkit.train import load_checkpoint, train

HELPER = Path(__file__).with_name("_dist_train.py")
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def torchrun(*args: str, timeout: float = 150.0, target: tuple[str, ...] = (str(HELPER),)) -> subprocess.CompletedProcess:
    """Run ``target`` (default: the helper) under `torchrun --nproc_per_node 2 --standalone` (group-killed on timeout)."""
    # PYTHONFAULTHANDLER: a worker killed by a C++ abort prints every thread's Python stack
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", *target, *args]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun timed out after {timeout} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def _ranks(dump: Path) -> tuple[dict, dict]:
    return torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")


@pytest.mark.slow
def test_two_ranks_train_identically_and_match_one_process(tmp_path: Path) -> None:
    ck, dump = tmp_path / "ck.pt", tmp_path / "dump"
    run = torchrun(str(ck), str(dump), "--steps", "12")
    assert run.returncode == 0, run.stdout[-3000:]
    r0, r1 = _ranks(dump)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # the ranks hold identical parameters
    state = load_checkpoint(ck)
    assert state["final"] and state["step"] == 12 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert np.isfinite(state["metrics"]["final_val_loss"]) and state["extra"]["system"] == "toy"
    assert all(torch.equal(state["model"][k], r0[k]) for k in r0)
    rebuilt = build_flow(state["flow"]["arch"], state["flow"]["dim"], **state["flow"]["hparams"])
    rebuilt.load_state_dict(state["model"])
    # sharding: two half-batches (distinct slices of each global batch) ≈ one process on the global batch
    single = small_flow()
    train(single, toy_data("regflow"), None, config("regflow", 12), tmp_path / "single.pt", progress=False)
    for k, v in single.state_dict().items():
        torch.testing.assert_close(r0[k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_distributed_resume_after_crash_is_bit_identical(tmp_path: Path) -> None:
    full, part = tmp_path / "full.pt", tmp_path / "part.pt"
    uninterrupted = torchrun(str(full), str(tmp_path / "d_full"), "--augment")
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-3000:]
    crashed = torchrun(str(part), str(tmp_path / "d_crash"), "--crash-at", "8")
    assert crashed.returncode != 0 and "simulated crash" in crashed.stdout, crashed.stdout[-3000:]
    assert load_checkpoint(part)["step"] == 5
    resumed = torchrun(str(part), str(tmp_path / "d_resumed"), "--augment", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    a, b = load_checkpoint(full), load_checkpoint(part)
    for key in ("model", "raw_model"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    for r in range(2):  # per-rank RNG states restored and advanced identically
        assert torch.equal(a["rng"][r]["torch"], b["rng"][r]["torch"])
    r0, r1 = _ranks(tmp_path / "d_resumed")
    assert all(torch.equal(r0[k], r1[k]) and torch.equal(r0[k], a["model"][k]) for k in r0)


@pytest.mark.slow
def test_two_rank_sampling_gathers_each_ranks_share(tmp_path: Path) -> None:
    """`bgkit sample` under torchrun: rank 0 writes all samples; its share equals a one-process draw of its seed."""
    from bgkit.sample import draw, load_proposal, load_sample_folder

    out = tmp_path / "s"
    run = torchrun("sample", "--system", "ala2", "--n", "60", "--batch-size", "20", "--workers", "1", "--seed", "4",
                   "--out", str(out), target=("-m", "bgkit.cli", "--"))
    assert run.returncode == 0, run.stdout[-3000:]
    assert run.stdout.count("wrote ") == 1  # only rank 0 writes
    folder = load_sample_folder(out)
    assert folder["summary"]["n"] == 60
    alone = draw(load_proposal("ala2"), "ala2", n=30, batch_size=20, seed=4, n_workers=1, progress=False)
    np.testing.assert_allclose(folder["log_q"][:30], alone.log_q, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(folder["energy_kt"][:30], alone.energy_kt, rtol=1e-5, atol=1e-3)
    assert not np.allclose(folder["log_q"][30:], alone.log_q)  # rank 1 drew with its own seed


@pytest.mark.slow
def test_two_rank_cli_training_writes_one_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    run = torchrun("train", "--system", "ala2", "--arch", "nsf", "--objective", "mle", "--coords", "internal",
                   "--steps", "6", "--batch-size", "64", "--hparams", '{"hidden": 16, "n_layers": 2}', "--out", str(out),
                   target=("-m", "bgkit.cli", "--"))
    assert run.returncode == 0, run.stdout[-3000:]
    assert run.stdout.count(f"wrote {out}") == 1  # rank 0 reports the checkpoint it wrote
    state = load_checkpoint(out)
    assert state["final"] and state["step"] == 6 and state["world_size"] == 2 and len(state["rng"]) == 2
