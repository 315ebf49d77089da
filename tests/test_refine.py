"""Self-refinement: unbiased resampling, ESS rising on a known density, resume = uninterrupted, history, basins."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from scipy import stats

from _cli_helpers import REPO, assert_one_line_error, bgkit
from bgkit.reweight import clip_log_weights, ess_fraction, resample


@pytest.mark.parametrize("scheme", ["systematic", "multinomial"])
def test_resampled_mean_equals_weighted_mean_for_a_mismatched_proposal(scheme):
    """Target N(1, 0.5²), proposal N(0, 1): the mean of resampled draws is the weighted mean, and both the
    analytic target mean, within their errors."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000)
    log_w = stats.norm(1.0, 0.5).logpdf(x) - stats.norm(0.0, 1.0).logpdf(x)
    w = np.exp(log_w - log_w.max())
    weighted = float(np.sum(w * x) / w.sum())
    means = [x[resample(log_w, 50_000, seed=s, scheme=scheme)].mean() for s in range(20)]
    se = np.std(means, ddof=1) / np.sqrt(len(means))
    assert abs(np.mean(means) - weighted) < 4 * se + 1e-4
    assert abs(weighted - 1.0) < 0.01  # the weighted mean itself is the target's
    assert np.std(means) < 0.01


def test_systematic_resampling_counts_are_floor_or_ceil_of_n_times_weight():
    rng = np.random.default_rng(1)
    log_w = rng.normal(size=500)
    log_w[::7] = -np.inf
    n = 2000
    counts = np.bincount(resample(log_w, n, seed=3, scheme="systematic"), minlength=500)
    expected = n * np.exp(log_w - np.logaddexp.reduce(log_w[np.isfinite(log_w)]))
    assert counts.sum() == n
    assert (counts[::7] == 0).all()
    assert np.all((counts >= np.floor(expected) - 1e-9) & (counts <= np.ceil(expected) + 1e-9))


def test_unknown_resampling_scheme_is_a_clear_error():
    from bgkit import BgkitError

    with pytest.raises(BgkitError, match="resampling scheme"):
        resample(np.zeros(4), scheme="stratified-ish")


def test_refinement_rounds_raise_ess_towards_one_on_a_known_density(tmp_path):
    """Draw from the flow, weight by a known 2-D density, clip, resample, continue maximum likelihood: the
    building blocks `bgkit refine` runs, on a target whose density is exact. A flow fitted to the wrong
    Gaussian (ESS/N ~0.2) must reach ESS/N > 0.9 on independent draws."""
    from bgkit.flows import build_flow
    from bgkit.train.config import TrainConfig
    from bgkit.train.loop import train

    target = stats.multivariate_normal(mean=[1.0, -0.5], cov=[[0.6, 0.25], [0.25, 0.4]])
    torch.manual_seed(0)
    flow = build_flow("nsf", 2, hidden=16, n_layers=2)
    rng = np.random.default_rng(0)
    wrong = rng.multivariate_normal([0.0, 0.0], [[1.5, 0.0], [0.0, 1.5]], size=8000)
    train(flow, torch.as_tensor(wrong, dtype=torch.float32), None,
          TrainConfig(objective="mle", steps=150, batch_size=256, lr=5e-3, warmup_steps=10, ema=0.9),
          tmp_path / "start.pt", progress=False)

    def measure(seed: int, n: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            y, log_q = flow.sample(n, generator=torch.Generator().manual_seed(seed))
        y = y.double().numpy()
        return y, target.logpdf(y) - log_q.double().numpy()

    ess = [ess_fraction(measure(10_000)[1])]
    assert ess[0] < 0.5
    for k in range(3):
        y, log_w = measure(k)
        clipped, _ = clip_log_weights(log_w, 1e-4)
        idx = resample(clipped, len(y), seed=k, scheme="systematic")
        train(flow, torch.as_tensor(y[idx], dtype=torch.float32), None,
              TrainConfig(objective="mle", steps=150, batch_size=256, lr=2e-3, warmup_steps=10, ema=0.9, seed=k),
              tmp_path / f"round{k}.pt", progress=False)
        ess.append(ess_fraction(measure(10_001 + k)[1]))
    assert ess[0] < 0.5 and ess[-1] > 0.9, ess
    assert all(b > a - 0.02 for a, b in zip(ess[1:], ess[2:])), ess  # no round undoes the last


# --------------------------------------------------------------------------- the molecular workflow

TINY = ["--system", "ala2", "--rounds", "2", "--draws", "600", "--chunk-size", "200", "--val-draws", "200",
        "--steps", "6", "--warmup-steps", "2", "--batch-size", "64", "--md-fraction", "0.2", "--workers", "1",
        "--no-progress", "--data", REPO / "systems/ala2/md", "--basin-data", REPO / "systems/ala2/md_rex"]


def _history(path):
    return json.loads(path.with_suffix(".history.json").read_text())["refinement"]


def _strip_times(history):
    return [{k: v for k, v in h.items() if k != "wall_time_s"} for h in history]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_refine_killed_mid_round_and_rerun_equals_uninterrupted(tmp_path):
    whole = tmp_path / "whole.pt"
    r = bgkit("refine", *TINY, "--out", whole, timeout=600)
    assert r.returncode == 0, r.stderr
    h = _history(whole)
    assert h["config"]["clip_fraction"] == 1e-4 and h["config"]["resampling"] == "systematic"
    assert [e["round"] for e in h["history"]] == [0, 1, 2]
    for e in h["history"][1:]:
        assert e["resampling"]["draws"] == 600 and e["resampling"]["resampled"] == 600
        assert e["energy_evaluations"] > 0 and e["validation"]["ess_fraction"] is not None
        assert set(e["validation"]["basins"]) >= {"alpha_L", "alpha_R", "C7eq_beta"}
    assert (tmp_path / "whole.history.png").is_file()
    assert torch.load(whole, weights_only=False)["metrics"]["refinement"]["best_round"] == h["best_round"]

    killed = tmp_path / "killed.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bgkit.cli", "refine", *map(str, TINY), "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state = tmp_path / "killed.pt.refine" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once round 1 has some, not all, of its chunks
        try:
            chunks = json.loads(state.read_text()).get("chunks", {}).get("1", {})
        except (OSError, ValueError):
            chunks = {}
        if 1 <= len(chunks) < 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists()
    r = bgkit("refine", *TINY, "--out", killed, timeout=600)
    assert r.returncode == 0, r.stderr
    hk = _history(killed)
    assert _strip_times(hk["history"]) == _strip_times(h["history"])
    a, b = torch.load(whole, weights_only=False)["model"], torch.load(killed, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    drawn = json.loads(state.read_text())["drawn"]
    assert len(drawn) == len(set(drawn)) == 2 * 3  # every chunk of the two rounds drawn once, none twice

    # the same command again: nothing is drawn or trained, the result is the same
    r = bgkit("refine", *TINY, "--out", killed, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(state.read_text())["drawn"] == drawn
    # a different setting on the same run folder is refused, naming the option
    r = bgkit("refine", *TINY[:-2], "--lr", "1e-3", "--basin-data", TINY[-1], "--out", killed)
    assert_one_line_error(r, "lr")


def test_refine_bad_options_are_one_line_errors(tmp_path):
    r = bgkit("refine", "--system", "ala2", "--out", tmp_path / "r.pt", "--draws", "1")
    assert_one_line_error(r, "--draws")
    r = bgkit("refine", "--system", "ala2", "--out", tmp_path / "r.pt", "--lr", "inf")
    assert_one_line_error(r, "--lr")
    r = bgkit("refine", "--system", "ala2", "--out", tmp_path / "r.pt", "--resampled", "10", "--batch-size", "64")
    assert_one_line_error(r, "--resampled")
    (tmp_path / "r.pt.refine").mkdir()
    (tmp_path / "r.pt.refine" / "mine.txt").write_text("user data")
    r = bgkit("refine", "--system", "ala2", "--out", tmp_path / "r.pt", "--force")
    assert_one_line_error(r, "not a bgkit refinement folder")
    assert (tmp_path / "r.pt.refine" / "mine.txt").read_text() == "user data"


def test_basin_loss_warning_fires_when_a_populated_basin_gets_no_weight():
    from bgkit.dihedrals import labelled_torsions
    from bgkit.md.dataset import load_dataset
    from bgkit.coverage import basin_report
    from bgkit.systems import load_system

    system = load_system("ala2")
    rex = load_dataset(REPO / "systems/ala2/md_rex", system)
    xyz = rex.xyz[::4].astype(np.float64)
    angles, labels = labelled_torsions(xyz, system)
    phi = angles[:, labels.index("phi1")]
    log_w = np.zeros(len(xyz))
    report, warnings = basin_report(xyz, log_w, rex.xyz, system)
    assert not warnings  # equal weights on the reference's own frames: nothing lost
    assert report["alpha_L"]["reweighted"] == pytest.approx(report["alpha_L"]["reference"], abs=0.01)
    alpha_l = phi > 0
    log_w[alpha_l] = np.log(0.3)  # α_L at 0.3 of its weight: under-weighted, not lost
    report, warnings = basin_report(xyz, log_w, rex.xyz, system)
    assert report["alpha_L"]["reweighted"] < 0.5 * report["alpha_L"]["reference"]
    assert len(warnings) == 1 and "alpha_L" in warnings[0] and "under-weights" in warnings[0]
    log_w[alpha_l] = -np.inf  # the proposal gives α_L (φ > 0) no weight
    report, warnings = basin_report(xyz, log_w, rex.xyz, system)
    assert report["alpha_L"]["reweighted"] == 0.0
    assert len(warnings) == 1 and "alpha_L" in warnings[0] and "lost" in warnings[0]
