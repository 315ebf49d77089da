"""Continuous normalizing flow (CNF): a time-conditioned vector field integrated as an ODE.

x(1) = x(0) + ∫₀¹ v_θ(t, x(t)) dt maps a prior draw x(0) to a sample; along the path
d log|det ∂x(t)/∂x(0)| / dt = ∇·v_θ(t, x(t)) (the instantaneous change of variables,
Chen et al., arXiv 1806.07366), so log q(x(1)) = log p(x(0)) − ∫₀¹ ∇·v dt. The field is
trained by flow matching (:mod:`bgkit.train.matching`) and used as a teacher for reflow
targets (:mod:`bgkit.train.reflow`) or, being a `Flow`, directly as a proposal.

Periodic dimensions (torsions) enter the network as (cos θ, sin θ), so the field is
periodic in them and the ODE is a flow on the torus; results are wrapped to [-pi, pi).
ODEs are solved with torchdiffeq: ``method`` (default dopri5) with ``atol``/``rtol``, or a
fixed-step method (``rk4``, ``euler``, ...) with ``steps`` steps. The divergence is exact
(one vector-Jacobian product per dimension, vectorised with ``torch.func``) or a
Hutchinson estimate with one Rademacher probe per sample (unbiased, cheaper, noisy).
The settings are hyperparameters, so they are stored in every checkpoint.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from bgkit.coords.geometry import wrap

from .base import Flow, ResidualMLP

DIVERGENCES = ("exact", "hutchinson")
FIXED_STEP_METHODS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")


class VectorField(nn.Module):
    """v_θ(t, x): [B, D] -> [B, D]; t is a scalar or [B] in [0, 1].

    Input features: ordinary dimensions as they are, periodic ones as (cos, sin), and the time
    as (t, sin 2πkt, cos 2πkt for k = 1..time_freqs). The output layer is zero-initialised.
    """

    def __init__(self, dim: int, periodic_mask: Tensor, hidden: int, n_blocks: int, time_freqs: int) -> None:
        super().__init__()
        self.register_buffer("per", periodic_mask.clone(), persistent=False)
        self.register_buffer("freqs", 2 * math.pi * torch.arange(1, time_freqs + 1, dtype=torch.float32),
                             persistent=False)
        n_per = int(periodic_mask.sum())
        n_in = dim + n_per + 1 + 2 * time_freqs
        self.net = ResidualMLP(n_in, dim, hidden, n_blocks)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        wt = t * self.freqs.to(x.dtype)
        feats = [x[:, ~self.per]]
        if bool(self.per.any()):
            angles = x[:, self.per]
            feats += [torch.cos(angles), torch.sin(angles)]
        feats += [t, torch.sin(wt), torch.cos(wt)]
        return self.net(torch.cat(feats, dim=-1))


class CNF(Flow):
    """Continuous normalizing flow on R^D (× circles for ``periodic`` dims).

    Args:
        dim: D.
        hidden, n_blocks: width and residual blocks of the field's MLP.
        time_freqs: Fourier features of t.
        method: torchdiffeq solver for sampling and likelihoods.
        atol, rtol: tolerances of adaptive methods (ignored by fixed-step ones).
        steps: number of steps of fixed-step methods (ignored by adaptive ones).
        divergence: "exact" or "hutchinson" (for ``forward``/``inverse`` log-dets).
        periodic: indices of the angle dimensions.
    """

    arch = "cnf"

    def __init__(self, dim: int, hidden: int = 256, n_blocks: int = 3, time_freqs: int = 4, method: str = "dopri5",
                 atol: float = 1e-5, rtol: float = 1e-5, steps: int = 20, divergence: str = "exact",
                 periodic: Any = ()) -> None:
        if method not in FIXED_STEP_METHODS + ADAPTIVE_METHODS:
            raise ValueError(f"unknown ODE method {method!r}; choose one of {FIXED_STEP_METHODS + ADAPTIVE_METHODS}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        if not (atol > 0 and rtol > 0 and int(steps) >= 1 and int(hidden) >= 1 and int(n_blocks) >= 0
                and int(time_freqs) >= 0):
            raise ValueError("atol, rtol, steps and hidden must be positive; n_blocks, time_freqs >= 0")
        super().__init__(dim, {"hidden": hidden, "n_blocks": n_blocks, "time_freqs": time_freqs, "method": method,
                               "atol": atol, "rtol": rtol, "steps": int(steps), "divergence": divergence,
                               "periodic": [int(i) for i in periodic]})
        self.field = VectorField(self.dim, self.periodic_mask, hidden, n_blocks, time_freqs)
        self.nfe = 0  #: function evaluations of the last integration (diagnostics)

    # ------------------------------------------------------------------ field and divergence
    def velocity(self, t: Tensor | float, x: Tensor) -> Tensor:
        """v_θ(t, x) [B, D]."""
        return self.field(torch.as_tensor(t), x)

    def divergence(self, t: Tensor | float, x: Tensor, probe: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(v [B, D], ∇·v [B]): exact (``probe`` None) or εᵀ(∂v/∂x)ε for a probe ε [B, D].

        Differentiable in θ when called with grad enabled (the flow-matching losses use it).
        """
        t = torch.as_tensor(t)
        if probe is not None:
            graph = torch.is_grad_enabled()  # keep the graph only when the caller differentiates the result
            with torch.enable_grad():
                x = x if x.requires_grad else x.detach().requires_grad_(True)
                v = self.field(t, x)
                (vjp,) = torch.autograd.grad(v, x, probe, create_graph=graph)
            return (v, (vjp * probe).sum(-1)) if graph else (v.detach(), (vjp * probe).sum(-1).detach())
        from torch.func import jacrev, vmap  # noqa: PLC0415

        def single(xi: Tensor) -> tuple[Tensor, Tensor]:
            v = self.field(t, xi[None])[0]
            return v, v

        jac, v = vmap(jacrev(single, has_aux=True))(x)
        return v, jac.diagonal(dim1=-2, dim2=-1).sum(-1)

    # ------------------------------------------------------------------ integration
    def integrate(self, x: Tensor, t0: float, t1: float, logdet: bool = True, method: str | None = None,
                  steps: int | None = None, divergence: str | None = None) -> tuple[Tensor, Tensor | None]:
        """Solve the ODE from t0 to t1 starting at x [B, D].

        Returns (x(t1) [B, D] wrapped on periodic dims, ∫_{t0}^{t1} ∇·v dt [B] or None without ``logdet``).
        ``method``/``steps``/``divergence`` override the hyperparameters for this call (e.g. rk4 for reflow pairs).
        """
        from torchdiffeq import odeint  # noqa: PLC0415

        hp = self.hparams
        method = method or hp["method"]
        steps = int(steps or hp["steps"])
        options: dict[str, Any] = {}
        kwargs: dict[str, Any] = {}
        if method in FIXED_STEP_METHODS:
            options["step_size"] = abs(t1 - t0) / steps
        else:
            kwargs.update(atol=hp["atol"], rtol=hp["rtol"])
        times = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
        self.nfe = 0
        probe = None
        divergence = divergence or hp["divergence"]
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
        if logdet and divergence == "hutchinson":
            probe = torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1

        if not logdet:
            def rhs(t: Tensor, state: Tensor) -> Tensor:
                self.nfe += 1
                return self.field(t, state)

            out = odeint(rhs, x, times, method=method, options=options, **kwargs)[-1]
            return self._wrap(out), None

        def rhs_div(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            self.nfe += 1
            v, div = self.divergence(t, state[0], probe)
            return v, div

        init = (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
        xs, ls = odeint(rhs_div, init, times, method=method, options=options, **kwargs)
        return self._wrap(xs[-1]), ls[-1]

    def _wrap(self, x: Tensor) -> Tensor:
        mask = self.periodic_mask
        return torch.where(mask, wrap(x), x) if bool(mask.any()) else x

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x, logdet = self.integrate(z, 0.0, 1.0)
        return x, logdet

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, logdet = self.integrate(x, 1.0, 0.0)
        return z, logdet
