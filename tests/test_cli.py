"""The command line as a user runs it: real processes, exit codes, one-line errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _cli_helpers import assert_one_line_error, bgkit
from conftest import direct_openmm, perturbed_frames

from bgkit.systems import load_system


@pytest.fixture(scope="module")
def ala2_traj(tmp_path_factory):
    import mdtraj

    s = load_system("ala2")
    xyz = perturbed_frames(s, 12, seed=5).astype(np.float32)
    folder = tmp_path_factory.mktemp("traj")
    traj = mdtraj.Trajectory(xyz, s.topology)
    traj.save_hdf5(str(folder / "t.h5"))
    traj.save_dcd(str(folder / "t.dcd"))
    return folder, xyz


def test_systems_list_and_show():
    out = bgkit("systems", "list")
    assert out.returncode == 0
    assert [line.split()[0] for line in out.stdout.splitlines()] == ["ala2", "ala2ff96", "ala3", "ala4"]
    show = bgkit("systems", "show", "ala4")
    assert show.returncode == 0
    for text in ("42", "300.0 K", "kT = 2.494339 kJ/mol", "amber99sbildn.xml", "NoCutoff", "phi", "psi"):
        assert text in show.stdout
    info = json.loads(bgkit("systems", "show", "ala3", "--json").stdout)
    assert info["atoms"] == 33 and info["nonbonded_cutoff_nm"] == 2.0 and len(info["phi_atoms"]) == 2


@pytest.mark.parametrize("fmt", ["t.h5", "t.dcd"])
def test_energy_command_matches_openmm(ala2_traj, tmp_path, fmt):
    folder, xyz = ala2_traj
    out = tmp_path / "e.npy"
    res = bgkit("energy", "--system", "ala2", folder / fmt, "--out", out, "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "12 frames" in res.stdout
    e = np.load(out)
    assert e.dtype == np.float64 and e.shape == (12,)
    import mdtraj

    top = {} if fmt.endswith(".h5") else {"top": load_system("ala2").topology}  # HDF5 carries its own topology
    stored = mdtraj.load(str(folder / fmt), **top).xyz.astype(np.float64)
    np.testing.assert_allclose(stored, xyz, atol=1e-5)
    e_ref, _ = direct_openmm("ala2", stored)
    np.testing.assert_allclose(e, e_ref / load_system("ala2").kT, rtol=1e-6)


def test_energy_refuses_to_overwrite(ala2_traj, tmp_path):
    folder, _ = ala2_traj
    out = tmp_path / "e.npy"
    out.write_bytes(b"precious")
    res = bgkit("energy", "--system", "ala2", folder / "t.h5", "--out", out)
    assert_one_line_error(res, "exists", "--force")
    assert out.read_bytes() == b"precious"


def test_energy_with_custom_folder(ala2_traj, tmp_path):
    folder, _ = ala2_traj
    sysdir = tmp_path / "mine"
    shutil.copytree(load_system("ala2").folder, sysdir, ignore=shutil.ignore_patterns("*.h5", "*.xtc", "*.npy", "*.pt"))
    res = bgkit("energy", "--system", sysdir, folder / "t.dcd")
    assert res.returncode == 0, res.stderr


def test_bad_input_errors(ala2_traj, tmp_path):
    folder, _ = ala2_traj
    assert_one_line_error(bgkit("energy", "--system", "ala9", folder / "t.h5"), "unknown system 'ala9'")
    assert_one_line_error(bgkit("energy", "--system", "ala3", folder / "t.h5"), "22 atoms", "33")
    assert_one_line_error(bgkit("energy", "--system", "ala3", folder / "t.dcd"), "t.dcd")
    assert_one_line_error(bgkit("energy", "--system", "ala2", tmp_path / "missing.xtc"), "not found")
    garbage = tmp_path / "garbage.xtc"
    garbage.write_bytes(b"\x00\x01not a trajectory" * 10)
    assert_one_line_error(bgkit("energy", "--system", "ala2", garbage), "cannot read trajectory")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "system.yaml").write_text("name: bad\ntopology: x.pdb\nforcefield: [amber99sbildn.xml]\ntemperature_K: [\n")
    assert_one_line_error(bgkit("systems", "show", bad), "not valid YAML", "system.yaml")
    (bad / "system.yaml").write_text("name: bad\ntopology: x.pdb\nforcefield: [nope.xml]\ntemperature_K: 300\n")
    shutil.copy(load_system("ala2").pdb_path, bad / "x.pdb")
    assert_one_line_error(bgkit("energy", "--system", bad, folder / "t.h5"), "unknown force-field file", "nope.xml")
    (bad / "x.pdb").write_text("HETATM garbage\n")
    assert_one_line_error(bgkit("systems", "show", bad), "x.pdb")
