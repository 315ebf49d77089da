"""bgkit sample / evaluate / plot end to end on a small trained proposal; bad input fails cleanly."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bgkit import BgkitError

pytestmark = pytest.mark.slow  # trains a proposal on fresh MD in its fixture


def bgkit(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bgkit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(res, *fragments):
    assert res.returncode != 0
    err = res.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 200-frame ala2 dataset, OT targets and a 30-step RegFlow NSF trained on them."""
    from bgkit.md.simulate import simulate
    from bgkit.train.molecular import make_ot_targets, train_proposal

    root = tmp_path_factory.mktemp("pipeline")
    simulate("ala2", root / "md", ns=0.02, save_every_ps=0.1, chunk_ps=10, equilibrate_ps=1, progress=False)
    make_ot_targets("ala2", root / "t.npz", data=str(root / "md"), block_size=200)
    train_proposal("ala2", "nsf", "regflow", root / "m.pt", targets=str(root / "t.npz"), data=str(root / "md"),
                   hparams={"hidden": 32, "n_layers": 2},
                   config_overrides={"steps": 30, "batch_size": 32, "warmup_steps": 3, "val_every": 10,
                                     "ckpt_every": 10},
                   progress=False)
    return root


def test_sample_writes_complete_folder(trained, tmp_path):
    out = tmp_path / "s"
    res = bgkit("sample", "--system", "ala2", "--model", trained / "m.pt", "--n", 300, "--batch-size", 128,
                "--out", out, "--workers", 1)
    assert res.returncode == 0, res.stderr
    for text in ("ESS", "non-finite", "clipped", "samples/s"):
        assert text in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    for key in ("n", "ess", "ess_fraction", "n_nonfinite", "n_clipped", "seconds", "n_wrong_chirality"):
        assert key in summary
    assert summary["n"] == 300
    with np.load(out / "weights.npz") as w:
        assert {"log_q", "energy_kt", "log_w", "resampled"} <= set(w.files)
        assert w["log_q"].shape == w["energy_kt"].shape == w["log_w"].shape == (300,)
        # log w = -u - log q wherever the sample is valid
        ok = np.isfinite(w["log_w"])
        np.testing.assert_allclose(w["log_w"][ok], -w["energy_kt"][ok] - w["log_q"][ok])
    import mdtraj

    traj = mdtraj.load(str(out / "samples.h5"))
    assert traj.n_frames == 300 and traj.n_atoms == 22
    # the stored energies are those of the stored samples
    from bgkit.energy import EnergyModel

    with EnergyModel("ala2", n_workers=1) as m, np.load(out / "weights.npz") as w:
        e = m(traj.xyz[:20].astype(np.float64))
        fin = np.isfinite(e)
        np.testing.assert_allclose(e[fin], w["energy_kt"][:20][fin], rtol=1e-4, atol=1e-3)  # h5 stores float32


def test_evaluate_metrics_and_figures(trained, tmp_path):
    out = tmp_path / "ev"
    res = bgkit("evaluate", "--system", "ala2", "--model", trained / "m.pt", "--n", 300, "--data", trained / "md",
                "--out", out, "--workers", 1)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("ess", "e_w2_proposal", "e_w2_resampled", "t_w2_proposal", "t_w2_resampled", "nll_test",
                "log_w_std_test", "samples_per_second"):
        assert np.isfinite(metrics[key]), key
    # the log-weight spread over the MD test frames, from OpenMM energies (not the dataset's stored ones)
    from bgkit.energy import EnergyModel
    from bgkit.md.dataset import load_dataset
    from bgkit.proposal import Proposal

    ds = load_dataset(trained / "md")
    test = ds.xyz[ds.split_indices()["test"]]
    with EnergyModel("ala2", n_workers=1) as m:
        log_w = -m(test) - Proposal.load(trained / "m.pt").log_prob(test)
    assert metrics["log_w_std_test"] == pytest.approx(np.std(log_w[np.isfinite(log_w)]), rel=1e-3)
    assert metrics["nll_test"] == pytest.approx(-np.mean(Proposal.load(trained / "m.pt").log_prob(test)), rel=1e-9)
    for fig in ("ramachandran.png", "energies.png", "log_weights.png"):
        assert (out / fig).stat().st_size > 1000
    for cmd, name in (("energies", "e.png"), ("weights", "w.png")):
        r = bgkit("plot", cmd, out, "--out", tmp_path / name)
        assert r.returncode == 0, r.stderr
    r = bgkit("plot", "ramachandran", trained / "md", "--out", tmp_path / "r.png")
    assert r.returncode == 0 and (tmp_path / "r.png").stat().st_size > 1000


def test_export_slims_checkpoint_and_keeps_behaviour(trained, tmp_path):
    from bgkit.proposal import Proposal

    slim = tmp_path / "slim.pt"
    res = bgkit("export", trained / "m.pt", slim)
    assert res.returncode == 0, res.stderr
    assert slim.stat().st_size < (trained / "m.pt").stat().st_size
    full, small = Proposal.load(trained / "m.pt"), Proposal.load(slim, system="ala2")
    xyz, _ = full.sample(8)
    np.testing.assert_allclose(small.log_prob(xyz), full.log_prob(xyz))
    assert small.info["training"]["train_frames"] == full.info["training"]["train_frames"]
    assert_one_line_error(bgkit("export", trained / "m.pt", slim), "--force")
    assert_one_line_error(bgkit("export", tmp_path / "missing.pt", tmp_path / "x.pt"), "does not exist")


def test_proposal_checks_its_system(trained):
    from bgkit.proposal import Proposal

    p = Proposal.load(trained / "m.pt", system="ala2")
    xyz, log_q = p.sample(16)
    np.testing.assert_allclose(p.log_prob(xyz + 0.37), log_q, rtol=1e-4, atol=1e-3)  # translation invariant
    with pytest.raises(BgkitError, match="trained for system 'ala2'"):
        Proposal.load(trained / "m.pt", system="ala4")


def test_bad_input(trained, tmp_path):
    model = trained / "m.pt"
    assert_one_line_error(bgkit("sample", "--system", "ala4", "--model", model, "--n", 10), "trained for system 'ala2'")
    assert_one_line_error(bgkit("sample", "--system", "ala2", "--model", model, "--n", 0), "--n")
    assert_one_line_error(bgkit("sample", "--system", "ala2", "--model", model, "--n", -5), "--n")
    assert_one_line_error(bgkit("sample", "--system", "ala2", "--model", tmp_path / "nope.pt", "--n", 10), "not found")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    assert_one_line_error(bgkit("sample", "--system", "ala2", "--model", truncated, "--n", 10), "truncated or corrupted")
    corrupted = tmp_path / "corrupt.pt"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\xff" * 64
    corrupted.write_bytes(bytes(raw))
    assert_one_line_error(bgkit("sample", "--system", "ala2", "--model", corrupted, "--n", 10), "corrupted")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert_one_line_error(bgkit("sample", "--system", "ala2", "--model", model, "--n", 10, "--out", existing), "--force")
    assert (existing / "keep.txt").read_text() == "mine"
