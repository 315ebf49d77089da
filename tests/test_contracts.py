"""Contracts every entry of a registry must keep, parametrised over the registry itself so that a new entry is
tested automatically: flow architectures (``bgkit.flows.ARCHITECTURES``), coordinate representations
(``bgkit.coords.REPRESENTATIONS``) and training objectives (``bgkit.train.objectives.OBJECTIVES``).

Truths are independent of the code under test: autograd Jacobians for log-determinants, interatomic
distances of real MD frames for round trips, the loss before and after a few optimiser steps for objectives.
The variants of each architecture (periodic dimensions, TarFlow modes, ...) are tested in test_flows.py and
test_coords.py, whose helpers are reused here.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math

import click
import numpy as np
import pytest
import torch
from _cli_helpers import cli_commands
from test_coords import pairwise, rotation_matrix
from test_flows import circular_diff, make, points

from bgkit import BgkitError
from bgkit.coords import (
    REPRESENTATIONS,
    fit_representation,
    random_rotations,
    representation_from_state,
    rotate,
)
from bgkit.flows import (
    ARCHITECTURES,
    FLOW_ARCHITECTURES,
    Flow,
    architecture,
    build_flow,
)
from bgkit.train.objectives import OBJECTIVES

# --------------------------------------------------------------------------- flows

D = 6  #: flow dimension of the flow contracts (divisible by TarFlow's default token size)
#: small hyperparameters per architecture so that each test takes well under a second; an architecture added
#: to the registry without an entry here is tested with its defaults. The CNF's ODE is solved with 20 fixed RK4
#: steps: round trip and log-determinant are then exact to about 1e-7 (the discretisation error).
SMALL = {"realnvp": {"n_layers": 4, "hidden": 16, "n_blocks": 1},
         "nsf": {"n_layers": 4, "hidden": 16, "n_blocks": 1, "bins": 6},
         "tarflow": {"width": 16, "n_blocks": 2, "n_layers": 1, "n_heads": 2},
         "cnf": {"hidden": 16, "n_blocks": 1, "time_freqs": 2, "method": "rk4", "steps": 20}}
#: round-trip and log|det J| tolerance of the ODE flow (solver error); exact flows agree to float64 rounding
TOL = {"cnf": 1e-6}
ARCHS = sorted(ARCHITECTURES)


def small_flow(arch: str, dtype: torch.dtype = torch.float64, **extra) -> Flow:
    """A small flow of ``arch`` with perturbed parameters, clearly not the identity."""
    return make(arch, D, {**SMALL.get(arch, {}), **extra}, dtype, noise=0.1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flow_shapes_dtypes_and_identity(arch: str, dtype: torch.dtype) -> None:
    """forward/inverse map [B, D] -> ([B, D], log-det [B]) in the input's dtype; the class registered under
    a name says that name and rebuilds from (arch, dim, hparams)."""
    flow = small_flow(arch, dtype)
    assert isinstance(flow, Flow) and type(flow) is architecture(arch) and flow.arch == arch and flow.dim == D
    z = points(D, 5, dtype)
    x, ld = flow(z)
    for out, logdet in ((x, ld), flow.inverse(z)):
        assert out.shape == (5, D) and out.dtype == dtype and torch.isfinite(out).all()
        assert logdet.shape == (5,) and logdet.dtype == dtype and torch.isfinite(logdet).all()
    log_prob = flow.log_prob(z)
    assert log_prob.shape == (5,) and log_prob.dtype == dtype
    samples, log_q = flow.sample(7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (7, D) and log_q.shape == (7,) and samples.dtype == log_q.dtype == dtype
    rebuilt = build_flow(flow.arch, flow.dim, **json.loads(json.dumps(flow.hparams))).to(dtype)
    rebuilt.load_state_dict(flow.state_dict())
    x_rebuilt, ld_rebuilt = rebuilt(z)
    assert torch.equal(x_rebuilt, x) and torch.equal(ld_rebuilt, ld)


@pytest.mark.parametrize("arch", ARCHS)
def test_flow_inverse_of_forward_is_the_identity(arch: str) -> None:
    flow = small_flow(arch)
    z = points(D, 32, torch.float64)
    x, ld = flow(z)
    assert (x - z).abs().max() > 1e-2, "the perturbed flow should not be the identity"
    z_back, ld_back = flow.inverse(x)
    tol = TOL.get(arch, 1e-10)
    assert (z_back - z).abs().max() < tol
    assert (ld + ld_back).abs().max() < 10 * tol  # log|det dz/dx| at x = f(z) is -log|det dx/dz|
    x_back, _ = flow(flow.inverse(z)[0])
    assert (x_back - z).abs().max() < tol


@pytest.mark.parametrize("arch", ARCHS)
def test_flow_log_det_matches_the_autograd_jacobian(arch: str) -> None:
    flow = small_flow(arch)
    z = points(D, 3, torch.float64)
    x, ld = (t.detach() for t in flow(z))
    ld_inv = flow.inverse(x)[1].detach()
    tol = TOL.get(arch, 1e-8)
    for i in range(len(z)):
        jf = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], z[i])
        ji = torch.autograd.functional.jacobian(lambda v: flow.inverse(v[None])[0][0], x[i])
        (sf, lf), (si, li) = torch.linalg.slogdet(jf), torch.linalg.slogdet(ji)
        assert sf > 0 and si > 0  # orientation preserving
        assert abs(float(lf - ld[i])) < tol and abs(float(li - ld_inv[i])) < tol, (float(lf), float(ld[i]))


@pytest.mark.parametrize("arch", ARCHS)
def test_flow_log_prob_of_its_samples(arch: str) -> None:
    """sample's log q (prior - forward log-det) equals log_prob (inverse pass); seeded samples repeat."""
    flow = small_flow(arch)
    x, log_q = flow.sample(16, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(flow.log_prob(x), log_q, atol=TOL.get(arch, 1e-10))
    assert torch.equal(flow.sample(16, generator=torch.Generator().manual_seed(3))[0], x)


@pytest.mark.parametrize("arch", ARCHS)
def test_flow_periodic_dimensions_stay_on_the_circle(arch: str) -> None:
    """Where an architecture takes periodic dimensions, angles map into [-pi, pi] and back (modulo 2 pi)."""
    if "periodic" not in inspect.signature(architecture(arch).__init__).parameters:
        pytest.skip(f"{arch} has no periodic dimensions")
    hp = {"periodic": [1, 4]}
    try:
        flow = make(arch, D, {**SMALL.get(arch, {}), **hp}, torch.float64, noise=0.05)
    except BgkitError:
        pytest.skip(f"{arch} refuses periodic dimensions")  # e.g. TarFlow (test_flows.py)
    z = points(D, 32, torch.float64, hp)
    x, ld = flow(z)
    assert x[:, [1, 4]].abs().max() <= math.pi + 1e-12
    assert circular_diff(x, z, hp).abs().max() > 1e-3, "the perturbed flow should not be the identity"
    z_back, ld_back = flow.inverse(x)
    assert circular_diff(z_back, z, hp).abs().max() < TOL.get(arch, 1e-9)
    assert (ld + ld_back).abs().max() < 10 * TOL.get(arch, 1e-9)


# --------------------------------------------------------------------------- representations

KINDS = sorted(REPRESENTATIONS)


@pytest.fixture(scope="module")
def ala2_frames():
    """(system, 300 train frames, 8 test frames) of the shipped ala2 MD, float64 nm."""
    from bgkit.md.dataset import load_dataset
    from bgkit.systems import load_system

    system = load_system("ala2")
    ds = load_dataset("ala2", system)
    idx = ds.split_indices()
    rng = np.random.default_rng(0)
    train = ds.xyz[rng.choice(idx["train"], 300, replace=False)].astype(np.float64)
    test = ds.xyz[rng.choice(idx["test"], 8, replace=False)].astype(np.float64)
    return system, train, test


@pytest.mark.parametrize("kind", KINDS)
def test_representation_round_trip_keeps_every_distance(kind: str, ala2_frames) -> None:
    """frame -> flow vector -> frame: all interatomic distances within 1e-5 nm; shapes, dtypes, the log-det
    convention (logdet_from = -logdet_to) and the JSON state round trip."""
    system, train, test = ala2_frames
    rep = fit_representation(kind, train, system)
    assert rep.kind == kind and rep.n_atoms == system.n_atoms
    x = torch.as_tensor(test)
    y, ld = rep.to_flow(x)
    assert y.shape == (len(x), rep.dim) and ld.shape == (len(x),) and y.dtype == ld.dtype == torch.float64
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    back, ld_back = rep.from_flow(y)
    assert back.shape == x.shape and back.dtype == torch.float64
    assert back.mean(1).abs().max() < 1e-9  # centred
    assert (pairwise(back) - pairwise(x)).abs().max() < 1e-5  # nm
    assert torch.allclose(ld_back, -ld, atol=1e-8)
    per = list(rep.periodic)
    assert set(per) <= set(range(rep.dim)) and (not per or y[:, per].abs().max() <= math.pi)
    y_again, _ = rep.to_flow(back)
    assert circular_diff(y_again, y, {"periodic": per}).abs().max() < 1e-6
    again = representation_from_state(json.loads(json.dumps(rep.state_dict())))
    assert again == rep and torch.equal(again.to_flow(x)[0], y)


@pytest.mark.parametrize("kind", KINDS)
def test_representation_log_det_matches_the_autograd_jacobian(kind: str, ala2_frames) -> None:
    """logdet_from is log|det| of flow vector -> centred first N-1 atoms (nm), the density convention of
    bgkit.coords.base. A representation that removes the orientation (D = 3N-6) is completed by a rotation
    vector omega: (y, omega) -> R(omega) from_flow(y) has log|det| = logdet_from - log 8 pi^2 + log h(omega),
    h(omega) = 2 (1 - cos|omega|) / |omega|^2 the Haar density of rotation vectors (total volume 8 pi^2)."""
    system, train, test = ala2_frames
    rep = fit_representation(kind, train, system)
    n = rep.n_atoms
    removed = 3 * (n - 1) - rep.dim
    assert removed in (0, 3), f"{kind}: {removed} removed degrees of freedom; extend this contract"
    omega = torch.tensor([0.3, -0.8, 0.5], dtype=torch.float64)[:removed]
    y, _ = rep.to_flow(torch.as_tensor(test[:2]))

    def centred_atoms(v: torch.Tensor) -> torch.Tensor:
        xyz, _ = rep.from_flow(v[None, : rep.dim])
        if removed:
            xyz = rotate(xyz, rotation_matrix(v[rep.dim:]))
        return xyz[0, : n - 1].reshape(-1)

    for row in y:
        sign, logdet = torch.linalg.slogdet(torch.autograd.functional.jacobian(centred_atoms, torch.cat([row, omega])))
        _, ld_from = rep.from_flow(row[None])
        expected = float(ld_from)
        if removed:
            theta = float(omega.norm())
            expected += -math.log(8 * math.pi ** 2) + math.log(2 * (1 - math.cos(theta)) / theta ** 2)
        assert sign != 0 and math.isclose(float(logdet), expected, abs_tol=1e-7), (float(logdet), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_representation_of_rotated_frames(kind: str, ala2_frames) -> None:
    """Translating a frame never changes its flow vector; a representation without ``augment`` (it removes the
    orientation) gives every rotation of a frame the same flow vector and log-det."""
    system, train, test = ala2_frames
    rep = fit_representation(kind, train, system)
    x = torch.as_tensor(test)
    y, ld = rep.to_flow(x)
    assert torch.allclose(rep.to_flow(x + torch.tensor([0.4, -1.0, 2.5], dtype=torch.float64))[0], y, atol=1e-9)
    if rep.augment is None:
        R = random_rotations(len(x), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        y_rot, ld_rot = rep.to_flow(rotate(x, R))
        assert torch.allclose(y_rot, y, atol=1e-8) and torch.allclose(ld_rot, ld, atol=1e-8)


# --------------------------------------------------------------------------- training objectives

#: the tiny problem: two atoms bound by a harmonic spring of rest vector R0 (nm) and stiffness 1/SIGMA^2 (kT/nm^2),
#: in cartesian coordinates of scale 1 nm (D = 3: the first atom's centred position, half the bond vector)
R0, SIGMA = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), 0.6


def spring_energy(xyz: torch.Tensor) -> torch.Tensor:
    """Reduced energy [B, 1] of positions [B, 2, 3] (nm)."""
    return ((xyz[:, 0] - xyz[:, 1] - R0.to(xyz.dtype)).pow(2).sum(-1, keepdim=True)) / (2 * SIGMA ** 2)


def tiny_problem(objective):
    """(model, batch, Boltzmann target) of the spring for ``objective``: frames drawn from exp(-u), or
    (prior draw, affine image) pairs for pair objectives."""
    from bgkit.coords import CartesianCoords
    from bgkit.train.kl import BoltzmannTarget

    g = torch.Generator().manual_seed(0)
    frames = (R0 / 2 + SIGMA / 2 * torch.randn(256, 3, generator=g, dtype=torch.float64)).float()
    arch = objective.model if objective.model in ARCHITECTURES else FLOW_ARCHITECTURES[0]
    torch.manual_seed(0)
    model = build_flow(arch, 3, **SMALL.get(arch, {}))
    if objective.pairs:
        x0 = torch.randn(256, 3, generator=g)
        batch = (x0, 0.3 * x0 + R0.float() / 2)
    else:
        batch = (frames,)
    return model, batch, BoltzmannTarget(CartesianCoords(2, 1.0), spring_energy)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_trains_a_tiny_problem(name: str) -> None:
    """One step returns a finite scalar loss with a gradient; a few Adam steps lower the loss (measured with
    the same randomness before and after)."""
    from bgkit.train.config import TrainConfig

    objective = OBJECTIVES[name]
    model, batch, target = tiny_problem(objective)
    config = TrainConfig(objective=name)

    def loss(seed: int | None = None):
        if seed is not None:
            torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return objective.loss(model, batch, config, generator=gen, train=True, target=target)

    before, stats = loss(seed=123)
    assert before.ndim == 0 and torch.isfinite(before) and before.requires_grad
    assert isinstance(stats, dict) and all(isinstance(v, (int, float)) for v in stats.values())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        value, _ = loss(seed=step)
        opt.zero_grad()
        value.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
    before, after = float(before.detach()), float(loss(seed=123)[0].detach())
    assert math.isfinite(after) and after < before - 0.25 * abs(before), (before, after)


def test_every_objective_is_offered_by_the_command_line() -> None:
    """The --objective choices of the commands are the registry: each objective offered by exactly one command,
    every choice registered, one kind of model per command, and each choice's summary in the option's help."""
    from bgkit.cli import main

    offered: dict[str, str] = {}
    for command_name, cmd in cli_commands(main):
        option = next((p for p in cmd.params if p.name == "objective"), None)
        if option is None:
            continue
        assert isinstance(option.type, click.Choice), command_name
        choices = list(option.type.choices)
        for choice in choices:
            assert choice in OBJECTIVES, (command_name, choice)
            assert choice not in offered, f"{choice} offered by {offered.get(choice)} and {command_name}"
            offered[choice] = command_name
            assert OBJECTIVES[choice].summary in " ".join(option.help.split()), (command_name, choice)
        assert len({OBJECTIVES[c].model for c in choices}) == 1, (command_name, choices)
    assert sorted(offered) == sorted(OBJECTIVES)
    # the training settings a user sets exist as options of the commands that train
    from bgkit.train.config import CLI_OPTIONS, TrainConfig

    commands = dict(cli_commands(main))
    options = {o for name in set(offered.values()) for p in commands[name].params for o in p.opts}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for field, option in CLI_OPTIONS.items():
        assert field in fields and option in options, (field, option)
