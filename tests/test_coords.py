"""Tests for bgkit.coords: flow coordinates, rotations, signed volumes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bgkit import BgkitError
from bgkit.coords import CoordinateTransform, center, random_rotations, rotate, signed_volumes

N = 5


def frames(b: int = 8, n: int = N) -> torch.Tensor:
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3 + 1.0


def test_round_trip_and_translation_invariance() -> None:
    xyz = frames()
    ct = CoordinateTransform.fit(xyz)
    y = ct.to_flow(xyz)
    assert y.shape == (8, 3 * N - 3) and ct.dim == 3 * N - 3
    assert torch.allclose(ct.from_flow(y), center(xyz), atol=1e-12)
    assert torch.allclose(ct.from_flow(y).mean(-2), torch.zeros(8, 3, dtype=torch.float64), atol=1e-12)
    shifted = xyz + torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    assert torch.allclose(ct.to_flow(shifted), y, atol=1e-12)
    assert torch.allclose(ct.to_flow(xyz.numpy()), y)  # numpy accepted


def test_fit_scale_and_dict_round_trip() -> None:
    xyz = frames(200)
    ct = CoordinateTransform.fit(xyz)
    assert math.isclose(ct.scale, float(center(xyz).pow(2).mean().sqrt()))
    assert 0.2 < ct.scale < 0.4
    assert CoordinateTransform.from_dict(ct.state_dict()) == ct
    with pytest.raises(BgkitError):
        ct.to_flow(torch.zeros(2, N + 1, 3))
    with pytest.raises(BgkitError):
        CoordinateTransform(N, -1.0)


def test_log_det_to_flow_matches_autograd() -> None:
    ct = CoordinateTransform(n_atoms=N, scale=0.37)

    def u_to_y(u: torch.Tensor) -> torch.Tensor:  # first N-1 centred atoms (nm) -> y
        c = u.view(N - 1, 3)
        return ct.to_flow(torch.cat([c, -c.sum(0, keepdim=True)])[None])[0]

    u = center(frames(1))[0, :-1].reshape(-1)
    jac = torch.autograd.functional.jacobian(u_to_y, u)
    sign, logdet = torch.linalg.slogdet(jac)
    assert sign > 0 and math.isclose(float(logdet), ct.log_det_to_flow, rel_tol=1e-12)
    assert math.isclose(ct.log_det_to_flow, -(3 * N - 3) * math.log(0.37))


def test_random_rotations_are_uniform_rotations() -> None:
    R = random_rotations(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(R @ R.transpose(-1, -2), eye.expand(20000, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(20000, dtype=torch.float64), atol=1e-12)
    # Haar measure: E[R] = 0, E[R v] = 0, E[(R v)(R v)^T] = |v|^2 I / 3 (std of each mean ~ 0.004)
    assert R.mean(0).abs().max() < 0.03
    v = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    rv = R @ v
    assert rv.mean(0).abs().max() < 0.03 * v.norm()
    assert torch.allclose(rv.T @ rv / 20000, v.dot(v) / 3 * eye, atol=0.05 * v.dot(v))


def test_rotate_preserves_flow_geometry() -> None:
    xyz = center(frames())
    R = random_rotations(8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xr = rotate(xyz, R)
    assert torch.allclose(torch.cdist(xr, xr), torch.cdist(xyz, xyz), atol=1e-12)
    assert torch.allclose(xr[3, 2], R[3] @ xyz[3, 2])
    assert torch.allclose(rotate(xyz, R[0]), xyz @ R[0].T)


def test_signed_volume_flips_under_mirroring() -> None:
    xyz = frames()
    quads = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    vol = signed_volumes(xyz, quads)
    mirror = xyz * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert vol.shape == (8, 2)
    assert torch.allclose(signed_volumes(mirror, quads), -vol)
    R = random_rotations(8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.allclose(signed_volumes(rotate(xyz, R), quads), vol)
    tet = np.array([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]])
    assert np.allclose(signed_volumes(tet, np.array([[0, 1, 2, 3]])), [[1.0]])
