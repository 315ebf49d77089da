"""Smoke tests for bgkit.plots: files written, colour scale in kT, units in labels."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bgkit import BgkitError
from bgkit.plots import (
    energy_histograms,
    free_energy_2d,
    log_weight_histogram,
    ramachandran,
    ramachandran_panels,
)


def _angles(n, seed, centre=(-1.3, 2.7)):
    rng = np.random.default_rng(seed)
    phi = np.remainder(centre[0] + 0.4 * rng.normal(size=n) + np.pi, 2 * np.pi) - np.pi
    psi = np.remainder(centre[1] + 0.4 * rng.normal(size=n) + np.pi, 2 * np.pi) - np.pi
    return phi, psi


def _is_png(path):
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_free_energy_2d_in_kt():
    # two bins with 8:1 counts -> ΔF = ln 8 kT; unvisited bins NaN
    phi = np.array([0.1] * 8 + [2.0])
    psi = np.array([0.1] * 8 + [2.0])
    free, edges = free_energy_2d(phi, psi, bins=10)
    assert edges[0] == pytest.approx(-math.pi) and edges[-1] == pytest.approx(math.pi)
    assert np.nanmin(free) == 0.0
    assert np.nanmax(free) == pytest.approx(math.log(8))
    assert np.isnan(free).sum() == 100 - 2
    weighted, _ = free_energy_2d(phi, psi, weights=[1.0] * 8 + [8.0], bins=10)
    assert np.nanmax(weighted) == pytest.approx(0.0, abs=1e-12)


def test_ramachandran_on_axes():
    from matplotlib.figure import Figure

    phi, psi = _angles(2000, 0)
    ax = Figure().subplots()
    res = ramachandran(ax, phi, psi, bins=40, vmax_kt=6.0)
    assert res.vmax_kt == 6.0 and res.mesh.norm.vmin == 0.0 and res.mesh.norm.vmax == 6.0
    assert res.free_energy_kt.shape == (40, 40)
    assert "rad" in ax.get_xlabel() and "rad" in ax.get_ylabel()
    auto = ramachandran(Figure().subplots(), phi, psi, bins=40)
    assert auto.vmax_kt == pytest.approx(np.nanmax(auto.free_energy_kt))


def test_ramachandran_panels_png_and_pdf(tmp_path):
    phi, psi = _angles(3000, 1)
    phi2, psi2 = _angles(3000, 2, centre=(-1.2, -0.6))
    w = np.random.default_rng(3).random(3000)
    vmax = ramachandran_panels(
        {"MD": (phi, psi), "flow": (phi2, psi2), "reweighted": (phi2, psi2, w)},
        tmp_path / "rama.png",
        title="ala2",
    )
    assert _is_png(tmp_path / "rama.png")
    assert vmax == pytest.approx(np.nanmax(free_energy_2d(phi, psi)[0]))  # the reference (first) panel sets it
    assert ramachandran_panels({"MD": (phi, psi)}, tmp_path / "sub" / "rama.pdf", vmax_kt=8.0) == 8.0
    assert (tmp_path / "sub" / "rama.pdf").stat().st_size > 1000
    assert _is_png(tmp_path / "sub" / "rama.png")
    with pytest.raises(BgkitError):
        ramachandran_panels({"MD": (phi, psi)}, tmp_path / "rama.jpg")


def test_ramachandran_panels_grid(tmp_path):
    phi_a, psi_a = _angles(1500, 4)
    phi_b, psi_b = _angles(1500, 5, centre=(-1.0, -0.7))
    phis, psis = np.stack([phi_a, phi_b], 1), np.stack([psi_a, psi_b], 1)
    vmax = ramachandran_panels(
        {"MD": (phis, psis), "flow": (phis[::-1], psis)},
        tmp_path / "grid.png",
        pair_labels=["ALA1", "ALA2"],
    )
    assert vmax > 0 and _is_png(tmp_path / "grid.png")
    with pytest.raises(BgkitError):
        ramachandran_panels({"MD": (phis, psis)}, tmp_path / "bad.png", pair_labels=["x"])


def test_energy_histograms(tmp_path):
    rng = np.random.default_rng(6)
    md = rng.normal(-20.0, 3.0, 2000)
    flow = np.concatenate([rng.normal(-15.0, 5.0, 1995), [np.nan, np.inf, np.inf, 1e9, 1e10]])
    report = energy_histograms(
        {"MD": md, "flow": flow, "reweighted": (flow, np.where(np.isfinite(flow), 1.0, 0.0))},
        tmp_path / "energies.png",
    )
    assert _is_png(tmp_path / "energies.png")
    assert report["flow"]["n_nonfinite"] == 3 and report["flow"]["n_outside"] >= 2
    assert report["MD"] == {"n_nonfinite": 0, "n_outside": 0}


def test_log_weight_histogram(tmp_path):
    lw = np.random.default_rng(7).normal(size=1000)
    lw[:10] = -np.inf
    info = log_weight_histogram(lw, tmp_path / "logw.png")
    assert _is_png(tmp_path / "logw.png")
    assert info["n_nonfinite"] == 10 and 0.0 < info["ess_fraction"] < 1.0
    with pytest.raises(BgkitError):
        log_weight_histogram(np.full(3, -np.inf), tmp_path / "none.png")
