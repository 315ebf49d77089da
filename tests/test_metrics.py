"""Tests for bgkit.metrics: E-W2, T-W2 (periodic), NLL."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bgkit import BgkitError
from bgkit.metrics import (
    energy_w2_with_counts,
    nll,
    torsion_cost_matrix,
    torsion_w2,
)


def wrap(a):
    return np.remainder(a + np.pi, 2 * np.pi) - np.pi


def test_energy_w2_identical_is_zero():
    e = np.random.default_rng(0).normal(size=500)
    assert energy_w2_with_counts(e, e)[0] == pytest.approx(0.0, abs=1e-12)
    assert energy_w2_with_counts(e, np.random.default_rng(1).permutation(e))[0] == pytest.approx(0.0, abs=1e-12)


def test_energy_w2_constant_shift():
    rng = np.random.default_rng(1)
    e = rng.normal(size=400)
    assert energy_w2_with_counts(e, e + 2.5)[0] == pytest.approx(2.5, rel=1e-10)
    # different sample sizes of the same shifted set (replicated twice)
    assert energy_w2_with_counts(e, np.concatenate([e, e]) - 1.0)[0] == pytest.approx(1.0, rel=1e-10)


def test_energy_w2_drops_nonfinite_and_counts():
    e = np.arange(10.0)
    model = np.concatenate([e + 3.0, [np.nan, np.inf]])
    value, n_ref, n_mod = energy_w2_with_counts(e, model)
    assert value == pytest.approx(3.0) and (n_ref, n_mod) == (0, 2)


def test_energy_w2_weights():
    ref = np.array([0.0, 1.0])
    model = np.array([0.0, 1.0, 50.0])
    # zero weight on the outlier: identical distributions
    assert energy_w2_with_counts(ref, model, weights=[1.0, 1.0, 0.0])[0] == pytest.approx(0.0, abs=1e-12)
    # unweighted: outlier counts
    assert energy_w2_with_counts(ref, model)[0] > 10.0
    with pytest.raises(BgkitError):
        energy_w2_with_counts(ref, model, weights=[1.0, -1.0, 0.0])


def test_energy_w2_torch_input():
    torch = pytest.importorskip("torch")
    assert energy_w2_with_counts(torch.zeros(5), torch.ones(5))[0] == pytest.approx(1.0)


def test_torsion_w2_identical_is_zero():
    a = wrap(np.random.default_rng(0).normal(size=(200, 4)) * 2)
    assert torsion_w2(a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("centre", [0.5, 3.0, -3.0])
def test_torsion_w2_constant_shift(centre):
    # concentrated distributions, so the shifted copy is locally Euclidean; centre 3.0 + 0.3 wraps past π
    rng = np.random.default_rng(2)
    k, delta = 3, 0.3
    a = wrap(centre + 0.05 * rng.normal(size=(300, k)))
    b = wrap(a + delta)
    if centre == 3.0:
        assert (b < 0).mean() > 0.9  # really wrapped to −π + ...
    assert torsion_w2(a, b) == pytest.approx(math.sqrt(k) * delta, rel=1e-6)


def test_torsion_w2_wrap_negative_shift():
    rng = np.random.default_rng(4)
    a = wrap(-3.05 + 0.02 * rng.normal(size=(100, 2)))
    b = wrap(a - 0.2)  # crosses −π to +π
    assert torsion_w2(a, b) == pytest.approx(math.sqrt(2) * 0.2, rel=1e-6)


def test_torsion_cost_periodic():
    c = torsion_cost_matrix(np.array([[math.pi - 0.1]]), np.array([[-math.pi + 0.1]]))
    assert c[0, 0] == pytest.approx(0.04)
    c = torsion_cost_matrix(np.array([[0.0, 0.0]]), np.array([[math.pi, -math.pi]]))
    assert c[0, 0] == pytest.approx(2 * math.pi**2)


def test_torsion_w2_subsample_and_weights():
    rng = np.random.default_rng(5)
    a = wrap(0.3 + 0.05 * rng.normal(size=(500, 2)))
    value = torsion_w2(a, a + 0.1, max_samples=200, seed=0)
    assert 0.0 < value < 0.3
    assert value == torsion_w2(a, a + 0.1, max_samples=200, seed=0)
    model = np.concatenate([a, a + 2.0])
    w = np.concatenate([np.ones(500), np.zeros(500)])
    assert torsion_w2(a, model, weights=w) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(BgkitError):
        torsion_w2(a, np.zeros((10, 3)))


def test_nll():
    assert nll(np.array([-1.0, -3.0])) == pytest.approx(2.0)
    assert nll(np.array([0.0, -np.inf])) == math.inf
    with pytest.raises(BgkitError):
        nll(np.array([np.nan]))
