"""bgkit sample / evaluate / plot end to end on a small trained proposal; bad input fails cleanly."""
from __future__ import annotations

import json

import numpy as np
import pytest
from _cli_helpers import assert_one_line_error, bgkit

from bgkit import BgkitError

pytestmark = pytest.mark.slow  # trains a proposal on fresh MD in its fixture


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
    test = ds.xyz[ds.split_indices()["test"]].astype(np.float64)
    log_q = log_q_by_hand(Proposal.load(trained / "m.pt"), test)
    assert metrics["nll_test"] == pytest.approx(-np.mean(log_q), rel=1e-5)
    with EnergyModel("ala2", n_workers=1) as m:
        log_w = -m(test) - log_q
    assert metrics["log_w_std_test"] == pytest.approx(np.std(log_w[np.isfinite(log_w)]), rel=1e-3)
    figures = {fig: read_figure(out / fig) for fig in ("ramachandran.png", "energies.png", "log_weights.png")}
    # the plot commands draw figures of the evaluation folder and of the dataset
    energies = read_figure(tmp_path / "e.png", bgkit("plot", "energies", out, "--out", tmp_path / "e.png"))
    weights = read_figure(tmp_path / "w.png", bgkit("plot", "weights", out, "--out", tmp_path / "w.png"))
    np.testing.assert_array_equal(weights, figures["log_weights.png"])  # the same log-weights, the same figure
    assert energies.shape != weights.shape or not np.array_equal(energies, weights)
    read_figure(tmp_path / "r.png", bgkit("plot", "ramachandran", trained / "md", "--out", tmp_path / "r.png"))


def log_q_by_hand(proposal, xyz: np.ndarray) -> np.ndarray:
    """log q [B] of frames [B, N, 3] (nm), not through the proposal's log_prob: flow vectors and the
    representation's log-det from its to_flow (checked against autograd in test_contracts.py), the flow's
    log|det| of the inverse from its autograd Jacobian (float64), and the prior written out (N(0, 1) per
    ordinary dimension, uniform on [-pi, pi) per periodic one)."""
    import copy
    import math

    import torch

    y, logdet_to = proposal.transform.to_flow(torch.as_tensor(xyz, dtype=torch.float64))
    flow = copy.deepcopy(proposal.flow).double()
    periodic = set(proposal.transform.periodic)
    assert set(flow.periodic) == periodic
    ordinary = [i for i in range(y.shape[1]) if i not in periodic]
    out = []
    for row, ld_to in zip(y, logdet_to):
        z = flow.inverse(row[None])[0][0].detach()
        jac = torch.autograd.functional.jacobian(lambda v: flow.inverse(v[None])[0][0], row)
        sign, logdet = torch.linalg.slogdet(jac)
        assert sign > 0
        prior = (-0.5 * float(z[ordinary] @ z[ordinary]) - 0.5 * len(ordinary) * math.log(2 * math.pi)
                 - len(periodic) * math.log(2 * math.pi))
        out.append(prior + float(logdet) + float(ld_to))
    return np.array(out)


def read_figure(path, res=None) -> np.ndarray:
    """The pixels of a PNG figure, checked to be drawn (many colours: axes, bars, text); with ``res``, the plot
    command that wrote it succeeded and said so."""
    import matplotlib.image

    if res is not None:
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == f"wrote {path}", res.stdout
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) >= 200, (path, pixels.shape)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20, path  # not a blank canvas
    return pixels


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


@pytest.mark.parametrize("threads", [1, 2])
def test_pipeline_draws_the_samples_of_sequential_sampling(threads):
    """The pipeline's flow threads push the one generator's prior draws, in order: its samples and log q are
    those of Proposal.sample called batch after batch with the same seed, its energies OpenMM's, and the
    caller's torch thread count is restored."""
    import torch

    from bgkit.energy import EnergyModel
    from bgkit.proposal import Proposal
    from bgkit.sample import draw
    from bgkit.systems import load_system

    system = load_system("ala2")
    proposal = Proposal.load(system.folder / "proposal.pt", system=system)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = draw(proposal, system, n=2500, batch_size=1000, seed=3, n_workers=1, progress=False)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    generator = torch.Generator().manual_seed(3 * 1000003)
    batches = [proposal.sample(b, generator=generator) for b in (1000, 1000, 500)]
    np.testing.assert_allclose(result.xyz, np.concatenate([x for x, _ in batches]), atol=1e-5)
    np.testing.assert_allclose(result.log_q, np.concatenate([lq for _, lq in batches]), atol=1e-3)
    with EnergyModel(system, n_workers=1) as model:
        np.testing.assert_allclose(result.energy_kt, model(result.xyz), rtol=1e-9)
