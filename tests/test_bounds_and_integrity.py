"""Reliability: bounded sizes, no orphans, checksummed chunks, no poisoned checkpoints,
bgkit's own temporary files only, messages that name the option, no silently ignored option.

Reflow targets use the shipped ala2 proposal as the "teacher" (its forward map: seconds, no ODE).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _cli_helpers import REPO, assert_one_line_error, bgkit, descendants, kill_all, survivors

from bgkit import BgkitError

TEACHER = REPO / "systems" / "ala2" / "proposal.pt"
PDB = REPO / "systems" / "ala2" / "ala2.pdb"
REFLOW = ["targets", "reflow", "--teacher", TEACHER, "--chunk-size", 100, "--n-val", 50]
HUGE = 10**12


# ------------------------------------------------------------------ bounded sizes
@pytest.mark.parametrize("args, fragments", [
    (REFLOW + ["--n", HUGE], ["--n", "<= 1,000,000,000"]),
    (["targets", "reflow", "--teacher", TEACHER, "--n", 10**9, "--chunk-size", 1], ["--chunk-size", "chunk files"]),
    (REFLOW + ["--n", 1000, "--batch-size", HUGE], ["--batch-size", "<="]),
    (REFLOW + ["--n", 1000, "--steps", HUGE], ["--steps", "<="]),
    (["sample", "--system", "ala2", "--n", HUGE], ["--n", "<="]),
    (["evaluate", "--system", "ala2", "--n", HUGE], ["--n", "<="]),
    (["sample", "--system", "ala2", "--n", 10**9 - 1], ["--n", "memory"]),  # 10^9 samples of 22 atoms: ~60 GB... x2
    (["fep", "--system", "ala2", "--from", "C7eq_beta", "--to", "alpha_R", "--n", HUGE], ["--n", "<="]),
    (["fep", "--system", "ala2", "--from", "C7eq_beta", "--to", "alpha_R", "--map-steps", HUGE], ["--map-steps"]),
    (["train", "--system", "ala2", "--arch", "nsf", "--objective", "mle", "--steps", HUGE], ["--steps", "<="]),
    (["train", "--system", "ala2", "--arch", "nsf", "--objective", "mle", "--batch-size", HUGE], ["--batch-size"]),
    (["teacher", "train", "--system", "ala2", "--steps", HUGE], ["--steps", "<="]),
    (["targets", "ot", "--system", "ala2", "--block-size", HUGE], ["--block-size", "<="]),
    (["simulate", "--system", "ala2", "--ns", 1, "--replicas", 99999], ["--replicas", "<= 1024"]),
    (["simulate", "--system", "ala2", "--ns", 1e7, "--save-every", 0.001, "--step", 1], ["too many frames"]),
    (["data", "check", "ala2", "--blocks", 0], ["--blocks", ">= 2"]),
])
def test_sizes_are_bounded_before_any_work(tmp_path, args, fragments):
    out = tmp_path / "out"
    needs_out = args[0] in ("sample", "evaluate", "fep", "simulate") or args[:2] in (["targets", "reflow"],
                                                                                  ["targets", "ot"])
    extra = ["--out", out] if needs_out else (["--out", tmp_path / "m.pt"] if "train" in args else [])
    t0 = time.time()
    assert_one_line_error(bgkit(*args, *extra, timeout=120), *fragments)
    assert time.time() - t0 < 60
    assert not out.exists() and not (tmp_path / "m.pt").exists()
    assert list(tmp_path.iterdir()) == []  # nothing left beside it either


def test_flow_hyperparameters_are_checked_before_any_work(tmp_path):
    from bgkit.flows import build_flow

    res = bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "mle", "--hparams", '{"hidden": -4}',
                "--out", tmp_path / "m.pt")
    assert_one_line_error(res, "--hparams hidden of 'nsf' must be a whole number in [1, 65536], got -4")
    with pytest.raises(BgkitError, match="memory"):  # 65536 wide: ~2.7 TB to train, never allocated
        build_flow("nsf", 60, hidden=65536)
    with pytest.raises(BgkitError, match="finite"):
        build_flow("nsf", 60, bound=float("nan"))
    assert not (tmp_path / "m.pt").exists()


def test_workers_above_the_core_count_are_capped_with_a_note(tmp_path):
    res = bgkit("energy", "--system", "ala2", PDB, "--workers", 99999)
    assert res.returncode == 0, res.stderr
    cores = os.cpu_count()
    notes = [line for line in res.stderr.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: --workers 99999 is more than the {cores} cores of this machine: using {cores}"]


def test_reflow_never_leaves_an_unmarked_folder_that_blocks_a_rerun(tmp_path):
    out = tmp_path / "rf"
    out.mkdir()  # what a run killed between mkdir and its marker used to leave behind
    res = bgkit(*REFLOW, "--n", 200, "--out", out)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == [".bgkit-output", "chunk_000000.npy", "chunk_000001.npy",
                                                     "reflow.json", "val.npy"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left


# ------------------------------------------------------------------ orphans, SIGTERM
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_reflow_with_two_workers_leaves_no_orphans(tmp_path, sig):
    out = tmp_path / "rf"
    proc = subprocess.Popen([sys.executable, "-m", "bgkit.cli", *map(str, REFLOW), "--n", "2000000", "--workers", "2",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    helpers: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(out.glob("chunk_*.npy"))) < 2:
            time.sleep(0.05)
        helpers = descendants(proc.pid)
        assert len(helpers) >= 2, "no pool workers found"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig == signal.SIGTERM:  # handled like Ctrl-C: one line, non-zero status
            assert proc.returncode == 143, err
            assert err.strip().splitlines()[-1] == "error: interrupted (SIGTERM)" and "Traceback" not in err
        assert survivors(helpers, timeout=20) == []
    finally:
        proc.kill()
        kill_all(helpers)
    # the same command resumes the killed run (checksums recorded up to the kill)
    manifest = json.loads((out / "reflow.json").read_text())
    assert set(manifest["sha256"]) <= {p.name for p in out.glob("*.npy")}


# ------------------------------------------------------------------ damaged chunks
def test_damaged_reflow_chunks_are_redrawn_on_rerun_and_refused_by_train(tmp_path):
    from bgkit.train.reflow import open_reflow

    out = tmp_path / "rf"
    args = [*REFLOW, "--n", 300, "--out", out]
    assert bgkit(*args).returncode == 0
    good = {p.name: p.read_bytes() for p in out.glob("*.npy")}
    manifest = json.loads((out / "reflow.json").read_text())
    assert sorted(manifest["sha256"]) == sorted(good)

    with open(out / "chunk_000001.npy", "r+b") as fh:  # 8 bytes overwritten in the data
        fh.seek(2000)
        fh.write(b"\xff" * 8)
    with pytest.raises(BgkitError, match="chunk_000001.npy is damaged"):
        open_reflow(out)
    (out / "chunk_000001.npy").write_bytes(good["chunk_000001.npy"])
    os.truncate(out / "chunk_000002.npy", 10000)  # truncated
    with pytest.raises(BgkitError, match="chunk_000002.npy is damaged"):
        open_reflow(out)
    with open(out / "chunk_000001.npy", "r+b") as fh:
        fh.seek(2000)
        fh.write(b"\xff" * 8)
    res = bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "regflow", "--targets", out, "--steps", 2,
                "--batch-size", 50, "--out", tmp_path / "s.pt")
    assert_one_line_error(res, "chunk_000001.npy", "damaged")
    assert not (tmp_path / "s.pt").exists()
    res = bgkit(*args)  # the same command again repairs the folder, and says so
    assert res.returncode == 0, res.stderr
    notes = [line for line in res.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "chunk_000001.npy" in notes[0] and "chunk_000002.npy" in notes[0], res.stderr
    assert {p.name: p.read_bytes() for p in out.glob("*.npy")} == good
    open_reflow(out)


def test_reflow_folder_without_checksums_is_checked_and_recorded_on_rerun(tmp_path):
    from bgkit.train.reflow import open_reflow

    out = tmp_path / "rf"
    args = [*REFLOW, "--n", 200, "--out", out]
    assert bgkit(*args).returncode == 0
    manifest = json.loads((out / "reflow.json").read_text())
    del manifest["sha256"]  # a folder written before checksums were kept
    (out / "reflow.json").write_text(json.dumps(manifest))
    with pytest.raises(BgkitError, match="no checksums"):
        open_reflow(out)
    os.truncate(out / "chunk_000000.npy", 1000)  # truncated: cannot hold its rows
    res = bgkit(*args)
    assert res.returncode == 0, res.stderr
    assert "chunk_000000.npy" in res.stderr and "older bgkit" in res.stderr
    assert open_reflow(out).train.n == 200


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """A sample folder of 20 samples from the shipped ala2 proposal."""
    s = tmp_path_factory.mktemp("sampled") / "s"
    res = bgkit("sample", "--system", "ala2", "--n", 20, "--batch-size", 20, "--workers", 1, "--out", s)
    assert res.returncode == 0, res.stderr
    return s


def test_sample_folder_and_ot_targets_files_are_checked(tmp_path, samples):
    import shutil

    from bgkit.sample import load_sample_folder
    from bgkit.train.targets import load_targets, save_targets

    s = tmp_path / "s"
    shutil.copytree(samples, s)
    assert set(json.loads((s / "summary.json").read_text())["sha256"]) == {"samples.h5", "weights.npz"}
    load_sample_folder(s)
    with open(s / "samples.h5", "r+b") as fh:
        fh.seek(os.path.getsize(s / "samples.h5") - 100)
        fh.write(b"\x00" * 8)
    with pytest.raises(BgkitError, match="samples.h5 is damaged"):
        load_sample_folder(s)
    res = bgkit("plot", "weights", s, "--out", tmp_path / "w.png")
    assert_one_line_error(res, "samples.h5", "damaged")
    path = save_targets(tmp_path / "t.npz", np.zeros((4, 3)), np.ones((4, 3)))
    data = bytearray(path.read_bytes())
    data[200:208] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(BgkitError, match="corrupted"):
        load_targets(path)


# ------------------------------------------------------------------ floats, poisoned checkpoints
@pytest.mark.parametrize("option, value, fragment", [
    ("--lr", "inf", "--lr (lr) must be a finite number > 0 and <= 1, got inf"),
    ("--lr", "1e6", "--lr (lr) must be a finite number > 0 and <= 1"),
    ("--lr", "-1", "--lr (lr) must be"),
    ("--lr", "nan", "--lr (lr) must be"),
    ("--max-seconds", "inf", "--max-seconds (max_seconds) must be a finite number > 0"),
    ("--max-frames", "0", "--max-frames must be >= 2"),
])
def test_train_numbers_are_checked_and_named(tmp_path, option, value, fragment):
    out = tmp_path / "a.pt"
    res = bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "mle", "--steps", 3, option, value,
                "--out", out)
    assert_one_line_error(res, fragment)
    assert not out.exists()


@pytest.mark.parametrize("args, fragment", [
    (["--objective", "fdm", "--fdm-weight", "-1"], "--fdm-weight (fdm_cdm_weight) must be a finite number >= 0"),
    (["--objective", "wcfm", "--wcfm-kappa", "0"], "--wcfm-kappa (wcfm_kappa) must be a finite number > 0"),
    (["--objective", "wcfm", "--wcfm-kappa", "inf"], "--wcfm-kappa (wcfm_kappa) must be a finite number > 0"),
    (["--objective", "cfm", "--wcfm-kappa", "0.2"], "--wcfm-kappa applies to --objective wcfm, not cfm"),
    (["--objective", "cfm", "--fdm-weight", "0.1"], "--fdm-weight applies to --objective fdm, not cfm"),
    (["--lr", "-1"], "--lr (lr) must be"),
])
def test_teacher_options_are_named_and_not_ignored(tmp_path, args, fragment):
    out = tmp_path / "t.pt"
    assert_one_line_error(bgkit("teacher", "train", "--system", "ala2", "--steps", 3, *args, "--out", out), fragment)
    assert not out.exists()


@pytest.mark.parametrize("args, fragment", [
    (["--objective", "mle", "--kl-weight", "2"], "--kl-weight applies to --objective kl, not mle"),
    (["--objective", "mle", "--noise", "0.1"], "--noise applies to --objective regflow, not mle"),
    (["--objective", "mle", "--targets", "x.npz"], "--targets applies to --objective regflow, not mle"),
    (["--objective", "regflow", "--targets", "x.npz", "--max-frames", "10"], "--max-frames applies to"),
])
def test_train_options_of_another_objective_are_refused(tmp_path, args, fragment):
    out = tmp_path / "a.pt"
    assert_one_line_error(bgkit("train", "--system", "ala2", "--arch", "nsf", "--steps", 3, *args, "--out", out),
                          fragment)


def _toy_run(tmp_path, out, nan_at: int | None, resume: bool = False, steps: int = 6):
    from bgkit.flows import build_flow
    from bgkit.train import TrainConfig, train

    calls = [0]

    def augment(batch):
        calls[0] += 1
        return tuple(b * float("nan") for b in batch) if calls[0] == nan_at else batch

    torch.manual_seed(0)
    flow = build_flow("nsf", 4, n_layers=2, hidden=8, n_blocks=1, bins=4)
    x = torch.randn(128, 4)
    cfg = TrainConfig(steps=steps, batch_size=32, warmup_steps=1, val_every=100, ckpt_every=1, objective="mle")
    return train(flow, x, None, cfg, out, resume=resume, augment=augment, progress=False)


def test_a_diverged_run_leaves_no_model_under_its_name(tmp_path):
    from bgkit.checkpoint import load_checkpoint

    out = tmp_path / "a.pt"
    with pytest.raises(BgkitError, match=r"loss became nan at step 3.*kept as .*a\.pt\.step2-before-failure"):
        _toy_run(tmp_path, out, nan_at=3)
    assert not out.exists()  # a rerun is not refused, and nothing samples from the failed run by mistake
    kept = tmp_path / "a.pt.step2-before-failure"
    assert load_checkpoint(kept)["step"] == 2
    with pytest.raises(BgkitError, match="loss became nan at step 1.*no checkpoint was written"):
        _toy_run(tmp_path, out, nan_at=1)
    assert not out.exists()
    _toy_run(tmp_path, out, nan_at=None, steps=3)  # a good run, then a resumed one that diverges: it keeps it
    with pytest.raises(BgkitError, match="a.pt keeps the last good state, step 4"):
        _toy_run(tmp_path, out, nan_at=2, resume=True)
    assert load_checkpoint(out)["step"] == 4


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    from bgkit.checkpoint import load_checkpoint

    ckpt = torch.load(TEACHER, weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = ckpt["model"][name] * float("nan")
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(BgkitError, match="non-finite weights"):
        load_checkpoint(bad)
    res = bgkit("sample", "--system", "ala2", "--model", bad, "--n", 10, "--out", tmp_path / "s")
    assert_one_line_error(res, "bad.pt", "non-finite weights")
    ckpt = torch.load(TEACHER, weights_only=True)
    ckpt["format_version"] = "1"
    torch.save(ckpt, bad)
    with pytest.raises(BgkitError, match="malformed format_version") as err:
        load_checkpoint(bad)
    assert "update bgkit" not in str(err.value)


# ------------------------------------------------------------------ only bgkit's temporary files
def test_force_keeps_a_users_hidden_tmp_file(tmp_path):
    from bgkit.outputs import foreign_content, write_marker

    folder = tmp_path / "o"
    folder.mkdir()
    write_marker(folder, "bgkit.samples", ["weights.npz"])
    (folder / ".weights.npz.k3j_x9a2.tmp").write_bytes(b"")  # an atomic write of bgkit's, killed
    (folder / "..bgkit-output.abcdefgh.tmp").write_bytes(b"")
    assert foreign_content(folder) is None
    (folder / ".notes.tmp").write_text("mine")
    assert ".notes.tmp" in foreign_content(folder)
    (folder / ".notes.tmp").unlink()
    (folder / ".weights.npz.tmp.d").mkdir()
    assert foreign_content(folder) is not None


# ------------------------------------------------------------------ items 12, 13: messages, ignored options
def test_simulate_names_the_option_that_is_not_positive(tmp_path):
    for option in ("--save-every", "--chunk", "--step"):
        res = bgkit("simulate", "--system", "ala2", "--ns", 0.01, option, 0, "--out", tmp_path / "md")
        assert_one_line_error(res, f"{option} must be positive, got 0")
    assert not (tmp_path / "md").exists()


def test_reflow_refuses_to_shorten_and_says_what_force_would_discard(tmp_path):
    out = tmp_path / "rf"
    assert bgkit(*REFLOW, "--n", 300, "--out", out).returncode == 0
    assert_one_line_error(bgkit(*REFLOW, "--n", 100, "--out", out), "holds 300 reflow pairs", "cannot shorten",
                          "--n 300")
    (out / "reflow.json").unlink()
    res = bgkit(*REFLOW, "--n", 300, "--out", out)
    assert_one_line_error(res, "3 finished reflow chunk(s)", "lost its reflow.json", "--force would discard them")
    res = bgkit(*REFLOW, "--n", 300, "--out", out, "--force")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "reflow.json").read_text())["n"] == 300


def test_plot_pdf_says_it_replaces_the_png_beside_it(tmp_path, samples):
    s = samples
    pdf = tmp_path / "x.pdf"
    res = bgkit("plot", "weights", s, "--out", pdf)
    assert res.returncode == 0 and res.stdout.strip() == f"wrote {pdf} and {tmp_path / 'x.png'}", res.stdout
    res = bgkit("plot", "weights", s, "--out", pdf, "--force")
    assert res.returncode == 0 and "replacing the existing x.png" in res.stdout, res.stdout


def test_resume_with_other_coordinates_names_them(tmp_path):
    out = tmp_path / "a.pt"
    base = ("train", "--system", "ala2", "--arch", "nsf", "--objective", "mle", "--max-frames", 300,
            "--batch-size", 16, "--hparams", '{"hidden": 8, "n_layers": 2}', "--out", out)
    res = bgkit(*base, "--steps", 2, "--coords", "internal")
    assert res.returncode == 0, res.stderr
    res = bgkit(*base, "--steps", 4, "--coords", "cartesian", "--resume")
    assert_one_line_error(res, "trained in internal coordinates, not cartesian")
    res = bgkit(*base, "--steps", 4, "--coords", "internal", "--resume", "--system", "ala3")
    assert_one_line_error(res, "trained on system 'ala2' (22 atoms), not 'ala3'")


@pytest.mark.slow
def test_torchrun_refusal_is_one_line_from_rank_zero(tmp_path):
    out = tmp_path / "a.pt"
    out.write_bytes(b"x")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          "-m", "bgkit.cli", "--", "train", "--system", "ala2", "--arch", "nsf", "--objective", "mle",
                          "--steps", "2", "--out", str(out)], capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 1
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error: ")]
    assert lines == [f"error: {out} exists: pass --resume to continue it or --force to replace it"], res.stderr
    assert "bgkit/cli" not in res.stderr  # no traceback of a rank (torchrun's own report follows)
    assert out.read_bytes() == b"x"
