"""Shared pieces of the invertible flows: the `Flow` interface and small nets.

All flows act on flat vectors of dimension D (dimensionless flow coordinates,
see `bgkit.coords`). The prior is N(0, 1) on every ordinary dimension and the
uniform distribution on [-pi, pi) on every *periodic* dimension (a torsion
angle; the flow's ``periodic`` indices), so a flow without periodic dimensions
has the standard normal prior N(0, I_D).
"""
from __future__ import annotations

import abc
import math
from typing import Any

import torch
from torch import Tensor, nn

from bgkit.coords.geometry import wrap


def std_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) of rows z [B, D] -> [B]."""
    return -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def periodic_mask(dim: int, periodic: Any) -> Tensor:
    """Bool mask [dim] of the periodic dimensions; ValueError for indices out of range or repeated."""
    idx = [int(i) for i in (periodic or ())]
    if len(set(idx)) != len(idx) or any(not 0 <= i < dim for i in idx):
        raise ValueError(f"periodic indices must be distinct and in [0, {dim}), got {idx}")
    mask = torch.zeros(dim, dtype=torch.bool)
    mask[idx] = True
    return mask


def wrap_periodic(x: Tensor, mask: Tensor) -> Tensor:
    """x [B, D] with the masked dimensions wrapped to [-pi, pi)."""
    if not bool(mask.any()):
        return x
    return torch.where(mask, wrap(x), x)


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
        self.register_buffer("periodic_mask", periodic_mask(self.dim, hparams.get("periodic")), persistent=False)

    @property
    def periodic(self) -> tuple[int, ...]:
        """Indices of the periodic dimensions (angles on [-pi, pi))."""
        return tuple(int(i) for i in torch.nonzero(self.periodic_mask).flatten())

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log prior [B] of z [B, D]: N(0, 1) per ordinary dimension, -log(2 pi) per periodic one."""
        mask = self.periodic_mask
        n_per = int(mask.sum())
        if n_per == 0:
            return std_normal_log_prob(z)
        return std_normal_log_prob(z[:, ~mask]) - n_per * math.log(2 * math.pi)

    def prior_sample(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """n prior draws [n, D]; `generator` draws on its own device, the result moves to `device`."""
        gdev = generator.device if generator is not None else device
        z = torch.randn(n, self.dim, generator=generator, device=gdev, dtype=dtype)
        mask = self.periodic_mask.to(z.device)
        if bool(mask.any()):
            u = torch.rand(n, self.dim, generator=generator, device=gdev, dtype=dtype)
            z = torch.where(mask, (2 * u - 1) * math.pi, z)
        return z.to(device) if device is not None else z

    @abc.abstractmethod
    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Prior -> data: z [B, D] -> (x [B, D], log|det dx/dz| [B])."""

    @abc.abstractmethod
    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data -> prior: x [B, D] -> (z [B, D], log|det dz/dx| [B])."""

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) [B] of points x [B, D] in flow coordinates."""
        z, logdet_inv = self.inverse(x)
        return self.prior_log_prob(z) + logdet_inv

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw n samples: returns (x [n, D], log q(x) [n]) from the forward pass only.

        The prior draw uses `generator` on its own device and is then moved to
        the flow's device/dtype. Gradients flow unless called under ``torch.no_grad()``.
        """
        ref = next(self.parameters())
        z = self.prior_sample(n, generator, device=ref.device, dtype=ref.dtype)
        x, logdet = self.forward(z)
        return x, self.prior_log_prob(z) - logdet

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hparams={self.hparams}"
