"""Tests for bgkit.free_energy: states, counting, reweighting, populations, TFEP (EXP/BAR)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from bgkit import BgkitError
from bgkit.free_energy import (
    ALA2_BASINS,
    ALA2_STATES,
    State,
    basin_populations,
    bar_estimate,
    delta_f_counting,
    delta_f_reweighting,
    exp_estimate,
    forward_works,
    reverse_works,
    state_masks,
)
from bgkit.reweight import log_weights

# two-Gaussian mixture in 1-D: A = {x < 0}, B = {x >= 0}
WEIGHTS, MEANS, SIGMA = np.array([0.7, 0.3]), np.array([-1.5, 1.2]), 0.8


def mixture_energy(x):
    """Reduced energy u(x) = −ln p(x) of the unnormalised mixture."""
    comps = stats.norm.logpdf(x[:, None], MEANS[None, :], SIGMA) + np.log(WEIGHTS)[None, :]
    return -logsumexp(comps, axis=1) + 3.0  # arbitrary offset: ΔF must not depend on it


def mixture_delta_f():
    p_a = float(np.sum(WEIGHTS * stats.norm.cdf(0.0, MEANS, SIGMA)))
    return -math.log((1.0 - p_a) / p_a)


def mixture_samples(n, rng):
    comp = rng.choice(2, size=n, p=WEIGHTS)
    return rng.normal(MEANS[comp], SIGMA)


# --------------------------------------------------------------------------- states


def test_ala2_states_partition_torus():
    rng = np.random.default_rng(0)
    phi = rng.uniform(-np.pi, np.pi, 20000)
    psi = rng.uniform(-np.pi, np.pi, 20000)
    phi[:4], psi[:4] = [np.pi, -np.pi, 0.0, np.pi], [np.pi, -np.pi, 0.0, -np.pi]
    masks = state_masks(ALA2_BASINS, phi, psi)
    total = sum(m.astype(int) for m in masks.values())
    np.testing.assert_array_equal(total, 1)
    inner = state_masks(ALA2_STATES, phi, psi)
    assert inner["beta_planar"].any() and not (inner["beta_planar"] & ~masks["C7eq_beta"]).any()


def test_state_boxes_periodic():
    beta = ALA2_STATES["C7eq_beta"]
    deg = np.radians
    assert beta.mask(deg([-80, -80, -80, -80]), deg([150, -170, 0, 60])).tolist() == [True, True, False, True]
    alpha_r = ALA2_STATES["alpha_R"]
    assert alpha_r.mask(deg([-70, -70, 60]), deg([-40, 100, -40])).tolist() == [True, False, False]
    assert ALA2_STATES["alpha_L"].mask(deg([60, -60]), deg([40, 40])).tolist() == [True, False]
    # a wrapping phi range written across ±180°
    s = State.from_degrees("wrap", phi=(170, -170))
    assert s.mask(deg([175, -175, 0]), deg([0, 0, 0])).tolist() == [True, True, False]
    custom = State("custom", mask_fn=lambda f, p: f > p)
    assert custom.mask([1.0, 0.0], [0.0, 1.0]).tolist() == [True, False]
    assert not beta.mask([np.nan], [3.0])[0]


# --------------------------------------------------------------------------- counting / reweighting


def test_counting_recovers_analytic_delta_f():
    rng = np.random.default_rng(1)
    x = mixture_samples(20000, rng)
    df, se = delta_f_counting(x < 0, x >= 0, n_blocks=40, n_boot=500, seed=0)
    truth = mixture_delta_f()
    assert 0.0 < se < 0.1
    assert abs(df - truth) < 4 * se
    df2, se2 = delta_f_counting(x < 0, x >= 0, block_size=500, n_boot=500, seed=0)
    assert df2 == df and se2 > 0
    with pytest.raises(BgkitError):
        delta_f_counting(x < 0, x >= 0, block_size=10, n_blocks=10)


def test_counting_unvisited_state():
    a = np.ones(100, dtype=bool)
    df, se = delta_f_counting(a, ~a, n_blocks=10, n_boot=50, seed=0)
    assert df == math.inf and se == math.inf


def test_reweighting_recovers_analytic_delta_f():
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 3.0, 20000)  # broad proposal
    lw, n_bad = log_weights(mixture_energy(x), stats.norm.logpdf(x, 0.0, 3.0))
    assert n_bad == 0
    df, se = delta_f_reweighting(x < 0, x >= 0, lw)
    truth = mixture_delta_f()
    assert 0.0 < se < 0.1
    assert abs(df - truth) < 4 * se


def test_reweighting_uniform_weights_is_counting():
    rng = np.random.default_rng(3)
    a = rng.random(4000) < 0.3
    b = ~a
    df, se = delta_f_reweighting(a, b, np.zeros(4000))
    assert df == pytest.approx(-math.log(b.sum() / a.sum()))
    assert se == pytest.approx(math.sqrt(4000 / 3999 * (1 / a.sum() + 1 / b.sum())))


def test_reweighting_zero_weight_state():
    lw = np.array([0.0, 0.0, -np.inf])
    df, se = delta_f_reweighting(np.array([1, 1, 0], bool), np.array([0, 0, 1], bool), lw)
    assert df == math.inf and se == math.inf


def test_basin_populations():
    rng = np.random.default_rng(4)
    x = mixture_samples(10000, rng)
    pops = basin_populations({"A": x < 0, "B": x >= 0}, n_blocks=20, n_boot=300, seed=0)
    p_a = float(np.sum(WEIGHTS * stats.norm.cdf(0.0, MEANS, SIGMA)))
    # fractions and halves are the counts of the frames in each state (counted here directly)
    assert pops["A"].fraction == np.count_nonzero(x < 0) / x.size
    assert pops["B"].fraction == np.count_nonzero(x >= 0) / x.size
    assert pops["A"].first_half == np.count_nonzero(x[:5000] < 0) / 5000
    assert pops["A"].second_half == np.count_nonzero(x[5000:] < 0) / 5000
    assert abs(pops["A"].fraction - p_a) < 4 * pops["A"].stderr
    # independent frames: the block-bootstrap error is the binomial one, sqrt(p(1 − p)/n) (0.0047 here)
    binomial = math.sqrt(p_a * (1.0 - p_a) / x.size)
    assert 0.7 * binomial < pops["A"].stderr < 1.4 * binomial, (pops["A"].stderr, binomial)
    # the free energy of B relative to A from the populations is the analytic one (error: delta method)
    assert (abs(-math.log(pops["B"].fraction / pops["A"].fraction) - mixture_delta_f())
            < 4 * pops["B"].stderr / (p_a * (1.0 - p_a))) and 0.7 * binomial < pops["B"].stderr < 1.4 * binomial
    assert abs(pops["A"].first_half - pops["A"].second_half) < 0.05
    with pytest.raises(BgkitError):
        basin_populations({"A": x < 0, "B": (x >= 0)[:10]})


# --------------------------------------------------------------------------- TFEP

MU_A, SIG_A = 0.0, 1.0
MU_B, SIG_B, OFFSET_B = 1.5, 0.5, 0.7


def u_a(x):
    return (x - MU_A) ** 2 / (2 * SIG_A**2)


def u_b(x):
    return (x - MU_B) ** 2 / (2 * SIG_B**2) + OFFSET_B


TRUE_DF = -math.log(SIG_B / SIG_A) + OFFSET_B  # −ln(Z_B / Z_A)


def affine_works(shift, scale, n, seed):
    """Forward and reverse works for M(x) = shift + scale * x."""
    rng = np.random.default_rng(seed)
    x = rng.normal(MU_A, SIG_A, n)
    y = rng.normal(MU_B, SIG_B, n)
    w_f = forward_works(u_a(x), u_b(shift + scale * x), np.full(n, math.log(scale)))
    w_r = reverse_works(u_b(y), u_a((y - shift) / scale), np.full(n, -math.log(scale)))
    return w_f, w_r


def test_tfep_exact_map_constant_works():
    scale = SIG_B / SIG_A
    w_f, w_r = affine_works(MU_B - scale * MU_A, scale, 2000, 0)
    np.testing.assert_allclose(w_f, TRUE_DF, atol=1e-12)
    np.testing.assert_allclose(w_r, -TRUE_DF, atol=1e-12)
    for res in (exp_estimate(w_f), exp_estimate(w_r, reverse=True), bar_estimate(w_f, w_r)):
        assert res.delta_f_kt == pytest.approx(TRUE_DF, abs=1e-10)
        assert res.stderr_kt == pytest.approx(0.0, abs=1e-8)
    res = bar_estimate(w_f, w_r)
    assert res.ess_fraction_forward == pytest.approx(1.0) and res.ess_fraction_reverse == pytest.approx(1.0)


def test_tfep_imperfect_map_exp_and_bar_agree_with_analytic():
    before = np.geterr()
    w_f, w_r = affine_works(1.2, 0.7, 5000, 1)
    fwd, rev, bar = exp_estimate(w_f), exp_estimate(w_r, reverse=True), bar_estimate(w_f, w_r)
    for res in (fwd, rev, bar):
        assert 0.0 < res.stderr_kt < 0.2
        assert abs(res.delta_f_kt - TRUE_DF) < 4 * res.stderr_kt, res
    assert bar.stderr_kt <= max(fwd.stderr_kt, rev.stderr_kt)
    assert 0.0 < fwd.ess_fraction_forward < 1.0 and math.isnan(fwd.ess_fraction_reverse)
    assert bar.method == "BAR" and bar.n_forward == bar.n_reverse == 5000
    assert np.geterr() == before  # pymbar's np.seterr calls do not leak


def test_tfep_nonfinite_works_counted():
    w_f, w_r = affine_works(1.2, 0.7, 5000, 2)
    w_f[:3] = np.inf
    w_f[3] = np.nan
    w_r[:2] = np.inf
    bar = bar_estimate(w_f, w_r)
    fwd = exp_estimate(w_f)
    assert bar.n_nonfinite == 6 and fwd.n_nonfinite == 4
    assert abs(bar.delta_f_kt - TRUE_DF) < 4 * bar.stderr_kt
    assert abs(fwd.delta_f_kt - TRUE_DF) < 4 * fwd.stderr_kt
    with pytest.raises(BgkitError):
        exp_estimate(np.full(5, np.inf))
    with pytest.raises(BgkitError):
        exp_estimate(np.array([0.0, -np.inf]))
    with pytest.raises(BgkitError):
        forward_works(np.array([np.inf]), np.array([0.0]), np.array([0.0]))


def test_bar_hysteresis_flags_inconsistent_works():
    rng = np.random.default_rng(5)
    res = bar_estimate(rng.normal(50.0, 0.1, 200), rng.normal(50.0, 0.1, 200))
    assert res.ess_fraction_forward > 0.9  # works nearly constant, so ESS alone looks fine...
    assert res.hysteresis_kt > 90.0  # ...but forward and reverse EXP disagree by ~100 kT


def test_bar_pymbar_failures_raise(monkeypatch):
    from pymbar import other_estimators

    w_f, w_r = affine_works(1.2, 0.7, 500, 3)
    before = np.geterr()

    def silent_zero(*args, **kwargs):  # what pymbar returns when its bracketing gives NaN
        return {"Delta_f": 0.0, "dDelta_f": 0.0}

    monkeypatch.setattr(other_estimators, "bar", silent_zero)
    with pytest.raises(BgkitError, match="BAR could not be solved"):
        bar_estimate(w_f, w_r)

    def raises(*args, **kwargs):
        np.seterr(over="raise")  # pymbar's bar_zero does this and may not undo it
        raise FloatingPointError("overflow")

    monkeypatch.setattr(other_estimators, "bar", raises)
    with pytest.raises(BgkitError):
        bar_estimate(w_f, w_r)
    assert np.geterr() == before


def test_reweighting_with_a_dominant_weight_outside_a_state_is_finite_and_silent():
    import warnings

    from bgkit.free_energy import delta_f_reweighting

    a = np.array([True, True, False, False])
    b = ~a
    log_w = np.array([800.0, 0.0, -5.0, -5.0])  # exp(800 - lse_B) overflows if evaluated outside B
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f, err = delta_f_reweighting(a, b, log_w)
    assert np.isclose(f, -(np.logaddexp(-5.0, -5.0) - np.logaddexp(800.0, 0.0)))
    assert np.isfinite(err)
