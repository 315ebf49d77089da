"""Training in internal coordinates end to end: OT targets, RegFlow and MLE, NSF and RealNVP, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _cli_helpers import assert_one_line_error, bgkit

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.slow  # ~2 min: trains six small flows

SMALL = {"steps": 20, "batch_size": 64, "warmup_steps": 2, "val_every": 10, "ckpt_every": 10}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Internal-coordinate OT targets (300 ala2 frames) and four short runs: RegFlow/MLE x NSF/RealNVP."""
    from bgkit.train.molecular import make_ot_targets, train_proposal

    root = tmp_path_factory.mktemp("internal")
    info = make_ot_targets("ala2", root / "t.npz", n=300, block_size=300, coords="internal")
    for arch in ("nsf", "realnvp"):
        train_proposal("ala2", arch, "regflow", root / f"{arch}-regflow.pt", targets=str(root / "t.npz"),
                       hparams={"hidden": 32, "n_layers": 4}, config_overrides=SMALL, progress=False)
        train_proposal("ala2", arch, "mle", root / f"{arch}-mle.pt", coords="internal", max_frames=300,
                       hparams={"hidden": 32, "n_layers": 4}, config_overrides=SMALL, progress=False)
    return root, info


def test_targets_are_in_internal_coordinates(runs) -> None:
    from bgkit.coords import representation_from_state
    from bgkit.train.targets import load_targets

    root, info = runs
    t = load_targets(root / "t.npz")
    rep = representation_from_state(t.provenance["transform"])
    assert rep.kind == "internal" and t.x0.shape == (300, 60) and info["coords"] == "internal"
    per = list(rep.periodic)
    assert per and np.abs(t.x1[:, per]).max() <= np.pi and np.abs(t.x0[:, per]).max() <= np.pi
    assert "wrapped" in t.provenance["cost"] and info["aligned_groups"] == []  # no relabelling in internal coords


@pytest.mark.parametrize("arch", ["nsf", "realnvp"])
@pytest.mark.parametrize("objective", ["regflow", "mle"])
def test_proposal_remembers_its_representation(runs, arch, objective) -> None:
    """sample/log_prob use the stored representation: log q of the samples, recomputed from positions, agrees."""
    from bgkit.proposal import Proposal
    from bgkit.chirality import check_chirality, chiral_centres, chirality_signs
    from bgkit.systems import load_system

    root, _ = runs
    p = Proposal.load(root / f"{arch}-{objective}.pt", system="ala2")
    assert p.transform.kind == "internal" and p.info["coords"] == "internal" and p.finished
    assert p.flow.periodic == p.transform.periodic and len(p.flow.periodic) > 0
    xyz, log_q = p.sample(300, generator=torch.Generator().manual_seed(0))
    assert xyz.shape == (300, 22, 3) and np.isfinite(log_q).all()
    np.testing.assert_allclose(p.log_prob(xyz), log_q, atol=2e-3 * np.abs(log_q).max())
    s = load_system("ala2")
    quads = chiral_centres(s.topology)
    assert check_chirality(xyz, quads, chirality_signs(s.positions, quads)[0]).all()


def test_cli_train_sample_export_in_internal_coordinates(runs, tmp_path) -> None:
    root, _ = runs
    res = bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "mle", "--coords", "internal",
                "--max-frames", 300, "--steps", 10, "--batch-size", 64, "--hparams", '{"hidden": 16, "n_layers": 2}',
                "--out", tmp_path / "m.pt")
    assert res.returncode == 0, res.stderr
    res = bgkit("sample", "--system", "ala2", "--model", tmp_path / "m.pt", "--n", 200, "--workers", 1,
                "--out", tmp_path / "s")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["n_wrong_chirality"] == 0 and summary["n"] == 200
    assert ("warning: ESS/N" in res.stderr) == (summary["ess_fraction"] < 0.01)
    # the 30-step Cartesian flow of bgkit 0.1: one sample carries the weight, and the output says so
    res = bgkit("sample", "--system", "ala2", "--model", DATA / "legacy_proposal.pt", "--n", 300, "--workers", 1,
                "--out", tmp_path / "legacy")
    assert res.returncode == 0 and "warning: ESS/N" in res.stderr and "unreliable" in res.stderr
    res = bgkit("export", tmp_path / "m.pt", tmp_path / "p.pt")
    assert res.returncode == 0, res.stderr
    from bgkit.proposal import Proposal

    assert Proposal.load(tmp_path / "p.pt").transform.kind == "internal"
    # RegFlow takes the representation from its targets; a contradicting --coords is refused
    res = bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "regflow", "--targets", root / "t.npz",
                "--coords", "cartesian", "--steps", 5, "--batch-size", 32, "--out", tmp_path / "r.pt")
    assert_one_line_error(res, "internal coordinates", "--coords cartesian")
    res = bgkit("train", "--system", "ala2", "--arch", "tarflow", "--objective", "mle", "--coords", "internal",
                "--steps", 5, "--batch-size", 32, "--out", tmp_path / "tf.pt")
    assert_one_line_error(res, "tarflow", "periodic")


def test_unfinished_checkpoint_is_flagged(runs, tmp_path) -> None:
    """An interrupted run's checkpoint: sample warns, export refuses unless --unfinished."""
    import shutil

    from bgkit.checkpoint import load_checkpoint

    root, _ = runs
    ckpt = load_checkpoint(root / "nsf-mle.pt")
    ckpt["final"], ckpt["step"] = False, 10
    torch.save(ckpt, tmp_path / "partial.pt")
    res = bgkit("export", tmp_path / "partial.pt", tmp_path / "out.pt")
    assert_one_line_error(res, "unfinished training run (step 10 of 20)", "--resume")
    assert not (tmp_path / "out.pt").exists()
    res = bgkit("export", tmp_path / "partial.pt", tmp_path / "out.pt", "--unfinished")
    assert res.returncode == 0, res.stderr
    res = bgkit("sample", "--system", "ala2", "--model", tmp_path / "partial.pt", "--n", 50, "--workers", 1,
                "--out", tmp_path / "s")
    assert res.returncode == 0 and "unfinished training run" in res.stderr
    shutil.rmtree(tmp_path / "s")


def test_same_seed_same_weights(tmp_path) -> None:
    """The initial weights are drawn from the seed: two identical runs give identical checkpoints."""
    from bgkit.checkpoint import load_checkpoint
    from bgkit.train.molecular import train_proposal

    for k in (1, 2):
        train_proposal("ala2", "nsf", "mle", tmp_path / f"{k}.pt", coords="internal", max_frames=200,
                       hparams={"hidden": 16, "n_layers": 2}, config_overrides={**SMALL, "steps": 3, "seed": 5},
                       progress=False)
    a, b = (load_checkpoint(tmp_path / f"{k}.pt")["model"] for k in (1, 2))
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_wrong_dimension_proposal_names_the_mismatch(runs, tmp_path) -> None:
    from bgkit import BgkitError
    from bgkit.proposal import Proposal
    from bgkit.checkpoint import load_checkpoint

    root, _ = runs
    ckpt = load_checkpoint(root / "nsf-mle.pt")
    first = next(iter(ckpt["model"]))
    ckpt["model"][first] = torch.zeros(3, 3)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(BgkitError, match=f"size mismatch for {first}"):
        Proposal.load(tmp_path / "bad.pt")


def test_kl_fine_tuning_from_an_mle_flow(runs, tmp_path) -> None:
    """`--objective kl --init`: same representation and weights to start, energies from OpenMM, a proposal out."""
    from bgkit.proposal import Proposal

    root, _ = runs
    res = bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "kl", "--init", root / "nsf-mle.pt",
                "--max-frames", 300, "--steps", 6, "--batch-size", 32, "--lr", 1e-4, "--out", tmp_path / "kl.pt")
    assert res.returncode == 0, res.stderr
    start, tuned = Proposal.load(root / "nsf-mle.pt"), Proposal.load(tmp_path / "kl.pt")
    assert tuned.transform == start.transform and tuned.info["hparams"] == start.info["hparams"]
    assert tuned.info["training"]["init"] == str(root / "nsf-mle.pt") and tuned.info["config"]["objective"] == "kl"
    assert "log_w_std" in torch.load(tmp_path / "kl.pt", weights_only=True)["history"][-1]
    res = bgkit("train", "--system", "ala2", "--arch", "realnvp", "--objective", "kl", "--init", root / "nsf-mle.pt",
                "--steps", 6, "--batch-size", 32, "--out", tmp_path / "kl2.pt")
    assert_one_line_error(res, "is a nsf flow, not realnvp")


def test_training_on_several_datasets_joins_their_splits(tmp_path) -> None:
    """`bgkit train --data md --data md_rex`: the train frames are both datasets' train splits, recorded."""
    from bgkit.checkpoint import load_checkpoint
    from bgkit.md.dataset import load_dataset
    from bgkit.systems import load_system

    folders = [str(load_system("ala2").folder / d) for d in ("md", "md_rex")]
    out = tmp_path / "mix.pt"
    res = bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "mle", "--coords", "internal",
                "--data", folders[0], "--data", folders[1], "--steps", 2, "--batch-size", 16,
                "--hparams", '{"hidden": 8, "n_layers": 2}', "--out", out)
    assert res.returncode == 0, res.stderr
    training = load_checkpoint(out)["extra"]["training"]
    assert [Path(d).resolve() for d in training["dataset"]] == [Path(f).resolve() for f in folders]
    expected = sum(len(load_dataset(f).split_indices()["train"]) for f in folders)
    assert training["train_frames"] == expected
    res = bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "mle", "--data", folders[0],
                "--data", str(load_system("ala3").folder / "md"), "--steps", 2, "--out", tmp_path / "x.pt")
    assert res.returncode == 1 and "another topology" in res.stderr and not (tmp_path / "x.pt").exists()


def test_rotor_augmented_training_records_the_methyl_groups(runs, tmp_path) -> None:
    """`--rotor-augment` (train and teacher train): the checkpoint names the three ala2 methyls; RegFlow pairs
    refuse it in one line."""
    from bgkit.checkpoint import load_checkpoint

    out = tmp_path / "rot.pt"
    res = bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "mle", "--coords", "internal",
                "--rotor-augment", "--max-frames", 300, "--steps", 3, "--batch-size", 16,
                "--hparams", '{"hidden": 8, "n_layers": 2}', "--out", out)
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(out)["extra"]["training"]["rotor_groups"] == [[1, 2, 3], [13, 14, 15], [19, 20, 21]]
    res = bgkit("teacher", "train", "--system", "ala2", "--rotor-augment", "--max-frames", 300, "--steps", 2,
                "--batch-size", 16, "--hparams", '{"hidden": 16, "n_blocks": 1}', "--out", tmp_path / "t.pt")
    assert res.returncode == 0, res.stderr
    assert len(load_checkpoint(tmp_path / "t.pt")["extra"]["training"]["rotor_groups"]) == 3
    root, _ = runs
    res = bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "regflow", "--targets", root / "t.npz",
                "--rotor-augment", "--steps", 3, "--out", tmp_path / "x.pt")
    assert_one_line_error(res, "--rotor-augment")
    assert not (tmp_path / "x.pt").exists()


def test_resume_refuses_a_different_rotor_relabelling(tmp_path) -> None:
    """A run trained with --rotor-augment cannot be resumed without it (nor the reverse): one line, file kept."""
    args = ("train", "--system", "ala2", "--arch", "nsf", "--objective", "mle", "--coords", "internal",
            "--max-frames", 300, "--batch-size", 16, "--hparams", '{"hidden": 8, "n_layers": 2}')
    for first, then in ((("--rotor-augment",), ()), ((), ("--rotor-augment",))):
        out = tmp_path / f"r{len(first)}.pt"
        res = bgkit(*args, *first, "--steps", 2, "--out", out)
        assert res.returncode == 0, res.stderr
        before = out.read_bytes()
        res = bgkit(*args, *then, "--steps", 4, "--resume", "--out", out)
        assert_one_line_error(res, "--rotor-augment")
        assert out.read_bytes() == before
    res = bgkit(*args, "--rotor-augment", "--steps", 4, "--resume", "--out", tmp_path / "r1.pt")
    assert res.returncode == 0, res.stderr
