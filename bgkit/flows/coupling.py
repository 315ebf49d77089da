"""Coupling flows: affine "Res-NVP" and rational-quadratic spline coupling (NSF).

References: RealNVP (Dinh et al., arXiv 1605.08803); Neural Spline Flows
(Durkan et al., arXiv 1906.04032), spline math from ``zuko.transforms.MonotonicRQSTransform``.

Each coupling layer leaves one part ``a`` of the coordinates unchanged and
transforms the complementary part ``b`` element-wise, conditioned on ``a`` by a
residual MLP whose last layer is zero-initialised (the flow starts at identity).
Layers come in pairs (a -> b, then b -> a) and cycle through three fixed splits
of the coordinates: even/odd indices, first/second half, and a fixed random
permutation (seed 0), so every coordinate is transformed many times.
"""
from __future__ import annotations

import abc

import torch
from torch import Tensor, nn
from zuko.transforms import MonotonicRQSTransform

from .base import Flow, ResidualMLP, softclamp

_SPLIT_SEED = 0


def coupling_splits(dim: int) -> list[tuple[Tensor, Tensor]]:
    """Fixed complementary index splits (a, b) of range(dim): even/odd, halves, random (seed 0)."""
    if dim < 2:
        raise ValueError(f"coupling flows need dim >= 2, got {dim}")
    idx = torch.arange(dim)
    perm = torch.randperm(dim, generator=torch.Generator().manual_seed(_SPLIT_SEED))
    h = dim // 2
    splits = [(idx[0::2], idx[1::2]), (idx[:h], idx[h:]), (perm[:h].sort().values, perm[h:].sort().values)]
    return splits


class ElementwiseAffine(nn.Module):
    """x = z * exp(s) + t with learned per-dimension s, t (zero-init: identity)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z * self.log_scale.exp() + self.shift, self.log_scale.sum().expand(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x - self.shift) * (-self.log_scale).exp(), -self.log_scale.sum().expand(x.shape[0])


class _Coupling(nn.Module, abc.ABC):
    """Base coupling layer: x_a = z_a, x_b = T(z_b; params(z_a)); subclasses define T."""

    def __init__(self, idx_a: Tensor, idx_b: Tensor, n_params: int, hidden: int, n_blocks: int) -> None:
        super().__init__()
        self.register_buffer("idx_a", idx_a.clone())
        self.register_buffer("idx_b", idx_b.clone())
        self.n_params = n_params
        self.net = ResidualMLP(len(idx_a), len(idx_b) * n_params, hidden, n_blocks)

    def _params(self, u: Tensor) -> Tensor:
        """Conditioner output [B, |b|, n_params] from the full input u [B, D]."""
        return self.net(u[:, self.idx_a]).view(u.shape[0], len(self.idx_b), self.n_params)

    def _couple(self, u: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        vb, logdet = self._transform(u[:, self.idx_b], self._params(u), inverse)
        return u.index_copy(1, self.idx_b, vb), logdet

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(z, inverse=False)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(x, inverse=True)

    @abc.abstractmethod
    def _transform(self, u: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """Element-wise map of u [B, |b|] given params [B, |b|, n_params] -> (v, log|det dv/du| [B])."""


class AffineCoupling(_Coupling):
    """x_b = z_b * exp(s) + t with s = scale_bound * tanh(s_raw / scale_bound)."""

    def __init__(self, idx_a: Tensor, idx_b: Tensor, hidden: int, n_blocks: int, scale_bound: float) -> None:
        super().__init__(idx_a, idx_b, 2, hidden, n_blocks)
        self.scale_bound = scale_bound

    def _transform(self, u: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        shift, log_scale = params.unbind(-1)
        log_scale = softclamp(log_scale, self.scale_bound)
        if inverse:
            return (u - shift) * (-log_scale).exp(), -log_scale.sum(-1)
        return u * log_scale.exp() + shift, log_scale.sum(-1)


class SplineCoupling(_Coupling):
    """Monotonic rational-quadratic spline on [-bound, bound] with `bins` bins, identity tails."""

    def __init__(self, idx_a: Tensor, idx_b: Tensor, hidden: int, n_blocks: int, bins: int, bound: float) -> None:
        super().__init__(idx_a, idx_b, 3 * bins - 1, hidden, n_blocks)
        self.bins, self.bound = bins, bound

    def _transform(self, u: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        w, h, d = params.split([self.bins, self.bins, self.bins - 1], dim=-1)
        spline = MonotonicRQSTransform(w, h, d, bound=self.bound)
        if inverse:
            z = spline.inv(u)
            return z, -spline.call_and_ladj(z)[1].sum(-1)
        x, ladj = spline.call_and_ladj(u)
        return x, ladj.sum(-1)


class _CouplingFlow(Flow):
    """Stack of coupling layers (+ optional final element-wise affine layer)."""

    def __init__(self, dim: int, hparams: dict, layers: list[nn.Module], elementwise: bool) -> None:
        super().__init__(dim, hparams)
        self.layers = nn.ModuleList(layers)
        if elementwise:
            self.layers.append(ElementwiseAffine(dim))

    @staticmethod
    def _split(dim: int, i: int) -> tuple[Tensor, Tensor]:
        splits = coupling_splits(dim)
        a, b = splits[(i // 2) % len(splits)]
        return (a, b) if i % 2 == 0 else (b, a)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for layer in self.layers:
            z, ld = layer(z)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in reversed(self.layers):
            x, ld = layer.inverse(x)
            logdet = logdet + ld
        return x, logdet


class ResNVP(_CouplingFlow):
    """RealNVP with residual-MLP conditioners ("Res-NVP").

    Args: dim D; n_layers coupling layers (default 12); hidden width (256) and
    n_blocks residual blocks (2) per conditioner; scale_bound: soft bound on the
    per-dimension log-scale (3.0); elementwise: final learned element-wise affine layer.
    """

    arch = "realnvp"

    def __init__(
        self,
        dim: int,
        n_layers: int = 12,
        hidden: int = 256,
        n_blocks: int = 2,
        scale_bound: float = 3.0,
        elementwise: bool = True,
    ) -> None:
        hp = dict(n_layers=n_layers, hidden=hidden, n_blocks=n_blocks, scale_bound=scale_bound, elementwise=elementwise)
        layers = [AffineCoupling(*self._split(dim, i), hidden, n_blocks, scale_bound) for i in range(n_layers)]
        super().__init__(dim, hp, layers, elementwise)


class NSF(_CouplingFlow):
    """Neural spline flow: rational-quadratic spline couplings with residual-MLP conditioners.

    Args: dim D; n_layers (default 8); hidden (256); n_blocks (2); bins per spline (8);
    bound B (5.0, identity outside [-B, B]); elementwise: final element-wise affine layer.
    """

    arch = "nsf"

    def __init__(
        self,
        dim: int,
        n_layers: int = 8,
        hidden: int = 256,
        n_blocks: int = 2,
        bins: int = 8,
        bound: float = 5.0,
        elementwise: bool = True,
    ) -> None:
        hp = dict(n_layers=n_layers, hidden=hidden, n_blocks=n_blocks, bins=bins, bound=bound, elementwise=elementwise)
        layers = [SplineCoupling(*self._split(dim, i), hidden, n_blocks, bins, bound) for i in range(n_layers)]
        super().__init__(dim, hp, layers, elementwise)
