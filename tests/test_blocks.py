"""bgkit.blocks: contiguous time blocks and the block bootstrap of correlated series.

Truths: block sizes written out, the bootstrap variance of a mean of n independent values
(population variance / n), and the exact standard error of the mean of an AR(1) series.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from bgkit import BgkitError
from bgkit.blocks import block_bootstrap, block_sums, bootstrap_fractions, bootstrap_std, time_blocks


def test_time_blocks_are_contiguous_and_cover_every_frame():
    blocks = time_blocks(10, n_blocks=3)
    assert [b.tolist() for b in blocks] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [len(b) for b in time_blocks(10, block_size=3)] == [4, 3, 3]  # 10 // 3 blocks, remainder spread
    assert len(time_blocks(1000)) == 20
    for kwargs in ({"n_blocks": 1}, {"n_blocks": 11}, {"block_size": 0}, {"block_size": 2, "n_blocks": 2}):
        with pytest.raises(BgkitError):
            time_blocks(10, **kwargs)


def test_block_sums():
    values = np.array([[1, 0], [1, 1], [0, 1], [1, 1], [1, 0]], dtype=bool)
    sums = block_sums(values, time_blocks(5, n_blocks=2))
    assert sums.dtype == np.float64 and sums.tolist() == [[2.0, 2.0], [2.0, 1.0]]


def test_replicates_are_made_of_whole_blocks():
    series = np.arange(12)
    blocks = time_blocks(12, n_blocks=4)  # starts 0, 3, 6, 9
    reps = block_bootstrap(lambda x: x, series, blocks=[blocks], n_boot=50, seed=1)
    assert reps.shape == (50, 12)
    pieces = reps.reshape(50, 4, 3)
    assert np.all(pieces[:, :, 0] % 3 == 0) and np.all(np.diff(pieces, axis=2) == 1)
    assert len(np.unique(pieces[:, :, 0])) == 4  # every block is drawn somewhere


def test_each_series_is_resampled_in_its_own_blocks():
    reps = block_bootstrap(lambda a, b: [a.size, b.size, a.sum() >= 0], np.ones(7), -np.ones(100), n_blocks=20,
                           n_boot=5, seed=0)
    assert reps.shape == (5, 3) and np.all(reps[:, 0] == 7) and np.all(reps[:, 1] == 100)


def test_seed_reproduces_the_replicates():
    x = np.random.default_rng(0).normal(size=200)
    one = block_bootstrap(np.mean, x, n_boot=30, seed=4)
    assert np.array_equal(one, block_bootstrap(np.mean, x, n_boot=30, seed=4))
    assert not np.array_equal(one, block_bootstrap(np.mean, x, n_boot=30, seed=5))


def test_bootstrap_of_a_mean_of_independent_values_has_the_textbook_variance():
    x = np.random.default_rng(2).normal(size=40)
    reps = block_bootstrap(np.mean, x, n_blocks=40, n_boot=20000, seed=0)  # blocks of one value
    assert bootstrap_std(reps) == pytest.approx(np.std(x) / math.sqrt(40), rel=0.03)


def test_blocks_longer_than_the_correlation_time_recover_the_error_of_a_correlated_mean():
    """AR(1) with ρ = 0.9: the standard error of the mean of n values is σ/√n · √((1 + ρ)/(1 − ρ)) (large n),
    about 4.4 times the naive one; 20 blocks of 2 500 values (correlation time ~10) see it, single values do not."""
    rho, n = 0.9, 50000
    rng = np.random.default_rng(3)
    x = np.empty(n)
    x[0] = rng.normal()
    noise = rng.normal(size=n) * math.sqrt(1 - rho**2)
    for i in range(1, n):
        x[i] = rho * x[i - 1] + noise[i]
    exact = 1.0 / math.sqrt(n) * math.sqrt((1 + rho) / (1 - rho))
    blocked = bootstrap_std(block_bootstrap(np.mean, x, n_blocks=20, n_boot=500, seed=0))
    naive = bootstrap_std(block_bootstrap(np.mean, x, n_blocks=n, n_boot=200, seed=0))
    assert 0.6 * exact < blocked < 1.5 * exact, (blocked, exact)
    assert naive < 0.4 * exact, (naive, exact)


def test_bootstrap_std_is_infinite_when_a_replicate_is_not_finite():
    assert bootstrap_std([1.0, 2.0, np.inf]) == math.inf
    assert bootstrap_std([1.0, 2.0, np.nan]) == math.inf
    assert bootstrap_std([1.0, 3.0]) == pytest.approx(math.sqrt(2.0))


def test_block_bootstrap_needs_a_series_and_replicates():
    with pytest.raises(BgkitError):
        block_bootstrap(np.mean)
    with pytest.raises(BgkitError):
        block_bootstrap(np.mean, np.ones(5), n_boot=0)


def test_bootstrap_fractions_of_independent_frames_have_the_binomial_error():
    """Blocks of one frame each: the bootstrap error of a state's fraction is the binomial sqrt(p(1-p)/n)."""
    rng = np.random.default_rng(7)
    n = 4000
    masks = np.column_stack([rng.random(n) < 0.3, rng.random(n) < 0.05])
    reps = bootstrap_fractions(masks, time_blocks(n, block_size=1), n_boot=2000, seed=1)
    assert reps.shape == (2000, 2)
    p = masks.mean(axis=0)
    np.testing.assert_allclose(reps.mean(axis=0), p, atol=3e-3)
    np.testing.assert_allclose(reps.std(axis=0, ddof=1), np.sqrt(p * (1 - p) / n), rtol=0.08)
