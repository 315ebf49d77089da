"""Maximum-likelihood baseline: minimise the negative log-likelihood of data.

L = −mean_b log q_θ(x_b), with log q_θ the flow's ``log_prob`` under its
N(0, I) prior, in flow-space coordinates (after bgkit's coordinate scaling,
so it differs from the nm-space density by the scaling Jacobian). The loss is
the **total** NLL over all D dimensions (nats per sample);
``stats["nll_per_dim"]`` = loss / D is for display only — multiply a
per-dimension value back by D before using it as a log-density.
"""
from __future__ import annotations

from torch import Tensor, nn

from bgkit import BgkitError

__all__ = ["mle_loss"]


def mle_loss(flow: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Mean negative log-likelihood of a batch.

    Args:
        flow: flow with ``log_prob(x) -> [B]`` (nats).
        x: [B, D] data in flow space.
    Returns:
        ``(loss, stats)``: scalar NLL tensor (nats per sample, with grad) and
        floats ``loss``, ``nll`` (same), ``nll_per_dim`` (nats per dimension).
    """
    if x.ndim != 2:
        raise BgkitError(f"mle_loss needs data of shape [B, D], got {tuple(x.shape)}")
    loss = -flow.log_prob(x).mean()
    value = float(loss.detach())
    return loss, {"loss": value, "nll": value, "nll_per_dim": value / x.shape[1]}
