"""RegFlow objective: regression training of a normalizing flow.

Rehman et al., "Regression training of normalizing flows" (RegFlow / FORT),
arXiv 2506.01158, ICLR 2026. Given fixed pairs (x0, x1) of prior draws and
their targets under an invertible map x1 = f*(x0) (OT or reflow, see
:mod:`bgkit.train.targets`), train the flow f_θ (prior → data, the sampling
direction) by ℓ2 regression:

    L = mean_b Σ_d (f_θ(x0) − (x1 + λ_n ε))²_{b,d} + λ_r R,     ε ~ N(0, I)

with the regulariser R either
* ``"logdet"``: mean_b (log|det J_θ(x0)|)² (free: the forward pass returns it),
* ``"fb"`` (forward–backward): mean_b Σ_d (f_θ⁻¹(f_θ(x0)) − x0)²_{b,d}
  (one inverse pass, no Jacobian), or
* ``None``.

With reflow targets that carry the teacher's log-determinant ℓ*(x0) = log|det ∂f*/∂x0| of each pair
(``bgkit targets reflow --logdet``), ``logdet_weight`` λ_ℓ adds  λ_ℓ · mean_b (log|det J_θ(x0)| − ℓ*(x0))²:
the student then copies the teacher's density, not only its map. A map can match its targets to a small
ℓ2 error and still have a log-det that is off by nats (a staircase-like spline: flat almost everywhere,
steep in thin strips); that error goes straight into the importance weights (docs/methods.md).

On the flow's periodic dimensions (torsions) differences are wrapped to
[-pi, pi): the squared error is the squared geodesic distance on the circle.

Units: flow-space coordinates (after bgkit's coordinate scaling); the error
is **summed over the D dimensions** and averaged over the batch, so the loss
scales with D (divide by D for a per-dimension MSE; ``stats["mse_per_dim"]``).
Published good range for λ_r: 1e-6 … 1e-5.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bgkit import BgkitError

if TYPE_CHECKING:  # torch is imported when the loss is first called, so the registry of choices stays light
    import torch
    from torch import Tensor, nn

__all__ = ["regflow_loss", "REGULARISERS"]

#: the regularisers ``reg`` accepts: forward-backward, squared log-det, none
REGULARISERS = ("fb", "logdet", None)


def regflow_loss(
    flow: nn.Module,
    x0: Tensor,
    x1: Tensor,
    noise_std: float = 0.0,
    reg: str | None = "fb",
    reg_weight: float = 1e-6,
    generator: torch.Generator | None = None,
    logdet_target: Tensor | None = None,
    logdet_weight: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """RegFlow loss on a batch of pairs.

    Args:
        flow: flow with ``forward(z) -> (x, logdet [B])`` and ``inverse``.
        x0: [B, D] prior draws. x1: [B, D] their regression targets.
        noise_std: λ_n, std of the Gaussian noise added to the targets
            (flow-space units; 0 disables).
        reg: "fb" | "logdet" | None (see module docstring).
        reg_weight: λ_r.
        generator: torch RNG for the target noise (default: global RNG).
        logdet_target: [B] the teacher's log|det| of each pair (needed when ``logdet_weight`` > 0).
        logdet_weight: λ_ℓ of the log-det matching term (0 disables).
    Returns:
        ``(loss, stats)``: scalar loss tensor (with grad) and floats
        ``loss``, ``mse`` (batch mean of the per-sample squared-error sum),
        ``mse_per_dim``, ``reg`` (R, 0 when disabled), ``logdet_mean``, and with ``logdet_target``
        ``logdet_rmse`` (root mean squared log-det error, nats).
    """
    import torch

    from bgkit.flows.base import wrap_periodic

    if reg not in REGULARISERS:
        raise BgkitError(f"unknown RegFlow regulariser {reg!r}; use one of {REGULARISERS}")
    if x0.shape != x1.shape or x0.ndim != 2:
        raise BgkitError(f"regflow_loss needs x0 and x1 of equal shape [B, D], got {tuple(x0.shape)} and {tuple(x1.shape)}")
    pred, logdet = flow(x0)
    target = x1
    if noise_std > 0:
        noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
        target = x1 + noise_std * noise
    mask = getattr(flow, "periodic_mask", None)
    wrap = (lambda d: wrap_periodic(d, mask)) if mask is not None and bool(mask.any()) else (lambda d: d)
    mse = wrap(pred - target).pow(2).sum(dim=1).mean()
    if reg == "logdet":
        penalty = logdet.pow(2).mean()
    elif reg == "fb":
        z_rec, _ = flow.inverse(pred)
        penalty = wrap(z_rec - x0).pow(2).sum(dim=1).mean()
    else:
        penalty = mse.new_zeros(())
    loss = mse + reg_weight * penalty if reg is not None else mse
    ld_stats = {}
    if logdet_weight > 0 and logdet_target is None:
        raise BgkitError("logdet_weight > 0 needs the teacher's log-dets: make the targets with "
                         "`bgkit targets reflow --logdet`")
    if logdet_target is not None:
        ld_err = (logdet - logdet_target.to(logdet.dtype)).pow(2).mean()
        if logdet_weight > 0:
            loss = loss + logdet_weight * ld_err
        ld_stats = {"logdet_rmse": float(ld_err.detach().sqrt())}
    stats = {
        "loss": float(loss.detach()),
        "mse": float(mse.detach()),
        "mse_per_dim": float(mse.detach()) / x0.shape[1],
        "reg": float(penalty.detach()),
        "logdet_mean": float(logdet.detach().mean()),
        **ld_stats,
    }
    return loss, stats
