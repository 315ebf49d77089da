"""zuko's monotonic rational-quadratic spline, parametrised without ``torch.softmax``.

``zuko.transforms.MonotonicRQSTransform`` turns unconstrained bin widths and heights into knots with
``F.softmax`` over the bin axis. On CPU, torch's softmax over a short last axis (8 bins) is about 5x
slower than exp(x - max) / sum (11 ms against 2 ms for a [5000, 15, 8] tensor, one thread), and it was
42 % of a proposal's sampling time. :func:`rq_spline` builds the same transform (same knots, the same
zuko spline evaluation, inverse and log-det) with the explicit softmax. ``tests/test_flows.py`` checks it
against zuko's own constructor.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Transform
from torch.nn import functional as F
from zuko.transforms import MonotonicRQSTransform

__all__ = ["rq_spline"]


def _softmax(x: Tensor) -> Tensor:
    e = (x - x.amax(dim=-1, keepdim=True)).exp()
    return e / e.sum(dim=-1, keepdim=True)


class _RQS(MonotonicRQSTransform):
    def __init__(self, widths: Tensor, heights: Tensor, derivatives: Tensor, bound: float, slope: float) -> None:
        Transform.__init__(self)  # zuko's parametrisation below, with the explicit softmax
        log_slope = math.log(slope)
        widths = widths / (1 + abs(2 * widths / log_slope))
        heights = heights / (1 + abs(2 * heights / log_slope))
        derivatives = derivatives / (1 + abs(derivatives / log_slope))
        widths = F.pad(_softmax(widths), (1, 0), value=0)
        heights = F.pad(_softmax(heights), (1, 0), value=0)
        self.horizontal = bound * (2 * torch.cumsum(widths, dim=-1) - 1)
        self.vertical = bound * (2 * torch.cumsum(heights, dim=-1) - 1)
        self.derivatives = torch.exp(F.pad(derivatives, (1, 1), value=0))


def rq_spline(widths: Tensor, heights: Tensor, derivatives: Tensor, bound: float,
              slope: float = 1e-3) -> MonotonicRQSTransform:
    """zuko's monotonic RQS on [-bound, bound] (identity outside): widths, heights [..., K], derivatives
    [..., K - 1], unconstrained; ``slope`` the minimum slope (zuko's default)."""
    return _RQS(widths, heights, derivatives, float(bound), float(slope))
