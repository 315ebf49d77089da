"""The command line of the data-to-proposal path — `data check`, `targets ot`, `train` — run as a user does,
its outputs checked against independent computations (mdtraj torsions, brute-force OT, the checkpoint)."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from _cli_helpers import assert_one_line_error, bgkit

pytestmark = pytest.mark.slow  # each test runs several bgkit processes (~1 min in all)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A short ala2 dataset folder (2 replicas x 12 ps) made by `bgkit simulate`."""
    out = tmp_path_factory.mktemp("md") / "ds"
    res = bgkit("simulate", "--system", "ala2", "--ns", 0.012, "--replicas", 2, "--chunk", 6, "--equilibrate", 1,
                "--save-every", 0.5, "--out", out, "--platform", "Reference", timeout=600)
    assert res.returncode == 0, res.stderr
    return out


def test_data_check_counts_the_basins_of_the_frames(tiny_dataset, tmp_path) -> None:
    import mdtraj

    from bgkit.md import load_dataset

    report_path = tmp_path / "check.json"
    res = bgkit("data", "check", tiny_dataset, "--blocks", 2, "--json", report_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(report_path.read_text())
    ds = load_dataset(tiny_dataset)
    traj = mdtraj.Trajectory(ds.xyz.astype(np.float32), ds.system.topology)
    phi = np.degrees(mdtraj.compute_phi(traj)[1][:, 0])
    psi = np.degrees(mdtraj.compute_psi(traj)[1][:, 0])
    expected = {"alpha_L": phi > 0, "alpha_R": (phi <= 0) & (psi >= -120) & (psi < 50)}
    expected["C7eq_beta"] = (phi <= 0) & ~expected["alpha_R"]
    rows = {r["basin"]: r for r in report["basins"]}
    assert set(rows) == set(expected)
    for basin, mask in expected.items():
        assert rows[basin]["frames_in_basin"] == int(mask.sum()), basin
    # each half is the first or second half of every replica's frames (2 replicas here): fractions counted directly
    halves = {"first_half": np.zeros(ds.n_frames, bool), "second_half": np.zeros(ds.n_frames, bool)}
    for rep in np.unique(ds.replica_index):
        frames = np.flatnonzero(ds.replica_index == rep)
        halves["first_half"][frames[: len(frames) // 2]] = True
        halves["second_half"][frames[len(frames) // 2:]] = True
    for basin, mask in expected.items():
        for half, in_half in halves.items():
            assert rows[basin][half][0] == pytest.approx(mask[in_half].mean(), abs=1e-12), (basin, half)
    assert "all basins agree" in res.stdout
    # the same command again refuses to overwrite its JSON report
    assert_one_line_error(bgkit("data", "check", tiny_dataset, "--json", report_path), "exists", "--force")
    assert_one_line_error(bgkit("data", "check", tmp_path / "nothing-here"), "nothing-here")


def test_targets_ot_are_an_optimal_assignment_of_the_frames(tiny_dataset, tmp_path) -> None:
    """Blocks of 6 pairs: each block's assignment beats every other permutation (brute force, 720 each)."""
    from bgkit.coords import representation_from_state
    from bgkit.md import load_dataset
    from bgkit.train.targets import load_targets, pair_cost

    out = tmp_path / "t.npz"
    res = bgkit("targets", "ot", "--system", "ala2", "--data", tiny_dataset, "--coords", "internal", "--n", 12,
                "--block-size", 6, "--out", out)
    assert res.returncode == 0, res.stderr
    t = load_targets(out)
    rep = representation_from_state(t.provenance["transform"])
    ds = load_dataset(tiny_dataset)
    train = ds.split("train")
    frames = train[np.linspace(0, len(train) - 1, 12).round().astype(int)]
    y, _ = rep.to_flow(frames)
    # every training frame appears exactly once among the targets
    dist = pair_cost(t.x1, y.numpy(), rep.periodic)
    assert dist.min(1).max() < 1e-4 < np.sort(dist, 1)[:, 1].min() and len(set(dist.argmin(1))) == 12
    for block in (slice(0, 6), slice(6, 12)):
        cost = pair_cost(t.x0[block], t.x1[block], rep.periodic)
        chosen = np.trace(cost)
        best = min(sum(cost[i, p[i]] for i in range(6)) for p in itertools.permutations(range(6)))
        assert chosen == pytest.approx(best, rel=1e-12)
    assert t.provenance["coords"] == "internal" and "wrapped" in t.provenance["cost"]
    assert_one_line_error(bgkit("targets", "ot", "--system", "ala2", "--data", tiny_dataset, "--n", 12,
                                "--out", out), "exists", "--force")
    assert_one_line_error(bgkit("targets", "ot", "--system", "ala3", "--data", tiny_dataset, "--n", 12,
                                "--out", tmp_path / "u.npz"), "topology")


def test_train_resumes_to_more_steps_and_guards_its_checkpoint(tiny_dataset, tmp_path) -> None:
    import torch

    from bgkit.checkpoint import load_checkpoint

    args = ["train", "--system", "ala2", "--data", tiny_dataset, "--arch", "realnvp", "--objective", "mle",
            "--coords", "internal", "--batch-size", 8, "--hparams", '{"hidden": 8, "n_layers": 2}']
    out = tmp_path / "m.pt"
    res = bgkit(*args, "--steps", 6, "--out", out)
    assert res.returncode == 0, res.stderr
    first = load_checkpoint(out)
    assert first["step"] == 6 and first["final"] and first["config"]["warmup_steps"] == 0
    # the representation is stored once, under extra["coords"] (format 2)
    assert first["format_version"] == 2 and first["extra"]["coords"]["kind"] == "internal"
    assert "transform" not in first["extra"] and "coords" not in first["extra"]["training"]
    assert_one_line_error(bgkit(*args, "--steps", 6, "--out", out), "exists", "--resume", "--force")
    res = bgkit(*args, "--steps", 10, "--out", out, "--resume")
    assert res.returncode == 0, res.stderr
    resumed = load_checkpoint(out)
    assert resumed["step"] == 10 and len(resumed["history"]) > len(first["history"])
    assert any(not torch.equal(a, b) for a, b in zip(first["model"].values(), resumed["model"].values()))
    assert_one_line_error(bgkit(*args, "--steps", 10, "--lr", 1e-2, "--out", out, "--resume"), "lr")
    assert_one_line_error(bgkit(*args, "--steps", 0, "--out", tmp_path / "z.pt"), "--steps")
    assert_one_line_error(bgkit(*args, "--steps", 4, "--hparams", "[1]", "--out", tmp_path / "z.pt"), "JSON object")
    assert_one_line_error(bgkit("train", "--system", "ala2", "--data", tiny_dataset, "--arch", "nsf", "--objective",
                                "regflow", "--steps", 4, "--out", tmp_path / "r.pt"), "--targets")
    assert math.isfinite(resumed["metrics"]["final_val_loss"])
