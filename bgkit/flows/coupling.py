"""Coupling flows: affine "Res-NVP" and rational-quadratic spline coupling (NSF).

References: RealNVP (Dinh et al., arXiv 1605.08803); Neural Spline Flows
(Durkan et al., arXiv 1906.04032), spline math from ``zuko.transforms.MonotonicRQSTransform`` (built by
:func:`bgkit.flows.splines.rq_spline`).

Each coupling layer leaves one part ``a`` of the coordinates unchanged and
transforms the complementary part ``b`` element-wise, conditioned on ``a`` by a
residual MLP whose last layer is zero-initialised (the flow starts at identity).
Layers come in pairs (a -> b, then b -> a) and cycle through three fixed splits
of the coordinates: even/odd indices, first/second half, and a fixed random
permutation (seed 0), so every coordinate is transformed many times.
"""
from __future__ import annotations

import abc
import math

import torch
from torch import Tensor, nn

from bgkit.coords.geometry import wrap

from .base import Flow, ResidualMLP, periodic_mask, softclamp
from .splines import rq_spline

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
    """x = z * exp(s) + t with learned per-dimension s, t (zero-init: identity); identity on periodic dims."""

    def __init__(self, dim: int, periodic: Tensor | None = None) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("line", ~periodic if periodic is not None else torch.ones(dim, dtype=torch.bool),
                             persistent=False)

    def _params(self) -> tuple[Tensor, Tensor]:
        return self.shift * self.line, self.log_scale * self.line

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._params()
        return z * log_scale.exp() + shift, log_scale.sum().expand(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._params()
        return (x - shift) * (-log_scale).exp(), -log_scale.sum().expand(x.shape[0])


def circular_spline(u: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """Circle diffeomorphism of angles u [B, k] in [-pi, pi): x = wrap(RQS(u) + shift).

    params [B, k, 3 * bins]: bin widths, heights, bins - 1 inner derivatives, and a shift (rad).
    zuko's monotonic RQS on [-pi, pi] has slope 1 at both ends, so it maps the circle smoothly
    onto itself (the neural circular spline flow of Rezende et al., arXiv 2002.02428).
    Returns (v [B, k], log|det dv/du| [B]).
    """
    bins = params.shape[-1] // 3
    w, h, d, shift = params.split([bins, bins, bins - 1, 1], dim=-1)
    spline = rq_spline(w, h, d, bound=math.pi)
    shift = shift.squeeze(-1)
    if inverse:
        z = spline.inv(wrap(u - shift))
        return z, -spline.call_and_ladj(z)[1].sum(-1)
    x, ladj = spline.call_and_ladj(u)
    return wrap(x + shift), ladj.sum(-1)


class _Coupling(nn.Module, abc.ABC):
    """Base coupling layer: x_a = z_a, x_b = T(z_b; params(z_a)); subclasses define T on ordinary dims.

    Periodic dimensions (``periodic`` [D] bool) enter the conditioner as (cos, sin) and are
    transformed by :func:`circular_spline` with ``circular_bins`` bins.
    """

    def __init__(self, idx_a: Tensor, idx_b: Tensor, n_params: int, hidden: int, n_blocks: int,
                 periodic: Tensor | None = None, circular_bins: int = 8) -> None:
        super().__init__()
        periodic = periodic if periodic is not None else torch.zeros(int(max(idx_a.max(), idx_b.max())) + 1, dtype=torch.bool)
        self.register_buffer("idx_a", idx_a.clone())
        self.register_buffer("idx_b", idx_b.clone())
        self.register_buffer("per_a", periodic[idx_a].clone(), persistent=False)
        self.register_buffer("per_b", periodic[idx_b].clone(), persistent=False)
        self.n_line = n_params
        self.n_circle = 3 * circular_bins
        self.n_params = n_params if not bool(self.per_b.any()) else max(n_params, self.n_circle)
        self.net = ResidualMLP(len(idx_a) + int(self.per_a.sum()), len(idx_b) * self.n_params, hidden, n_blocks)

    def _features(self, ua: Tensor) -> Tensor:
        if not bool(self.per_a.any()):
            return ua
        per = ua[:, self.per_a]
        return torch.cat([ua[:, ~self.per_a], torch.cos(per), torch.sin(per)], dim=-1)

    def _params(self, u: Tensor) -> Tensor:
        """Conditioner output [B, |b|, n_params] from the full input u [B, D]."""
        return self.net(self._features(u[:, self.idx_a])).view(u.shape[0], len(self.idx_b), self.n_params)

    def _couple(self, u: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        params = self._params(u)
        ub = u[:, self.idx_b]
        if not bool(self.per_b.any()):
            vb, logdet = self._transform(ub, params, inverse)
            return u.index_copy(1, self.idx_b, vb), logdet
        line, circ = ~self.per_b, self.per_b
        v_circ, logdet = circular_spline(ub[:, circ], params[:, circ, : self.n_circle], inverse)
        vb = ub.clone()
        vb[:, circ] = v_circ
        if bool(line.any()):
            v_line, ld_line = self._transform(ub[:, line], params[:, line, : self.n_line], inverse)
            vb[:, line] = v_line
            logdet = logdet + ld_line
        return u.index_copy(1, self.idx_b, vb), logdet

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(z, inverse=False)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(x, inverse=True)

    @abc.abstractmethod
    def _transform(self, u: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """Element-wise map of u [B, k] given params [B, k, n_params] -> (v, log|det dv/du| [B])."""


class AffineCoupling(_Coupling):
    """x_b = z_b * exp(s) + t with s = scale_bound * tanh(s_raw / scale_bound)."""

    def __init__(self, idx_a: Tensor, idx_b: Tensor, hidden: int, n_blocks: int, scale_bound: float,
                 periodic: Tensor | None = None, circular_bins: int = 8) -> None:
        super().__init__(idx_a, idx_b, 2, hidden, n_blocks, periodic, circular_bins)
        self.scale_bound = scale_bound

    def _transform(self, u: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        shift, log_scale = params.unbind(-1)
        log_scale = softclamp(log_scale, self.scale_bound)
        if inverse:
            return (u - shift) * (-log_scale).exp(), -log_scale.sum(-1)
        return u * log_scale.exp() + shift, log_scale.sum(-1)


class SplineCoupling(_Coupling):
    """Monotonic rational-quadratic spline on [-bound, bound] with `bins` bins, identity tails."""

    def __init__(self, idx_a: Tensor, idx_b: Tensor, hidden: int, n_blocks: int, bins: int, bound: float,
                 periodic: Tensor | None = None) -> None:
        super().__init__(idx_a, idx_b, 3 * bins - 1, hidden, n_blocks, periodic, bins)
        self.bins, self.bound = bins, bound

    def _transform(self, u: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        w, h, d = params.split([self.bins, self.bins, self.bins - 1], dim=-1)
        spline = rq_spline(w, h, d, bound=self.bound)
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
            self.layers.append(ElementwiseAffine(dim, self.periodic_mask))

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
    per-dimension log-scale (3.0); elementwise: final learned element-wise affine layer;
    periodic: indices of angle dimensions on [-pi, pi) — an affine map cannot act on a
    circle, so these get circular splines with ``circular_bins`` bins.
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
        periodic: list[int] | tuple[int, ...] = (),
        circular_bins: int = 8,
    ) -> None:
        hp = dict(n_layers=n_layers, hidden=hidden, n_blocks=n_blocks, scale_bound=scale_bound, elementwise=elementwise)
        if periodic:
            hp.update(periodic=[int(i) for i in periodic], circular_bins=circular_bins)
        mask = periodic_mask(dim, periodic)
        layers = [AffineCoupling(*self._split(dim, i), hidden, n_blocks, scale_bound, mask, circular_bins)
                  for i in range(n_layers)]
        super().__init__(dim, hp, layers, elementwise)


class NSF(_CouplingFlow):
    """Neural spline flow: rational-quadratic spline couplings with residual-MLP conditioners.

    Args: dim D; n_layers (default 8); hidden (256); n_blocks (2); bins per spline (8);
    bound B (5.0, identity outside [-B, B]); elementwise: final element-wise affine layer;
    periodic: indices of angle dimensions on [-pi, pi), transformed by circular splines
    (same bins) with a learned shift, conditioned on through (cos, sin).
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
        periodic: list[int] | tuple[int, ...] = (),
    ) -> None:
        hp = dict(n_layers=n_layers, hidden=hidden, n_blocks=n_blocks, bins=bins, bound=bound, elementwise=elementwise)
        if periodic:
            hp["periodic"] = [int(i) for i in periodic]
        mask = periodic_mask(dim, periodic)
        layers = [SplineCoupling(*self._split(dim, i), hidden, n_blocks, bins, bound, mask) for i in range(n_layers)]
        super().__init__(dim, hp, layers, elementwise)
