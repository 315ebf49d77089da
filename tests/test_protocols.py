"""Evaluation protocols (ESS as each literature family clips it) and the Ramachandran TV distance."""
from __future__ import annotations

import numpy as np
import pytest

from bgkit.protocols import PROTOCOLS, protocol_ess
from bgkit.metrics import ramachandran_tv


def _kish(w):
    return w.sum() ** 2 / (w**2).sum()


def test_internal_protocol_caps_the_largest_log_weights_at_the_largest_remaining_one():
    rng = np.random.default_rng(0)
    lw = rng.standard_normal(50_000) * 1.5
    lw[:3] = [40.0, 35.0, -np.inf]
    k = 4  # floor(1e-4 * 49 999 finite)
    finite = np.sort(lw[np.isfinite(lw)])
    cap = finite[-k - 1]
    w = np.exp(np.minimum(lw, cap) - cap)
    assert protocol_ess(lw, PROTOCOLS["internal"]) == pytest.approx(_kish(w) / len(lw), rel=1e-10)
    assert protocol_ess(lw, PROTOCOLS["internal"]) > 0.1 > protocol_ess(lw, PROTOCOLS["bgkit"])


def test_cartesian_protocol_drops_the_top_fraction_and_bgkit_reports_raw():
    rng = np.random.default_rng(1)
    lw = rng.standard_normal(10_000)
    keep = np.sort(lw)[: 10_000 - 20]  # the top 0.2 % dropped
    w = np.exp(keep - keep.max())
    assert protocol_ess(lw, PROTOCOLS["cartesian"]) == pytest.approx(_kish(w) / 10_000, rel=1e-10)
    w_all = np.exp(lw - lw.max())
    assert protocol_ess(lw, PROTOCOLS["bgkit"]) == pytest.approx(_kish(w_all) / 10_000, rel=1e-10)


def test_protocols_state_their_sample_counts():
    assert PROTOCOLS["internal"].n == 1_000_000 and PROTOCOLS["cartesian"].n == 200_000


def test_ramachandran_tv_is_zero_for_the_same_points_and_one_for_disjoint_basins():
    rng = np.random.default_rng(2)
    phi, psi = rng.uniform(-3, -1, 500), rng.uniform(1, 3, 500)
    assert ramachandran_tv(phi, psi, phi, psi) == 0.0
    assert ramachandran_tv(phi, psi, phi + 3.5, psi - 3.5) == pytest.approx(1.0)


def test_ramachandran_tv_weights_and_wrapping():
    # two points, one per bin: weights 0.75 / 0.25 against 0.5 / 0.5 give TV = 0.25; angles wrap by 2π
    phi_a, psi_a = np.array([-2.0, 2.0]), np.array([0.1, 0.1])
    d = ramachandran_tv(phi_a, psi_a, phi_a + 2 * np.pi, psi_a - 2 * np.pi, weights_a=[3.0, 1.0])
    assert d == pytest.approx(0.25)
