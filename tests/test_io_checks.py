"""Trajectory and topology files are checked atom by atom; unreadable files give one clear line."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from _cli_helpers import REPO, assert_one_line_error, bgkit
from conftest import perturbed_frames

from bgkit import BgkitError
from bgkit.io import load_trajectory
from bgkit.systems import load_system


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """ala2 frames as PDB and HDF5, the same files with two atoms listed in swapped order, and bad files."""
    import mdtraj

    s = load_system("ala2")
    folder = tmp_path_factory.mktemp("io")
    xyz = perturbed_frames(s, 3, seed=1).astype(np.float32)
    traj = mdtraj.Trajectory(xyz, s.topology)
    traj.save_pdb(str(folder / "ok.pdb"))
    traj.save_hdf5(str(folder / "ok.h5"))
    lines = (folder / "ok.pdb").read_text().splitlines()
    atoms = [i for i, line in enumerate(lines) if line.startswith(("ATOM", "HETATM"))]
    for model in range(3):  # C and O of the acetyl cap swapped in every model: same molecule, other order
        a, b = atoms[model * s.n_atoms + 4], atoms[model * s.n_atoms + 5]
        lines[a], lines[b] = lines[b], lines[a]
    (folder / "swapped.pdb").write_text("\n".join(lines) + "\n")
    mdtraj.load(str(folder / "swapped.pdb")).save_hdf5(str(folder / "swapped.h5"))
    renamed = mdtraj.Trajectory(xyz, s.topology.copy())
    next(iter(renamed.topology.residues)).name = "FOR"
    renamed.save_hdf5(str(folder / "renamed.h5"))
    (folder / "empty.pdb").write_text("")
    (folder / "garbage.pdb").write_text("hello\nthis is not a PDB file\n")
    (folder / "empty.h5").write_bytes(b"")
    (folder / "text.h5").write_text("not HDF5\n" * 20)
    raw = (folder / "ok.h5").read_bytes()
    (folder / "truncated.h5").write_bytes(raw[: len(raw) // 2])
    nan = xyz.copy()
    nan[1, 3] = np.nan
    mdtraj.Trajectory(nan, s.topology).save_hdf5(str(folder / "nan.h5"))
    return folder, xyz


# --------------------------------------------------- topology checks
@pytest.mark.parametrize("name", ["swapped.pdb", "swapped.h5", "renamed.h5"])
def test_a_file_with_atoms_in_another_order_is_refused(files, name):
    folder, _ = files
    with pytest.raises(BgkitError, match=f"{name} does not match system 'ala2': atom"):
        load_trajectory(folder / name, load_system("ala2"))


@pytest.mark.parametrize("name", ["ok.pdb", "ok.h5"])
def test_matching_files_load(files, name):
    folder, xyz = files
    np.testing.assert_allclose(load_trajectory(folder / name, load_system("ala2")), xyz, atol=1e-3)


def test_energy_command_refuses_a_reordered_pdb(files):
    folder, _ = files
    assert_one_line_error(bgkit("energy", "--system", "ala2", folder / "swapped.pdb", "--workers", 1),
                          "swapped.pdb", "does not match system 'ala2'", "atom 4")


def test_plotting_a_sample_folder_checks_its_topology(files, tmp_path):
    from bgkit.evaluate import positions_of

    folder, _ = files
    (tmp_path / "summary.json").write_text('{"system": "ala2"}')
    np.savez(tmp_path / "weights.npz", log_w=np.zeros(3))
    shutil.copy(folder / "swapped.h5", tmp_path / "samples.h5")
    with pytest.raises(BgkitError, match="does not match system 'ala2'"):
        positions_of(str(tmp_path), reweighted=False)


# ------------------------------------------------- unreadable files
@pytest.mark.parametrize("name, problem", [
    ("empty.pdb", "the file is empty"),
    ("garbage.pdb", "no ATOM/HETATM records"),
    ("empty.h5", "the file is empty"),
    ("text.h5", "not an HDF5 file"),
    ("truncated.h5", "truncated file"),
])
def test_unreadable_files_give_one_line_naming_file_and_problem(files, name, problem):
    folder, _ = files
    with pytest.raises(BgkitError) as info:
        load_trajectory(folder / name, load_system("ala2"))
    message = str(info.value)
    assert name in message and problem in message and "\n" not in message, message
    for noise in ("back trace", "index 0 is out of bounds", "list index out of range"):
        assert noise not in message, message


def test_empty_or_garbage_system_pdb(tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(REPO / "systems" / "ala2", folder, ignore=shutil.ignore_patterns("md", "*.pt", "*.png"))
    for content, problem in (("", "the file is empty"), ("garbage\n", "no ATOM/HETATM records")):
        (folder / "ala2.pdb").write_text(content)
        assert_one_line_error(bgkit("systems", "show", folder), "ala2.pdb", problem)


# ---------------------------------------------- NaN coordinates
def test_nan_coordinates_are_counted_as_infinite_energy(files, tmp_path):
    folder, _ = files
    out = tmp_path / "e.npy"
    res = bgkit("energy", "--system", "ala2", folder / "nan.h5", "--out", out, "--workers", 1)
    assert res.returncode == 0, res.stderr
    assert "invalid (+inf): 1" in res.stdout and "non-finite positions 1" in res.stdout
    e = np.load(out)
    assert np.isinf(e[1]) and np.isfinite(e[[0, 2]]).all()
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "Frames with non-finite (NaN) coordinates or overlapping atoms are not errors" in readme
    assert "NaN coordinates, corrupted" not in readme  # the old, wrong claim
