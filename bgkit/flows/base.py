"""Shared pieces of the invertible flows: the `Flow` interface and small nets.

All flows act on flat vectors of dimension D (dimensionless flow coordinates,
see `bgkit.coords`) and use a standard normal prior N(0, I_D).
"""
from __future__ import annotations

import abc
import math
from typing import Any

import torch
from torch import Tensor, nn


def std_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) of rows z [B, D] -> [B]."""
    return -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def softclamp(x: Tensor, bound: float) -> Tensor:
    """Smooth clamp of x to (-bound, bound): bound * tanh(x / bound) (identity near 0)."""
    return bound * torch.tanh(x / bound)


class ResidualMLP(nn.Module):
    """MLP with residual blocks: Linear -> n_blocks x [h + Linear(SiLU(Linear(SiLU(h))))] -> SiLU -> Linear.

    The last layer is zero-initialised, so the net outputs 0 at init (flows start at identity).
    in [B, n_in] -> out [B, n_out].
    """

    def __init__(self, n_in: int, n_out: int, hidden: int = 256, n_blocks: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(n_blocks)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, n_out))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class Flow(nn.Module, abc.ABC):
    """A normalizing flow x = f(z) on R^D with prior N(0, I_D).

    Subclasses implement `forward` (prior -> data) and `inverse` (data -> prior),
    each returning the log|det| of the map it applies, and set `dim` and `hparams`
    (JSON-able constructor arguments except `dim`, so that
    ``build_flow(arch, dim, **hparams)`` rebuilds the same architecture).
    """

    arch: str = ""

    def __init__(self, dim: int, hparams: dict[str, Any]) -> None:
        super().__init__()
        self.dim = int(dim)
        self.hparams = dict(hparams)

    @abc.abstractmethod
    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Prior -> data: z [B, D] -> (x [B, D], log|det dx/dz| [B])."""

    @abc.abstractmethod
    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data -> prior: x [B, D] -> (z [B, D], log|det dz/dx| [B])."""

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) [B] of points x [B, D] in flow coordinates."""
        z, logdet_inv = self.inverse(x)
        return std_normal_log_prob(z) + logdet_inv

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw n samples: returns (x [n, D], log q(x) [n]) from the forward pass only.

        The prior draw uses `generator` on its own device and is then moved to
        the flow's device/dtype. Gradients flow unless called under ``torch.no_grad()``.
        """
        ref = next(self.parameters())
        device = generator.device if generator is not None else ref.device
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=ref.dtype).to(ref.device)
        x, logdet = self.forward(z)
        return x, std_normal_log_prob(z) - logdet

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hparams={self.hparams}"
