"""Energy-based training term: the reverse Kullback-Leibler divergence from the flow to the Boltzmann distribution.

Noé, Olsson, Köhler and Wu, "Boltzmann generators", Science 365, eaaw1147 (2019): with samples
x = T(f_θ(z)), z ~ prior, T the coordinate representation's ``from_flow``,

    KL(q_θ || p) + log Z = E_z[ u(x) + log q_θ(x) ]          (u reduced energy, kT units)

where log q_θ(x) = log prior(z) − log|det df_θ/dz| − logdet_from(f_θ(z)) in the density convention
of :mod:`bgkit.coords.base`. Its gradient needs forces. Combined with maximum likelihood on MD data
(``objective="kl"`` of the training loop: NLL + kl_weight · KL) it sharpens a proposal where its density
disagrees with exp(−u) — exactly what the importance weights measure — while the likelihood term keeps
every basin of the data covered.

The term is computed in two halves, :meth:`BoltzmannTarget.start` (flow samples, energies and forces
submitted) and :meth:`BoltzmannTarget.finish` (the loss), so that with an ``EnergyModel`` the workers
compute forces while the caller evaluates the likelihood term. The energy then enters the loss as
u(x̄) + (x − x̄)·∇u(x̄) at the sampled x̄: the value u and the gradient −forces, exactly.

Energies above ``energy_cap`` (kT) are damped to cap + log(1 + u − cap) (Noé et al.'s regularised
energy) so that one clash does not dominate the gradient; samples with non-finite energy (overlapping
atoms) are left out of the mean and counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BoltzmannTarget"]


@dataclass
class _Started:
    """A KL estimate between its halves: the samples' graph and their energies (a Future, or a tensor)."""
    ref: Tensor
    xyz: Tensor
    log_q: Tensor
    energies: Any


class BoltzmannTarget:
    """The target exp(−u) of a system in a representation's flow space, for the reverse-KL term.

    representation: a :class:`bgkit.coords.Representation`. energy: a callable mapping positions
    [B, N, 3] (float64 tensor, nm) to reduced energies [B, 1] with gradients; or ``energy_model``: an
    open :class:`bgkit.energy.EnergyModel`, whose workers then compute energies and forces in the
    background (:meth:`start` / :meth:`finish`). energy_cap: kT above which energies are damped.
    """

    def __init__(self, representation: Any, energy: Any = None, energy_cap: float = 1000.0,
                 energy_model: Any = None) -> None:
        if (energy is None) == (energy_model is None):
            raise ValueError("BoltzmannTarget needs exactly one of energy and energy_model")
        self.representation = representation
        self.energy = energy
        self.energy_model = energy_model
        self.energy_cap = float(energy_cap)

    def regularised(self, u: Tensor) -> Tensor:
        """u [B] with values above the cap replaced by cap + log(1 + u − cap)."""
        over = torch.clamp(u - self.energy_cap, min=0.0)
        return torch.where(u > self.energy_cap, self.energy_cap + torch.log1p(over), u)

    def start(self, flow: nn.Module, n: int) -> _Started:
        """Draw n flow samples (with their graph) and start their energies; :meth:`finish` gives the loss."""
        ref = next(flow.parameters())
        z = flow.prior_sample(n, device=ref.device, dtype=ref.dtype)
        y, logdet = flow(z)
        xyz, logdet_from = self.representation.from_flow(y.double())
        log_q = flow.prior_log_prob(z).double() - logdet.double() - logdet_from
        if self.energy_model is not None:
            energies = self.energy_model.submit(xyz.detach().cpu().numpy(), forces=True)
        else:
            energies = self.energy(xyz).reshape(-1)
        return _Started(ref, xyz, log_q, energies)

    def finish(self, started: _Started) -> tuple[Tensor, dict[str, float]]:
        """Monte-Carlo estimate of E_z[u_reg(x) + log q(x)] over the started samples (nats; scalar with grad).

        stats: ``kl`` (the estimate), ``log_w_std`` (std of −u − log q over the valid samples: 0 for a
        perfect proposal), ``n_invalid`` (samples with non-finite energy, left out).
        """
        xyz, log_q, n = started.xyz, started.log_q, len(started.log_q)
        u = started.energies
        if not isinstance(u, Tensor):  # an EnergyBatch's Future: value u, gradient -forces
            batch = u.result()
            u0 = torch.as_tensor(batch.energy_kt, dtype=xyz.dtype, device=xyz.device)
            grad = -torch.as_tensor(batch.forces_kt_per_nm, dtype=xyz.dtype, device=xyz.device).reshape(xyz.shape)
            lin = ((xyz - xyz.detach()) * grad).flatten(1).sum(-1)  # 0 in value; forces are 0 where u is inf
            u = u0 + lin
        ok = torch.isfinite(u) & torch.isfinite(log_q)
        if not bool(ok.any()):
            return (log_q * 0).sum().to(started.ref.dtype), {"kl": float("nan"), "log_w_std": float("nan"),
                                                             "n_invalid": n}
        kl = (self.regularised(u[ok]) + log_q[ok]).mean()
        log_w = -(u[ok] + log_q[ok]).detach()
        return kl.to(started.ref.dtype), {"kl": float(kl.detach()),
                                          "log_w_std": float(log_w.std()) if len(log_w) > 1 else 0.0,
                                          "n_invalid": int((~ok).sum())}

    def kl_loss(self, flow: nn.Module, n: int) -> tuple[Tensor, dict[str, float]]:
        """:meth:`start` then :meth:`finish`: the KL estimate over n fresh flow samples."""
        return self.finish(self.start(flow, n))
