"""The reverse-KL (energy-based) training term against analytic Gaussians."""
from __future__ import annotations

import math

import pytest
import torch

from bgkit import BgkitError
from bgkit.flows import build_flow
from bgkit.train import TrainConfig, train
from bgkit.train.kl import BoltzmannTarget


class Identity:
    """A stand-in representation: flow vectors are the positions (log|det| 0)."""

    def from_flow(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y, y.new_zeros(y.shape[0])


def gaussian_energy(sigma: float):
    return lambda x: (0.5 * x.pow(2).sum(-1, keepdim=True) / sigma ** 2)


def test_kl_of_the_exact_proposal_is_minus_log_z() -> None:
    """q = p = N(0, I): u + log q = -log Z for every sample, so the estimate is exact and log w constant."""
    flow = build_flow("nsf", 4, n_layers=2, hidden=8, n_blocks=1).double()  # identity at init
    target = BoltzmannTarget(Identity(), gaussian_energy(1.0))
    kl, stats = target.kl_loss(flow, 500)
    assert math.isclose(float(kl.detach()), -2 * math.log(2 * math.pi), abs_tol=1e-9)  # log Z = (D/2) log 2 pi
    assert stats["log_w_std"] < 1e-9 and stats["n_invalid"] == 0


def test_kl_estimates_the_gaussian_divergence_and_damps_large_energies() -> None:
    """q = N(0, I), p = N(0, s^2 I) in D dims: KL = D/2 (1/s^2 - 1 + 2 log s); estimate within 4 standard errors."""
    D, s = 4, 0.7
    flow = build_flow("nsf", D, n_layers=2, hidden=8, n_blocks=1).double()
    target = BoltzmannTarget(Identity(), gaussian_energy(s), energy_cap=1e6)
    torch.manual_seed(0)
    kl, stats = target.kl_loss(flow, 20000)
    log_z = D / 2 * math.log(2 * math.pi * s ** 2)
    exact = D / 2 * (1 / s ** 2 - 1 + 2 * math.log(s))
    se = stats["log_w_std"] / math.sqrt(20000)
    assert abs(float(kl.detach()) + log_z - exact) < 4 * se
    capped = BoltzmannTarget(Identity(), gaussian_energy(s), energy_cap=3.0)
    u = torch.tensor([1.0, 3.0, 103.0], dtype=torch.float64)
    assert torch.allclose(capped.regularised(u), torch.tensor([1.0, 3.0, 3.0 + math.log(101.0)], dtype=torch.float64))


def test_training_with_the_kl_term_moves_the_flow_to_the_target(tmp_path) -> None:
    """MLE data from N(0, 1) but energy of N(0, 0.5^2): with a large KL weight the flow follows the energy."""
    torch.manual_seed(0)
    data = torch.randn(2048, 2)
    flow = build_flow("nsf", 2, n_layers=4, hidden=16, n_blocks=1)
    target = BoltzmannTarget(Identity(), lambda x: gaussian_energy(0.5)(x.float()).double())
    cfg = TrainConfig(objective="kl", steps=300, batch_size=256, lr=3e-3, warmup_steps=10, kl_weight=20.0,
                      val_every=100, ckpt_every=300, seed=0)
    result = train(flow, data, data[:256], cfg, tmp_path / "kl.pt", target=target, progress=False)
    with torch.no_grad():
        x, _ = flow.sample(5000, generator=torch.Generator().manual_seed(1))
    assert 0.45 < float(x.std()) < 0.62  # pulled from 1.0 (the data) to about 0.5 (the energy)
    assert "log_w_std" in result.history[-1]
    with pytest.raises(BgkitError, match="Boltzmann target"):
        train(flow, data, None, cfg, tmp_path / "none.pt", progress=False)


def test_background_forces_give_the_autograd_energys_loss_and_gradient() -> None:
    """With an EnergyModel the term is u(x̄) + (x − x̄)·∇u, energies computed by the workers while the caller
    goes on: its value and every parameter gradient equal those of the differentiable torch energy (ala2,
    shipped flow, the same prior draw)."""
    from bgkit.energy import EnergyModel
    from bgkit.proposal import Proposal
    from bgkit.systems import load_system

    system = load_system("ala2")
    proposal = Proposal.load(system.folder / "proposal.pt", system=system)
    flow = proposal.flow.train()
    with EnergyModel(system, n_workers=1) as model:
        results = []
        for target in (BoltzmannTarget(proposal.transform, model.torch_energy, energy_cap=50.0),
                       BoltzmannTarget(proposal.transform, energy_cap=50.0, energy_model=model)):
            torch.manual_seed(5)
            flow.zero_grad()
            started = target.start(flow, 64)
            kl, stats = target.finish(started)
            kl.backward()
            results.append((float(kl.detach()), [p.grad.clone() for p in flow.parameters()], stats))
    (kl_a, grads_a, stats_a), (kl_b, grads_b, stats_b) = results
    assert math.isclose(kl_a, kl_b, rel_tol=1e-6) and stats_a["n_invalid"] == stats_b["n_invalid"]
    assert any(g.abs().max() > 0 for g in grads_a)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        BoltzmannTarget(proposal.transform)
