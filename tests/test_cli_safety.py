"""Nothing lost, nothing silently wrong -- where commands may write, and their options.

Sampling uses the shipped ala2 proposal with a few samples, so each command takes seconds.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import click
import pytest
from _cli_helpers import REPO, assert_one_line_error, bgkit, cli_commands

from bgkit import BgkitError
from bgkit.outputs import (
    MARKER,
    check_output_file,
    check_output_folder,
    foreign_content,
    partial_folder,
    protected,
    write_marker,
)

SAMPLE = ["sample", "--system", "ala2", "--n", 20, "--batch-size", 20, "--workers", 1]


@pytest.fixture
def precious(tmp_path):
    """A user's folder with a file in it; the test checks the file survives."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    return folder


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled") / "s"
    res = bgkit(*SAMPLE, "--out", out)
    assert res.returncode == 0, res.stderr
    return out


# ----------------------------------------------------- items 1 and 2: --force
@pytest.mark.slow
@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_force_never_replaces_the_current_folder_or_its_parents(precious, command):
    for target in (".", "..", str(precious)):
        res = bgkit(command, *SAMPLE[1:], "--out", target, "--force", cwd=precious)
        assert_one_line_error(res, "--out", "never writes over it")
        assert (precious / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in precious.iterdir()) == ["keep.txt"]


def test_force_never_replaces_a_folder_bgkit_did_not_write(precious):
    res = bgkit(*SAMPLE, "--out", precious, "--force")
    assert_one_line_error(res, str(precious), "not written by bgkit", MARKER)
    assert (precious / "keep.txt").read_text() == "precious"


@pytest.mark.slow
def test_force_replaces_bgkit_output_but_not_a_users_file_inside_it(tmp_path):
    out = tmp_path / "s"
    assert bgkit(*SAMPLE, "--out", out).returncode == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "bgkit.samples" and set(marker["files"]) == {"samples.h5", "weights.npz", "summary.json"}
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(bgkit(*SAMPLE, "--out", out, "--force"), "notes.txt", "not replacing it")
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    before = json.loads((out / "summary.json").read_text())["provenance"]["time_utc"]
    time.sleep(1.1)
    res = bgkit(*SAMPLE, "--out", out, "--force", "--seed", 3)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "summary.json").read_text())["provenance"]["time_utc"] != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary or old copies left


def test_file_outputs_never_replace_a_folder(precious, tmp_path, sample_folder):
    traj = tmp_path / "t.pdb"
    shutil.copy(REPO / "systems" / "ala2" / "ala2.pdb", traj)
    fig = precious.rename(tmp_path / "fig.png")
    for res in (bgkit("energy", "--system", "ala2", traj, "--out", fig, "--force"),
                bgkit("export", REPO / "systems/ala2/proposal.pt", fig, "--force"),
                bgkit("plot", "weights", sample_folder, "--out", fig, "--force")):
        assert res.returncode in (1, 2) and "is a directory" in res.stderr  # click refuses a folder (usage error)
    with pytest.raises(BgkitError, match="is a folder"):  # and so does the library, for any caller
        check_output_file(fig, force=True)
    assert (fig / "keep.txt").read_text() == "precious"


def test_output_rules_as_functions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert protected(".") == "the current directory" and protected(tmp_path.parent) == "a parent of the current directory"
    assert protected(Path.home()) == "the home directory" and protected(tmp_path / "new") is None
    with pytest.raises(BgkitError, match="never writes over it"):
        check_output_folder(".", force=True)
    bg = tmp_path / "bg"
    bg.mkdir()
    assert foreign_content(bg) is not None
    write_marker(bg, "bgkit.samples", ["a.npz"])
    assert foreign_content(bg) is None
    (bg / "a.npz").write_bytes(b"x")
    assert foreign_content(bg) is None and check_output_folder(bg, force=True) == bg
    (bg / "sub").mkdir()
    assert "sub" in foreign_content(bg)
    with pytest.raises(BgkitError, match="exists"):
        check_output_folder(bg, force=False)
    f = tmp_path / "e.npy"
    f.write_bytes(b"x")
    with pytest.raises(BgkitError, match="--force"):
        check_output_file(f, force=False)
    assert check_output_file(f, force=True) == f
    with pytest.raises(BgkitError, match="is a folder"):
        check_output_file(bg, force=True)
    with pytest.raises(BgkitError, match="not a folder"):
        check_output_file(f / "x.npy", force=True)


def _dead_pid() -> int:
    """The process id of a process that has ended."""
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=False,
                              capture_output=True, text=True).stdout)


def test_leftovers_of_killed_runs_are_removed_and_those_of_running_ones_kept(tmp_path):
    """A run killed with SIGKILL leaves .NAME.partial-PID behind; the next run beside it removes it."""
    dead, alive = _dead_pid(), os.getppid()
    out = tmp_path / "s"
    stale = [tmp_path / f".s.partial-{dead}", tmp_path / f".s.old-{dead}"]
    kept = [tmp_path / f".s.partial-{alive}", tmp_path / f".other.partial-{dead}", tmp_path / f".s.partial-x{dead}"]
    for folder in stale + kept:
        folder.mkdir()
        (folder / "half.npz").write_bytes(b"x")
    tmp = partial_folder(out)
    assert tmp == tmp_path / f".s.partial-{os.getpid()}" and tmp.is_dir() and not any(tmp.iterdir())
    assert not any(f.exists() for f in stale)
    assert all((f / "half.npz").exists() for f in kept)


@pytest.mark.slow
def test_a_sample_run_after_a_killed_one_leaves_no_partial_folder(tmp_path):
    (tmp_path / f".s.partial-{_dead_pid()}").mkdir()
    res = bgkit(*SAMPLE, "--out", tmp_path / "s")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


# ------------------------------------------------------- unwritable outputs
def _unprivileged() -> list[str]:
    """Command prefix that drops root's privileges, so that a read-only folder is read-only."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_unwritable_out_fails_before_any_work():
    root = Path(tempfile.mkdtemp(prefix="bgkit-ro-", dir="/tmp"))
    try:
        os.chmod(root, 0o777)
        ro = root / "ro"
        ro.mkdir()
        os.chmod(ro, 0o555)
        env = {"HOME": str(root), "MPLCONFIGDIR": str(root)}
        for args in ([*SAMPLE, "--out", ro / "s"], ["evaluate", *SAMPLE[1:], "--out", ro / "s"],
                     ["energy", "--system", "ala2", REPO / "systems/ala2/ala2.pdb", "--out", ro / "e.npy"],
                     ["simulate", "--system", "ala2", "--ns", 0.001, "--out", ro / "md"]):
            t0 = time.perf_counter()
            res = bgkit(*args, cwd=root, env=env, prefix=_unprivileged())
            err = assert_one_line_error(res, f"cannot write {ro}", "not writable")
            assert "partial" not in err and time.perf_counter() - t0 < 30
        assert list(ro.iterdir()) == []
    finally:
        os.chmod(root / "ro", 0o755)
        shutil.rmtree(root)


# --------------------------------------------------------------------- plot
def test_plot_needs_force_to_overwrite(sample_folder, tmp_path):
    png = tmp_path / "w.png"
    png.write_bytes(b"precious")
    assert_one_line_error(bgkit("plot", "weights", sample_folder, "--out", png), "exists", "--force")
    assert png.read_bytes() == b"precious"
    (tmp_path / "e.png").write_bytes(b"precious")  # a .pdf is written with a .png beside it
    assert_one_line_error(bgkit("plot", "energies", sample_folder, "--out", tmp_path / "e.pdf"), "e.png", "--force")
    assert_one_line_error(bgkit("plot", "ramachandran", "ala2", "--out", tmp_path / "r.jpg"), ".png or .pdf")
    res = bgkit("plot", "weights", sample_folder, "--out", png, "--force")
    assert res.returncode == 0, res.stderr
    assert png.read_bytes().startswith(b"\x89PNG")


# ------------------------------------------------------------ options and help
def test_every_option_has_help():
    from bgkit.cli import main

    missing = [f"{name} {opt.opts[0]}" for name, cmd in cli_commands(main) for opt in cmd.params
               if isinstance(opt, click.Option) and not (opt.help or "").strip()]
    assert missing == []
    from bgkit.cli import sample, train

    out_help = next(p for p in sample.params if p.name == "out").help
    assert "timestamped" in out_help
    assert "resume" in next(p for p in train.params if p.name == "max_seconds").help


def test_workers_must_be_positive(tmp_path):
    pdb = REPO / "systems/ala2/ala2.pdb"
    for args in (["energy", "--system", "ala2", pdb, "--workers", 0], [*SAMPLE[:-2], "--workers", 0,
                                                                       "--out", tmp_path / "s"],
                 [*SAMPLE[:-2], "--workers", -2, "--out", tmp_path / "s"]):
        assert_one_line_error(bgkit(*args), "--workers must be >= 1")
    assert not (tmp_path / "s").exists()


def test_usage_errors_exit_2_as_documented():
    readme = (REPO / "README.md").read_text()
    assert re.search(r"usage errors.*exit with status 2", readme, re.DOTALL | re.IGNORECASE)
    assert bgkit("sample", "--n", 5).returncode == 2  # --system missing
    assert bgkit("energy", "--system", "ala2", "x.h5", "--workers", "two").returncode == 2
    assert bgkit("no-such-command").returncode == 2
