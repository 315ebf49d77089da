"""Tests for bgkit.chirality: Cα centres, signed-volume signs, the check against a reference."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from bgkit import BgkitError
from bgkit.chirality import check_chirality, chiral_centres, chirality_signs


def mirror(xyz: np.ndarray) -> np.ndarray:
    """Mirror image (x -> -x) of positions [..., 3]: flips every chiral centre."""
    return np.asarray(xyz, dtype=np.float64) * np.array([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def ala2():
    logging.getLogger("pymbar").setLevel(logging.ERROR)  # openmmtools imports pymbar (banners)
    mdtraj = pytest.importorskip("mdtraj")
    testsystems = pytest.importorskip("openmmtools.testsystems")
    import openmm.unit as unit

    system = testsystems.AlanineDipeptideVacuum()
    top = mdtraj.Topology.from_openmm(system.topology)
    xyz = np.asarray(system.positions.value_in_unit(unit.nanometer))
    return top, xyz


def test_chirality_alanine_dipeptide(ala2):
    top, xyz = ala2
    quads = chiral_centres(top)
    assert quads.shape == (1, 4)  # one CA (ALA); ACE / NME caps have none
    names = [top.atom(int(i)).name for i in quads[0]]
    assert names == ["N", "C", "CB", "CA"]
    ref = chirality_signs(xyz, quads)[0]
    np.testing.assert_array_equal(ref, [1.0])  # L-alanine is positive with this ordering
    assert check_chirality(xyz, quads, ref).tolist() == [True]
    assert check_chirality(mirror(xyz), quads, ref).tolist() == [False]


def test_mirror_flips_every_sign_and_batch(ala2):
    top, xyz = ala2
    quads = chiral_centres(top)
    rng = np.random.default_rng(0)
    batch = xyz[None] + 0.002 * rng.normal(size=(8,) + xyz.shape)
    signs = chirality_signs(batch, quads)
    np.testing.assert_array_equal(chirality_signs(mirror(batch), quads), -signs)
    mixed = np.concatenate([batch[:4], mirror(batch[4:])])
    ref = chirality_signs(xyz, quads)[0]
    assert check_chirality(mixed, quads, ref).tolist() == [True] * 4 + [False] * 4
    bad = batch.copy()
    bad[0, :, :] = np.nan
    assert not check_chirality(bad, quads, ref)[0]


def test_mirror_flips_random_quads():
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(5, 12, 3))
    quads = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])
    np.testing.assert_array_equal(chirality_signs(mirror(xyz), quads), -chirality_signs(xyz, quads))
    with pytest.raises(BgkitError):
        check_chirality(xyz, quads, np.array([1.0, 1.0]))
