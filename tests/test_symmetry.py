"""Equivalent terminal atoms and their alignment in RegFlow pairs (bgkit.symmetry)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bgkit.coords import CartesianCoords
from bgkit.md.dataset import load_dataset
from bgkit.energy import EnergyModel
from bgkit.symmetry import align_groups, equivalent_groups, terminal_groups
from bgkit.systems import load_system


def _names(system, groups):
    top = system.topology
    return [[f"{top.atom(i).residue.name}:{top.atom(i).name}" for i in g] for g in groups]


def test_ala2_groups_are_the_three_methyls_without_the_implied_last_atom():
    s = load_system("ala2")
    names = _names(s, terminal_groups(s))
    assert names == [["ACE:H1", "ACE:H2", "ACE:H3"], ["ALA:HB1", "ALA:HB2", "ALA:HB3"], ["NME:H1", "NME:H2"]]
    assert s.topology.atom(s.n_atoms - 1).name == "H3"  # NME's third H is the atom the centring implies
    assert len(terminal_groups(s, exclude_last=False)[-1]) == 3


@pytest.mark.parametrize("name", ["ala2", "ala3"])
def test_groups_have_identical_force_field_parameters(name):
    """Independent truth for energy invariance: OpenMM's per-atom nonbonded and GB parameters agree."""
    import openmm

    s = load_system(name)
    omm = s.openmm_system()
    per_atom = []
    for f in omm.getForces():
        if isinstance(f, openmm.NonbondedForce):
            per_atom.append([tuple(v._value if hasattr(v, "_value") else v for v in f.getParticleParameters(i))
                             for i in range(s.n_atoms)])
        elif isinstance(f, (openmm.GBSAOBCForce, openmm.CustomGBForce)):
            per_atom.append([tuple(v._value if hasattr(v, "_value") else v for v in f.getParticleParameters(i))
                             for i in range(s.n_atoms)])
    assert per_atom
    ds = load_dataset(name)
    ok, bad = equivalent_groups(s, ds.xyz[:: len(ds.xyz) // 3][:3])
    assert ok == terminal_groups(s) and bad == []
    for g in ok:
        for params in per_atom:
            assert len({params[i] for i in g}) == 1, (g, [params[i] for i in g])


def test_alignment_is_the_brute_force_optimum_and_only_permutes_group_atoms():
    rng = np.random.default_rng(0)
    m = 6  # flow atoms
    groups = [[0, 2, 3], [4, 5]]
    x0 = rng.normal(size=(40, 3 * m))
    x1 = rng.normal(size=(40, 3 * m))
    out, n_changed = align_groups(x0, x1, groups)
    a0, a1, ao = (a.reshape(40, m, 3) for a in (x0, x1, out))
    assert np.array_equal(ao[:, 1], a1[:, 1])  # atom 1 is in no group
    changed = 0
    for i in range(40):
        candidates = []
        for p in itertools.permutations(groups[0]):
            for q in itertools.permutations(groups[1]):
                y = a1[i].copy()
                y[groups[0]] = a1[i][list(p)]
                y[groups[1]] = a1[i][list(q)]
                candidates.append(((a0[i] - y) ** 2).sum())
        assert np.isclose(((a0[i] - ao[i]) ** 2).sum(), min(candidates))
        changed += not np.array_equal(ao[i], a1[i])
    assert n_changed == changed > 0


def test_aligned_targets_keep_every_energy():
    """Relabelling equivalent atoms maps each target frame to a frame of identical energy."""
    s = load_system("ala2")
    ds = load_dataset("ala2")
    xyz = ds.xyz[:200].astype(np.float64)
    t = CartesianCoords.fit(xyz)
    x1 = t.to_flow(torch.as_tensor(xyz))[0].numpy()
    x0 = np.random.default_rng(1).normal(size=x1.shape)
    aligned, n_changed = align_groups(x0, x1, terminal_groups(s))
    assert n_changed > 100  # 3!·3!·2 labellings: almost every pair is relabelled
    assert ((x0 - aligned) ** 2).sum() < ((x0 - x1) ** 2).sum()
    with EnergyModel(s, n_workers=1) as model:
        u = model(t.from_flow(torch.as_tensor(x1))[0].numpy())
        u_al = model(t.from_flow(torch.as_tensor(aligned))[0].numpy())
    np.testing.assert_allclose(u_al, u, rtol=1e-8, atol=1e-6)


def test_ot_targets_record_and_apply_the_alignment(tmp_path):
    from bgkit.train.molecular import make_ot_targets
    from bgkit.train.targets import load_targets

    s = load_system("ala2")
    make_ot_targets("ala2", tmp_path / "a.npz", n=300, block_size=300, coords="cartesian")
    make_ot_targets("ala2", tmp_path / "p.npz", n=300, block_size=300, align=False, coords="cartesian")
    a, p = load_targets(tmp_path / "a.npz"), load_targets(tmp_path / "p.npz")
    assert a.provenance["aligned_groups"] == terminal_groups(s) and p.provenance["aligned_groups"] == []
    np.testing.assert_array_equal(a.x0, p.x0)  # same seed, same OT pairing; only labels differ
    expected, _ = align_groups(p.x0, p.x1, terminal_groups(s))
    np.testing.assert_array_equal(a.x1, expected)
    assert a.provenance["relabelled_pairs"] > 0


def test_rotor_relabelling_is_a_random_cyclic_shift_of_each_methyl_with_the_same_energy():
    """Each augmented frame is the original with every methyl's hydrogens cyclically relabelled (all three
    shifts occur, never a transposition, no other atom moves relative to the rest), at identical OpenMM energy."""
    from bgkit.coords import InternalCoords
    from bgkit.symmetry import RotorRelabel, rotor_groups

    s = load_system("ala2")
    ds = load_dataset("ala2")
    xyz = ds.xyz[:: len(ds.xyz) // 300][:300].astype(np.float64)
    groups = rotor_groups(s, xyz[:3])
    assert _names(s, groups) == [["ACE:H1", "ACE:H2", "ACE:H3"], ["ALA:HB1", "ALA:HB2", "ALA:HB3"],
                                 ["NME:H1", "NME:H2", "NME:H3"]]
    rep = InternalCoords.fit(xyz, s)
    y = rep.to_flow(torch.as_tensor(xyz))[0]
    torch.manual_seed(0)
    (y_aug,) = RotorRelabel(rep, groups)((y,))
    assert y_aug.shape == y.shape and torch.isfinite(y_aug).all()
    x = rep.from_flow(y)[0].numpy()
    x_aug = rep.from_flow(y_aug)[0].numpy()
    d = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1)
    d_aug = np.linalg.norm(x_aug[:, :, None] - x_aug[:, None], axis=-1)
    seen = set()
    for i in range(len(x)):  # brute force over the 27 cyclic relabellings: exactly one reproduces every distance
        matches = []
        for shifts in itertools.product(range(3), repeat=len(groups)):
            perm = np.arange(s.n_atoms)
            for g, k in zip(groups, shifts):
                perm[g] = [g[(j + k) % 3] for j in range(3)]
            if np.abs(d_aug[i] - d[i][np.ix_(perm, perm)]).max() < 1e-6:
                matches.append(shifts)
        assert len(matches) == 1, (i, matches)
        seen.update(enumerate(matches[0]))
    assert seen == {(j, k) for j in range(3) for k in range(3)}
    with EnergyModel(s, n_workers=1) as model:
        np.testing.assert_allclose(model(x_aug), model(x), rtol=1e-7, atol=1e-5)
