"""Exactness tests for bgkit.flows: inverses, log-determinants, log_prob, checkpoints."""
from __future__ import annotations

import io
import json
import math

import pytest
import torch

from bgkit import BgkitError
from bgkit.flows import ARCHITECTURES, Flow, TarFlow, build_flow

# (name, arch, dim, small hparams)
CONFIGS = [
    ("realnvp", "realnvp", 6, dict(n_layers=6, hidden=16, n_blocks=1)),
    ("nsf", "nsf", 6, dict(n_layers=6, hidden=16, n_blocks=1, bins=6)),
    ("tarflow-sample", "tarflow", 9, dict(width=16, n_blocks=2, n_layers=1, n_heads=2)),
    ("tarflow-density", "tarflow", 9, dict(width=16, n_blocks=2, n_layers=1, n_heads=2, parallel="density")),
    ("tarflow-scalar", "tarflow", 6, dict(token_size=1, width=16, n_blocks=3, n_layers=1, n_heads=2)),
    ("realnvp-periodic", "realnvp", 6, dict(n_layers=6, hidden=16, n_blocks=1, periodic=[1, 4], circular_bins=5)),
    ("nsf-periodic", "nsf", 6, dict(n_layers=6, hidden=16, n_blocks=1, bins=6, periodic=[0, 3, 5])),
]
IDS = [c[0] for c in CONFIGS]


def make(arch: str, dim: int, hp: dict, dtype: torch.dtype = torch.float64, noise: float | None = None) -> Flow:
    """Build a flow and perturb every parameter so that it is far from the identity (less for circle
    maps: their conditioners see cos/sin features, and strong noise makes the Jacobian singular)."""
    noise = noise if noise is not None else (0.1 if hp.get("periodic") else 0.2)
    torch.manual_seed(0)
    flow = build_flow(arch, dim, **hp).to(dtype)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(noise * torch.randn_like(p))
    return flow


def points(dim: int, n: int, dtype: torch.dtype, hp: dict | None = None) -> torch.Tensor:
    """Test inputs, a few beyond the spline bound (identity tails); periodic dims in [-pi, pi),
    the first rows exactly at and next to the cut."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, dim, generator=g, dtype=dtype)
    z[0] *= 4.0
    per = list((hp or {}).get("periodic", []))
    if per:
        z[:, per] = (2 * torch.rand(n, len(per), generator=g, dtype=dtype) - 1) * math.pi
        z[1, per] = -math.pi
        z[2, per] = math.pi - 1e-6
    return z


def circular_diff(a: torch.Tensor, b: torch.Tensor, hp: dict) -> torch.Tensor:
    """a - b with periodic dimensions wrapped to [-pi, pi)."""
    d = a - b
    per = list(hp.get("periodic", []))
    d[:, per] = torch.remainder(d[:, per] + math.pi, 2 * math.pi) - math.pi
    return d


@pytest.mark.parametrize("name,arch,dim,hp", CONFIGS, ids=IDS)
def test_identity_at_init(name: str, arch: str, dim: int, hp: dict) -> None:
    flow = build_flow(arch, dim, **hp).double()
    z = points(dim, 8, torch.float64, hp)
    x, ld = flow(z)
    assert torch.allclose(x, z, atol=1e-12) and torch.allclose(ld, torch.zeros_like(ld), atol=1e-12)


@pytest.mark.parametrize("name,arch,dim,hp", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_round_trip(name: str, arch: str, dim: int, hp: dict, dtype: torch.dtype, tol: float) -> None:
    flow = make(arch, dim, hp, dtype, noise=0.05)  # well-conditioned, yet clearly not the identity
    z = points(dim, 64, dtype, hp)
    x, ld = flow(z)
    assert (x - z).abs().max() > 1e-2, "perturbed flow should not be the identity"
    z2, ld_inv = flow.inverse(x)
    assert circular_diff(z2, z, hp).abs().max() <= tol
    assert (ld + ld_inv).abs().max() <= 100 * tol
    x2, _ = flow(flow.inverse(z)[0])
    assert circular_diff(x2, z, hp).abs().max() <= tol


@pytest.mark.parametrize("name,arch,dim,hp", CONFIGS, ids=IDS)
def test_logdet_matches_autograd(name: str, arch: str, dim: int, hp: dict) -> None:
    flow = make(arch, dim, hp)
    z = points(dim, 3, torch.float64, hp)
    x, ld = flow(z)
    _, ld_inv = flow.inverse(x)
    for i in range(z.shape[0]):
        jf = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], z[i])
        ji = torch.autograd.functional.jacobian(lambda v: flow.inverse(v[None])[0][0], x[i])
        sf, lf = torch.linalg.slogdet(jf)
        si, li = torch.linalg.slogdet(ji)
        assert sf > 0 and si > 0
        assert abs(lf - ld[i]) < 1e-8 and abs(li - ld_inv[i]) < 1e-8
    assert torch.allclose(ld, -ld_inv, atol=1e-10)


@pytest.mark.parametrize("name,arch,dim,hp", CONFIGS, ids=IDS)
def test_log_prob_of_sample(name: str, arch: str, dim: int, hp: dict) -> None:
    flow = make(arch, dim, hp)
    x, log_q = flow.sample(32, generator=torch.Generator().manual_seed(3))
    assert x.shape == (32, dim) and log_q.shape == (32,)
    assert torch.allclose(flow.log_prob(x), log_q, atol=1e-10)
    x_again, _ = flow.sample(32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, x_again)


@pytest.mark.parametrize("name,arch,dim,hp", CONFIGS, ids=IDS)
def test_build_flow_checkpoint_round_trip(name: str, arch: str, dim: int, hp: dict) -> None:
    flow = make(arch, dim, hp, torch.float32)
    buf = io.BytesIO()
    torch.save({"arch": flow.arch, "dim": flow.dim, "hparams": json.loads(json.dumps(flow.hparams)),
                "state": flow.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    torch.manual_seed(123)  # different init: everything must come from the state dict
    rebuilt = build_flow(ckpt["arch"], ckpt["dim"], **ckpt["hparams"])
    rebuilt.load_state_dict(ckpt["state"])
    z = points(dim, 16, torch.float32, hp)
    assert torch.equal(flow(z)[0], rebuilt(z)[0]) and torch.equal(flow.inverse(z)[0], rebuilt.inverse(z)[0])


def test_tarflow_block_is_autoregressive() -> None:
    flow = make("tarflow", 12, dict(width=16, n_blocks=2, n_layers=2, n_heads=2))
    for k, block in enumerate(flow.blocks):
        c = torch.randn(12, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: block.parallel(v.view(1, 4, 3))[0].reshape(12), c)
        tok = jac.view(4, 3, 4, 3).abs().sum((1, 3))  # [out token, in token]
        if k % 2:  # reversed order: upper triangular
            tok = tok.flip(0).flip(1)
        assert torch.all(tok.triu(1) == 0)
        assert torch.allclose(jac[:3, :3] if k % 2 == 0 else jac[9:, 9:], torch.eye(3, dtype=torch.float64))


def test_tarflow_sequential_is_differentiable() -> None:
    flow = make("tarflow", 9, dict(width=16, n_blocks=2, n_layers=1, n_heads=2), torch.float32)
    x = torch.randn(4, 9)
    z, ld = flow.inverse(x)  # sequential in "sample" mode
    (z.pow(2).sum() + ld.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in flow.parameters())


def test_build_flow_errors_and_defaults() -> None:
    with pytest.raises(BgkitError, match="realnvp"):
        build_flow("glow", 6)
    with pytest.raises(BgkitError, match="token_size"):
        build_flow("tarflow", 10, token_size=3)
    with pytest.raises(BgkitError, match="hiddn"):
        build_flow("nsf", 6, hiddn=3)
    with pytest.raises(BgkitError) as unknown:
        build_flow("Realnvp", 6)
    assert all(f"'{arch}'" in str(unknown.value) for arch in ARCHITECTURES), unknown.value  # offers every choice
    with pytest.raises(BgkitError, match="divergence"):
        build_flow("cnf", 6, divergence="approximate")
    t = build_flow("tarflow", 66)
    assert isinstance(t, TarFlow) and t.hparams["width"] == 256 and t.hparams["parallel"] == "sample"
    for arch in ARCHITECTURES:
        json.dumps(build_flow(arch, 6).hparams)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,arch,dim,hp", CONFIGS, ids=IDS)
def test_cuda_round_trip_and_cpu_generator(name: str, arch: str, dim: int, hp: dict) -> None:
    flow = make(arch, dim, hp, torch.float64, noise=0.05).cuda()
    x, log_q = flow.sample(16, generator=torch.Generator().manual_seed(0))
    assert x.is_cuda and torch.allclose(flow.log_prob(x), log_q, atol=1e-10)
    z = points(dim, 16, torch.float64, hp).cuda()
    assert (flow.inverse(flow(z)[0])[0] - z).abs().max() <= 1e-10


@pytest.mark.parametrize("arch,hp", [("nsf", dict(n_layers=4, hidden=16, n_blocks=1, bins=6, periodic=[1])),
                                     ("realnvp", dict(n_layers=4, hidden=16, n_blocks=1, periodic=[1]))])
def test_periodic_flow_is_continuous_across_the_cut_and_normalised(arch: str, hp: dict) -> None:
    """Angles just either side of +-pi map to nearby angles (a circle map), and q integrates to 1 on R x S^1."""
    flow = make(arch, 2, hp, noise=0.1)
    x = torch.tensor([[0.3, math.pi - 1e-9], [0.3, -math.pi]], dtype=torch.float64)
    z, _ = flow.inverse(x)
    assert circular_diff(z[:1], z[1:], hp).abs().max() < 1e-6
    y, _ = flow(z)
    assert circular_diff(y, x, hp).abs().max() < 1e-9
    assert ((y[:, 1] >= -math.pi) & (y[:, 1] <= math.pi)).all()  # float rounding may give pi itself
    s, t = torch.meshgrid(torch.linspace(-12, 12, 1201, dtype=torch.float64),
                          torch.linspace(-math.pi, math.pi, 801, dtype=torch.float64)[:-1], indexing="ij")
    grid = torch.stack([s.flatten(), t.flatten()], -1)
    with torch.no_grad():
        total = flow.log_prob(grid).exp().sum() * (24 / 1200) * (2 * math.pi / 800)
    assert abs(float(total) - 1.0) < 2e-3
    z_prior = flow.prior_sample(20000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert z_prior[:, 1].min() >= -math.pi and z_prior[:, 1].max() < math.pi and abs(float(z_prior[:, 1].mean())) < 0.05


def test_tarflow_refuses_periodic_dimensions() -> None:
    with pytest.raises(BgkitError, match="periodic"):
        build_flow("tarflow", 6, periodic=[1])


@pytest.mark.parametrize("bound", [5.0, math.pi])
def test_rq_spline_equals_zukos_own_parametrisation(bound: float) -> None:
    """The explicit-softmax spline has zuko's knots, values, log-dets and inverse (float64, wide params)."""
    from zuko.transforms import MonotonicRQSTransform

    from bgkit.flows.splines import rq_spline

    g = torch.Generator().manual_seed(3)
    w, h, d = (4 * torch.randn(500, 6, k, generator=g, dtype=torch.float64) for k in (8, 8, 7))
    x = 1.5 * bound * torch.randn(500, 6, generator=g, dtype=torch.float64)  # some outside the bound
    ours, zukos = rq_spline(w, h, d, bound=bound), MonotonicRQSTransform(w, h, d, bound=bound)
    for name in ("horizontal", "vertical", "derivatives"):
        torch.testing.assert_close(getattr(ours, name), getattr(zukos, name), rtol=1e-12, atol=1e-12)
    (y1, l1), (y2, l2) = ours.call_and_ladj(x), zukos.call_and_ladj(x)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.inv(y1), zukos.inv(y2), rtol=1e-9, atol=1e-9)
