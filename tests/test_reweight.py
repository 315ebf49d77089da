"""Tests for bgkit.reweight: log-weights, Kish ESS, clipping, resampling, SNIS."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bgkit import BgkitError
from bgkit.reweight import (
    clip_log_weights,
    ess_fraction,
    kish_ess,
    log_weights,
    normalized_weights,
    resample,
    reweight,
    snis_mean,
)


def test_log_weights_values_and_nonfinite():
    u = np.array([1.0, np.inf, np.nan, 2.0, 3.0])
    lq = np.array([-0.5, 0.0, 0.0, np.nan, 1.0])
    lw, n_bad = log_weights(u, lq)
    assert n_bad == 3
    np.testing.assert_allclose(lw[[0, 4]], [-0.5, -4.0])
    assert np.all(np.isneginf(lw[[1, 2, 3]]))


def test_log_weights_accepts_torch():
    torch = pytest.importorskip("torch")
    lw, n_bad = log_weights(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0], requires_grad=True))
    np.testing.assert_allclose(lw, [-1.0, -2.0])
    assert n_bad == 0 and lw.dtype == np.float64


def test_log_weights_length_mismatch():
    with pytest.raises(BgkitError):
        log_weights(np.zeros(3), np.zeros(4))


def test_ess_uniform_gives_n():
    assert kish_ess(np.full(1000, -7.3)) == pytest.approx(1000.0)
    assert ess_fraction(np.zeros(50)) == pytest.approx(1.0)


def test_ess_one_dominant_weight():
    lw = np.full(100, -np.inf)
    lw[17] = 3.0
    assert kish_ess(lw) == pytest.approx(1.0)
    lw2 = np.full(100, -1e3)
    lw2[3] = 0.0
    assert kish_ess(lw2) == pytest.approx(1.0)
    assert ess_fraction(lw) == pytest.approx(0.01)


def test_ess_of_explicit_weights_and_of_gaussian_importance_sampling():
    # weights 1, 2, 3, 4 (any common factor): ESS = (sum w)^2 / sum w^2 = 100 / 30
    assert kish_ess(np.log([1.0, 2.0, 3.0, 4.0]) - 50.0) == pytest.approx(10.0 / 3.0, rel=1e-12)
    assert ess_fraction(np.log([0.5, 0.5, 1.0, 2.0])) == pytest.approx(16.0 / 5.5 / 4, rel=1e-12)
    # target N(0, 1), proposal N(0, s^2): E_q[w^2] / E_q[w]^2 = s^2 / sqrt(2 s^2 - 1), so ESS/N -> sqrt(2 s^2 - 1) / s^2
    s, n = 2.0, 200_000
    x = np.random.default_rng(5).normal(0.0, s, n)
    lw, _ = log_weights(x**2 / 2, stats.norm(0.0, s).logpdf(x))
    assert ess_fraction(lw) == pytest.approx(math.sqrt(2 * s**2 - 1) / s**2, rel=0.005)  # 0.661; MC error 0.1 %


def test_ess_all_zero_and_inf_energies():
    assert kish_ess(np.full(10, -np.inf)) == 0.0
    u = np.array([0.0, 0.0, np.inf, 0.0])
    lw, n_bad = log_weights(u, np.zeros(4))
    assert n_bad == 1 and np.isneginf(lw[2])
    assert kish_ess(lw) == pytest.approx(3.0)
    assert ess_fraction(lw) == pytest.approx(0.75)


def test_clip_count_and_which():
    rng = np.random.default_rng(0)
    lw = rng.normal(size=1000)
    lw[:5] = -np.inf
    clipped, n = clip_log_weights(lw, fraction=0.01)
    assert n == int(np.floor(0.01 * 995)) == 9
    assert np.isneginf(clipped).sum() == 5 + 9
    top = np.argsort(lw)[-9:]
    assert np.all(np.isneginf(clipped[top]))
    keep = np.isfinite(clipped)
    assert clipped[keep].max() <= np.sort(lw)[-10]
    np.testing.assert_array_equal(clipped[keep], lw[keep])
    assert clip_log_weights(lw, 0.0)[1] == 0
    with pytest.raises(BgkitError):
        clip_log_weights(lw, 1.5)


def test_clip_ties():
    clipped, n = clip_log_weights(np.zeros(1000), 0.002)
    assert n == 2 and np.isneginf(clipped).sum() == 2


def test_resample_frequencies_match_weights():
    p = np.array([0.5, 0.25, 0.15, 0.1, 0.0])
    with np.errstate(divide="ignore"):
        lw = np.log(p) + 4.2
    n = 20000
    idx = resample(lw, n=n, seed=1)
    counts = np.bincount(idx, minlength=5)
    assert counts[4] == 0
    chi2 = stats.chisquare(counts[:4], n * p[:4])
    assert chi2.pvalue > 1e-3
    np.testing.assert_array_equal(idx, resample(lw, n=n, seed=1))
    assert resample(lw, seed=2).size == 5


def test_resample_all_zero_raises():
    with pytest.raises(BgkitError):
        resample(np.full(4, -np.inf), seed=0)


def test_normalized_weights_stable():
    w = normalized_weights(np.array([1000.0, 1000.0, -np.inf]))
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0])


def test_snis_gaussian_target_gaussian_proposal():
    # target p = N(1, 0.5^2) (unnormalised), proposal q = N(0, 1.5^2); E_p[x] = 1, E_p[x^2] = 1.25
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.5, size=20000)
    u = (x - 1.0) ** 2 / (2 * 0.5**2)
    log_q = stats.norm(0.0, 1.5).logpdf(x)
    lw, _ = log_weights(u, log_q)
    mean, se = snis_mean(np.stack([x, x**2], axis=1), lw)
    assert mean.shape == (2,) and se.shape == (2,)
    assert abs(mean[0] - 1.0) < 4 * se[0]
    assert abs(mean[1] - 1.25) < 4 * se[1]
    m1, s1 = snis_mean(x, lw)
    assert isinstance(m1, float) and m1 == pytest.approx(mean[0]) and s1 == pytest.approx(se[0])
    assert 0.0 < se[0] < 0.05


def test_snis_ignores_nan_values_with_zero_weight():
    m, _ = snis_mean(np.array([1.0, np.nan, 3.0]), np.array([0.0, -np.inf, 0.0]))
    assert m == pytest.approx(2.0)


def test_reweight_bundle():
    rng = np.random.default_rng(0)
    u = rng.normal(size=5000)
    u[:3] = np.nan
    res = reweight(u, np.zeros(5000), clip_fraction=0.002, n_resample=1000, seed=0)
    assert res.n_nonfinite == 3 and res.n_clipped == int(0.002 * 4997)
    assert res.indices.shape == (1000,)
    assert not np.isin(res.indices, [0, 1, 2]).any()
    assert np.isfinite(res.log_w_clipped[res.indices]).all()
    w = np.exp(-u[3:])  # log q = 0: the weights of the 4997 valid samples, by hand, before clipping
    assert res.ess == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-10)
    assert res.ess_fraction == pytest.approx(res.ess / 5000)
    assert res.summary()["n_resampled"] == 1000
    with pytest.raises(BgkitError):
        reweight(np.full(3, np.inf), np.zeros(3))
