"""Tests for bgkit.coords: the cartesian and internal representations, geometry, z-matrices."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bgkit import BgkitError
from bgkit.coords import (CartesianCoords, InternalCoords, build_zmatrix, center, fit_representation,
                          random_rotations, representation_from_state, rotate)
from bgkit.coords.geometry import bond_angles, dihedrals, place
from bgkit.chirality import chiral_centres, chirality_signs

DATA = Path(__file__).parent / "data"
N = 5


def frames(b: int = 8, n: int = N) -> torch.Tensor:
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3 + 1.0


def pairwise(x: torch.Tensor) -> torch.Tensor:
    """Exact pairwise distances [B, N, N] (no matrix-product shortcut)."""
    return (x[:, :, None] - x[:, None]).norm(dim=-1)


def rotation_matrix(omega: torch.Tensor) -> torch.Tensor:
    """exp of the skew matrix of a rotation vector omega [3]."""
    z = omega.new_zeros(())
    K = torch.stack([torch.stack([z, -omega[2], omega[1]]), torch.stack([omega[2], z, -omega[0]]),
                     torch.stack([-omega[1], omega[0], z])])
    return torch.linalg.matrix_exp(K)


# ------------------------------------------------------------------ cartesian
def test_cartesian_round_trip_and_translation_invariance() -> None:
    xyz = frames()
    ct = CartesianCoords.fit(xyz)
    y, ld = ct.to_flow(xyz)
    assert y.shape == (8, 3 * N - 3) and ct.dim == 3 * N - 3 and ct.periodic == ()
    back, ld_back = ct.from_flow(y)
    assert torch.allclose(back, center(xyz), atol=1e-12)
    assert torch.allclose(ld, -ld_back) and torch.allclose(ld, torch.full((8,), ct.log_det_to_flow, dtype=ld.dtype))
    shifted = xyz + torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    assert torch.allclose(ct.to_flow(shifted)[0], y, atol=1e-12)
    assert math.isclose(ct.scale, float(center(xyz).pow(2).mean().sqrt()))
    assert representation_from_state(ct.state_dict()) == ct
    assert representation_from_state({"n_atoms": N, "scale": ct.scale}) == ct  # legacy state: no kind
    with pytest.raises(BgkitError):
        ct.to_flow(torch.zeros(2, N + 1, 3))
    with pytest.raises(BgkitError):
        CartesianCoords(N, -1.0)


def test_cartesian_log_det_matches_autograd() -> None:
    ct = CartesianCoords(n_atoms=N, scale=0.37)

    def u_to_y(u: torch.Tensor) -> torch.Tensor:  # first N-1 centred atoms (nm) -> y
        c = u.view(N - 1, 3)
        return ct.to_flow(torch.cat([c, -c.sum(0, keepdim=True)])[None])[0][0]

    u = center(frames(1))[0, :-1].reshape(-1)
    sign, logdet = torch.linalg.slogdet(torch.autograd.functional.jacobian(u_to_y, u))
    assert sign > 0 and math.isclose(float(logdet), ct.log_det_to_flow, rel_tol=1e-12)


def test_random_rotations_are_uniform_rotations() -> None:
    R = random_rotations(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(R @ R.transpose(-1, -2), eye.expand(20000, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(20000, dtype=torch.float64), atol=1e-12)
    assert R.mean(0).abs().max() < 0.03  # Haar: E[R] = 0 (std of each mean ~ 0.004)
    v = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    rv = R @ v
    assert torch.allclose(rv.T @ rv / 20000, v.dot(v) / 3 * eye, atol=0.05 * v.dot(v))
    xyz = center(frames())
    xr = rotate(xyz, R[:8])
    assert torch.allclose(pairwise(xr), pairwise(xyz), atol=1e-12)


# ------------------------------------------------------------------- geometry
def test_nerf_places_points_with_the_requested_internal_coordinates() -> None:
    g = torch.Generator().manual_seed(0)
    j, k, l = torch.randn(3, 50, 3, generator=g, dtype=torch.float64)
    bond = 0.1 + torch.rand(50, generator=g, dtype=torch.float64)
    angle = 0.2 + 2.7 * torch.rand(50, generator=g, dtype=torch.float64)
    torsion = (2 * torch.rand(50, generator=g, dtype=torch.float64) - 1) * math.pi
    i = place(j, k, l, bond, angle, torsion)
    assert torch.allclose((i - j).norm(dim=-1), bond, atol=1e-12)
    assert torch.allclose(bond_angles(i, j, k), angle, atol=1e-10)
    assert torch.allclose(dihedrals(i, j, k, l), torsion, atol=1e-10)
    assert torch.allclose(dihedrals(l, k, j, i), torsion, atol=1e-10)  # symmetric under reversal


def test_dihedral_sign_is_the_iupac_one() -> None:
    """Looking down b->c, a clockwise turn from a to d is positive (IUPAC); trans = pi."""
    a = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.zeros(1, 3, dtype=torch.float64)
    c = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    d = torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)  # a rotated by +90 deg about +z (counter-clockwise)
    assert math.isclose(float(dihedrals(a, b, c, d)), -math.pi / 2, abs_tol=1e-12)
    assert math.isclose(abs(float(dihedrals(a, b, c, torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64)))),
                        math.pi, abs_tol=1e-12)


def test_zmatrix_of_a_branched_molecule() -> None:
    # isobutane-like: C0 bonded to C1, C2, C3; H's on C1
    bonds = [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6)]
    z = build_zmatrix(7, bonds, heavy=[True] * 4 + [False] * 3)
    assert sorted(z.order.tolist()) == list(range(7))
    rows = z.rows
    placed = set()
    for r, (i, j, k, l) in enumerate(rows):
        if r >= 1:
            assert (min(i, j), max(i, j)) in {tuple(sorted(b)) for b in bonds} and j in placed
        if r >= 2:
            assert k in placed and k != j
        if r >= 3:
            assert l in placed and len({i, j, k, l}) == 4
        placed.add(i)
    assert z.branch[3:].sum() >= 2  # C3 and two of the hydrogens refer to a sibling
    with pytest.raises(BgkitError, match="connected"):
        build_zmatrix(5, [(0, 1), (1, 2), (3, 4)], heavy=[True] * 5)


# ------------------------------------------------------------------- internal
def _user_system(tmp_path: Path):
    """A user system folder for a molecule bgkit does not ship (Ace-Val-Nme), built from its sequence."""
    from bgkit.build import write_built_pdb
    from bgkit.systems import load_system

    folder = tmp_path / "valine"
    folder.mkdir()
    (folder / "system.yaml").write_text(textwrap.dedent("""\
        name: ace-val-nme
        topology: mol.pdb
        forcefield: [amber99sbildn.xml, amber99_obc.xml]
        temperature_K: 300
        build:
          sequence: [ACE, VAL, NME]
    """))
    system = load_system(folder)
    write_built_pdb(system)
    return load_system(folder)


def _md_like_frames(system, n: int, seed: int = 0) -> np.ndarray:
    from bgkit.md.dataset import load_dataset

    if system.name in ("ala2", "ala3", "ala4"):
        xyz = load_dataset(system.name).split("test")
        return xyz[np.random.default_rng(seed).choice(len(xyz), n, replace=False)].astype(np.float64)
    rng = np.random.default_rng(seed)
    return system.positions[None] + 0.01 * rng.standard_normal((n, system.n_atoms, 3))


@pytest.mark.parametrize("name", ["ala2", "ala3", "ala4", "user"])
def test_internal_round_trip_keeps_distances_and_chirality(name, tmp_path) -> None:
    from bgkit.systems import load_system

    system = _user_system(tmp_path) if name == "user" else load_system(name)
    train = _md_like_frames(system, 400, seed=1)
    ic = fit_representation("internal", train, system)
    assert ic.dim == 3 * system.n_atoms - 6
    x = torch.as_tensor(_md_like_frames(system, 200, seed=2))
    y, ld = ic.to_flow(x)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    back, ld_back = ic.from_flow(y)
    assert (pairwise(back) - pairwise(x)).abs().max() < 1e-5  # nm
    quads = chiral_centres(system.topology)
    assert len(quads) and np.array_equal(chirality_signs(back.numpy(), quads), chirality_signs(x.numpy(), quads))
    assert torch.allclose(ld, -ld_back, atol=1e-8)
    # any rotation and translation of the input gives the same flow vector
    R = random_rotations(len(x), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y_rot, ld_rot = ic.to_flow(rotate(x, R) + 1.7)
    assert torch.allclose(y_rot, y, atol=1e-9) and torch.allclose(ld_rot, ld, atol=1e-8)
    # the state survives a JSON round trip
    import json

    again = representation_from_state(json.loads(json.dumps(ic.state_dict())))
    assert torch.allclose(again.to_flow(x)[0], y)


def test_internal_bounds_stereocentres_and_rejects_mirror_images() -> None:
    from bgkit.systems import load_system

    system = load_system("ala2")
    ic = fit_representation("internal", _md_like_frames(system, 400), system)
    # any flow vector, however far out, decodes to the right chirality
    y = 6.0 * torch.randn(2000, ic.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xyz, _ = ic.from_flow(y)
    quads = chiral_centres(system.topology)
    ref = chirality_signs(system.positions, quads)[0]
    assert (chirality_signs(xyz.numpy(), quads) == ref).all()
    mirrored = torch.as_tensor(_md_like_frames(system, 5)) * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert not torch.isfinite(ic.to_flow(mirrored)[0]).all(-1).any()


def _four_atoms(seed: int = 0, n: int = 400) -> tuple[InternalCoords, torch.Tensor]:
    """A 4-atom chain (bonds, angles, one periodic torsion) and n frames around it."""
    z = build_zmatrix(4, [(0, 1), (1, 2), (2, 3)], heavy=[True] * 4)
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.randn(n, 5, generator=g, dtype=torch.float64),
                   (2 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 1) * math.pi], dim=-1)
    ic = InternalCoords(z, [0.15] * 3, [0.03] * 3, [1.9] * 2, [0.3] * 2, [True], [0.0], [2 * math.pi], [0.0], [1.0])
    return ic, ic.from_flow(y)[0]


def test_internal_log_det_matches_autograd_jacobian() -> None:
    """(y, rotation vector) -> first N-1 centred atoms: log|det J| = logdet_from - log 8 pi^2 + log Haar density."""
    from bgkit.systems import load_system

    for ic, x in (_four_atoms(), (lambda s: (fit_representation("internal", _md_like_frames(s, 300), s),
                                             torch.as_tensor(_md_like_frames(s, 3, seed=5))))(load_system("ala2"))):
        n = ic.n_atoms
        y, _ = ic.to_flow(x)
        omega = torch.tensor([0.3, -0.8, 0.5], dtype=torch.float64)
        theta = float(omega.norm())

        def g(v: torch.Tensor) -> torch.Tensor:
            xyz, _ = ic.from_flow(v[None, : ic.dim])
            return rotate(xyz, rotation_matrix(v[ic.dim:]))[0, : n - 1].reshape(-1)

        for row in y[:3]:
            v = torch.cat([row, omega])
            sign, logdet = torch.linalg.slogdet(torch.autograd.functional.jacobian(g, v))
            _, ld_from = ic.from_flow(row[None])
            haar = math.log(2 * (1 - math.cos(theta)) / theta ** 2)
            assert math.isclose(float(logdet), float(ld_from) - math.log(8 * math.pi ** 2) + haar, abs_tol=1e-7)


def test_internal_density_integrates_to_one() -> None:
    """q_C(x) = q_y(to_flow(x)) exp(logdet_to) integrates to 1 over the 9 centred coordinates of 4 atoms.

    Monte Carlo: E_g[q_C / g] over a Gaussian g that covers q_C (moment-matched, inflated).
    """
    ic, x = _four_atoms(n=20000, seed=1)

    def log_q(xyz: torch.Tensor) -> torch.Tensor:  # prior: N(0, 1) on bonds/angles, uniform on the torsion
        y, ld = ic.to_flow(xyz)
        lp = -0.5 * y[:, :5].pow(2).sum(-1) - 2.5 * math.log(2 * math.pi) - math.log(2 * math.pi)
        return torch.nan_to_num(lp + ld, nan=-math.inf)

    R = random_rotations(len(x), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    c = rotate(center(x), R)[:, :3].reshape(len(x), 9)
    mean, cov = c.mean(0), torch.cov(c.T) * 1.5 ** 2 + 1e-6 * torch.eye(9, dtype=torch.float64)
    g = torch.distributions.MultivariateNormal(mean, cov)
    u = g.sample((400_000,))
    full = torch.cat([u.view(-1, 3, 3), -u.view(-1, 3, 3).sum(1, keepdim=True)], dim=1)
    ratio = torch.exp(log_q(full) - g.log_prob(u))
    est, se = float(ratio.mean()), float(ratio.std() / math.sqrt(len(ratio)))
    assert se < 0.03 and abs(est - 1.0) < 4 * se + 0.01, (est, se)


def test_legacy_proposal_loads_and_samples_as_before() -> None:
    """A proposal file written by bgkit 0.1 (cartesian, no representation kind) gives the same numbers."""
    from bgkit.proposal import Proposal

    p = Proposal.load(DATA / "legacy_proposal.pt", system="ala2")
    assert p.transform.kind == "cartesian" and p.finished
    ref = np.load(DATA / "legacy_expected.npz")
    xyz, log_q = p.sample(5, generator=torch.Generator().manual_seed(7))
    np.testing.assert_allclose(xyz, ref["xyz"], atol=1e-6)
    np.testing.assert_allclose(log_q, ref["log_q"], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(p.log_prob(ref["md"]), ref["log_q_md"], rtol=1e-6, atol=1e-4)
