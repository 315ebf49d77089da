"""Flow-matching objectives for continuous normalizing flows (teachers): CFM, OT-CFM, W-CFM, FDM.

All use the linear probability path between a prior draw x0 and a data point x1,

    x_t = x0 + t·Δ,  Δ = x1 − x0 (wrapped to [-pi, pi) on periodic dimensions),  t ~ U(0, 1),

whose conditional velocity is u = Δ; the loss regresses the field v_θ(t, x_t) onto u
(squared error **summed over the D dimensions**, averaged over the batch — the units of the
RegFlow loss). The variants differ in how pairs are formed and weighted (docs/methods.md):

* ``cfm``: independent pairs (Lipman et al., arXiv 2210.02747).
* ``otcfm``: pairs re-matched inside each minibatch by exact OT, cost of
  :func:`bgkit.train.targets.pair_cost` (Tong et al., arXiv 2302.00482).
* ``wcfm``: independent pairs, each squared error multiplied by the gradient-free Gibbs factor
  exp(−c/ε) with c = ‖Δ‖ (wrapped) and ε = κ·√D, normalised by its batch mean in log space
  (Calvo-Ordoñez et al., arXiv 2507.22270). ε → ∞ gives CFM. ``stats["weight_ess"]``: ESS/B of the
  weights.
* ``fdm``: flow-divergence matching (Huang et al., ICML 2025): λ1·L_CFM + λ2·E[(σ_t r)²] with the
  conditional continuity residual r = ∇·v − ∇·u + (v − u)·∇log p_t(x|x1). For the linear path with
  σ_t = 1 − t, ∇·u = −D/σ_t and ∇log p_t = −x0/σ_t on ordinary dimensions (0 on periodic ones, whose
  conditional law is uniform on an arc), so σ_t r = σ_t ∇·v + D − Σ_ordinary (v − u)·x0; ∇·v by one
  Rademacher (Hutchinson) probe.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from bgkit import BgkitError
from bgkit.flows.base import wrap_periodic

__all__ = ["MATCHING", "flow_matching_loss"]

MATCHING = ("cfm", "otcfm", "wcfm", "fdm")


def flow_matching_loss(cnf: torch.nn.Module, x1: Tensor, kind: str = "cfm", *, wcfm_kappa: float = 1.0,
                       fdm_weights: tuple[float, float] = (1.0, 0.01), generator: torch.Generator | None = None,
                       x0: Tensor | None = None, t: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Flow-matching loss of ``cnf`` (a :class:`~bgkit.flows.cnf.CNF`) on data x1 [B, D].

    ``x0`` [B, D] (prior draws) and ``t`` [B] are drawn with ``generator`` unless given (tests pass
    them to compare variants on the same batch). ``wcfm_kappa``: κ of ε = κ√D (``inf`` = CFM).
    ``fdm_weights``: (λ1, λ2). Returns ``(loss, stats)`` with ``loss``, ``cfm`` (the unweighted
    matching error) and, per variant, ``weight_ess`` or ``cdm``.
    """
    if kind not in MATCHING:
        raise BgkitError(f"unknown flow-matching objective {kind!r}; choose one of {MATCHING}")
    if x1.ndim != 2:
        raise BgkitError(f"flow matching needs data [B, D], got {tuple(x1.shape)}")
    n, dim = x1.shape
    if x0 is None:
        x0 = cnf.prior_sample(n, generator, device=x1.device, dtype=x1.dtype)
    if t is None:
        gdev = generator.device if generator is not None else x1.device
        t = torch.rand(n, generator=generator, device=gdev, dtype=x1.dtype).to(x1.device)
    mask = cnf.periodic_mask
    if kind == "otcfm":
        from bgkit.train.targets import ot_assignment  # noqa: PLC0415

        periodic = [int(i) for i in torch.nonzero(mask).flatten()]
        perm = ot_assignment(x0.detach().cpu().double().numpy(), x1.detach().cpu().double().numpy(), periodic)
        x1 = x1[torch.from_numpy(perm).to(x1.device)]
    delta = wrap_periodic(x1 - x0, mask)
    xt = x0 + t[:, None] * delta
    stats: dict[str, float] = {}
    if kind == "fdm" and fdm_weights[1] != 0:
        gdev = generator.device if generator is not None else x1.device
        probe = (torch.randint(0, 2, (n, dim), generator=generator, device=gdev) * 2 - 1).to(x1.device, x1.dtype)
        v, div = cnf.divergence(t, xt, probe)
    else:
        v, div = cnf.velocity(t, xt), None
    err = (v - delta).pow(2).sum(-1)  # [B]
    cfm = err.mean()
    stats["cfm"] = float(cfm.detach())
    if kind == "wcfm":
        cost = delta.detach().pow(2).sum(-1).sqrt()
        log_w = -cost / (wcfm_kappa * math.sqrt(dim))
        w = torch.exp(log_w - log_w.max())
        w = w / w.mean()
        loss = (w * err).mean()
        stats["weight_ess"] = float(w.sum() ** 2 / (n * w.pow(2).sum()))
    elif kind == "fdm":
        lam1, lam2 = fdm_weights
        loss = lam1 * cfm
        if div is not None:
            sigma = 1 - t
            line = ~mask
            score_term = ((v - delta)[:, line] * x0[:, line]).sum(-1)
            residual = sigma * div + dim - score_term
            cdm = residual.pow(2).mean()
            loss = loss + lam2 * cdm
            stats["cdm"] = float(cdm.detach())
    else:
        loss = cfm
    stats["loss"] = float(loss.detach())
    return loss, stats
