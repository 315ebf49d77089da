"""Figures for BG analysis: Ramachandran free energies, energy, log-weight and work histograms.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, so
nothing is displayed and pyplot's global backend is left alone. ``out_path``
ending in ``.png`` writes a PNG; ending in ``.pdf`` writes the PDF and a PNG
next to it. Angles are in radians, energies reduced (kT). Weights are linear
and non-negative (from log-weights: ``bgkit.reweight.normalized_weights``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bgkit import BgkitError
from bgkit.arrays import as_numpy
from bgkit.reweight import ess_fraction

__all__ = [
    "free_energy_2d",
    "RamaResult",
    "ramachandran",
    "ramachandran_panels",
    "energy_histograms",
    "log_weight_histogram",
    "work_histograms",
    "refinement_curve",
]

FREE_ENERGY_LABEL = "free energy / kT"
_PI_TICKS = [-math.pi, -math.pi / 2, 0.0, math.pi / 2, math.pi]
_PI_LABELS = ["−π", "−π/2", "0", "π/2", "π"]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out_path: str | Path) -> list[Path]:
    path = Path(out_path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".pdf"):
        raise BgkitError(f"plot path must end in .png or .pdf, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    written = [path.with_suffix(".png")]
    fig.savefig(written[0], dpi=150)
    if suffix == ".pdf":
        fig.savefig(path)
        written.append(path)
    return written


def _linear_weights(weights: Any, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = as_numpy(weights, "weights").reshape(-1)
    if w.size != n:
        raise BgkitError(f"weights has {w.size} entries for {n} samples")
    if np.any(w < 0) or np.isnan(w).any() or np.isposinf(w).any():
        raise BgkitError("weights must be finite and non-negative")
    return w


def free_energy_2d(
    phi: Any, psi: Any, weights: Any = None, bins: int = 60
) -> tuple[np.ndarray, np.ndarray]:
    """Free energy −ln p(φ, ψ) (kT) on a periodic grid, shifted to minimum 0.

    phi, psi: [n] (rad); weights: optional [n] non-negative. Returns
    (F [bins, bins] indexed [φ bin, ψ bin] with NaN for unvisited bins,
    edges [bins + 1] in rad, shared by both axes). Frames with non-finite
    angles are ignored.
    """
    f = as_numpy(phi, "phi").reshape(-1)
    p = as_numpy(psi, "psi").reshape(-1)
    if f.shape != p.shape:
        raise BgkitError(f"phi {f.shape} and psi {p.shape} differ in length")
    w = _linear_weights(weights, f.size)
    ok = np.isfinite(f) & np.isfinite(p) & (w > 0)
    if not ok.any():
        raise BgkitError("no frame with finite angles and non-zero weight to histogram")
    wrap = lambda a: np.remainder(a + math.pi, 2 * math.pi) - math.pi  # noqa: E731
    edges = np.linspace(-math.pi, math.pi, int(bins) + 1)
    hist, _, _ = np.histogram2d(wrap(f[ok]), wrap(p[ok]), bins=[edges, edges], weights=w[ok])
    with np.errstate(divide="ignore"):
        free = -np.log(hist / hist.sum())
    free[~np.isfinite(free)] = np.nan
    return free - np.nanmin(free), edges


class RamaResult(NamedTuple):
    """What ``ramachandran`` drew: the mesh, the free-energy grid (kT) and the colour-scale maximum (kT)."""

    mesh: Any
    free_energy_kt: np.ndarray
    vmax_kt: float


def _style_torsion_axes(ax: Any, xlabel: str = "φ / rad", ylabel: str = "ψ / rad") -> None:
    ax.set_xlim(-math.pi, math.pi)
    ax.set_ylim(-math.pi, math.pi)
    ax.set_xticks(_PI_TICKS, _PI_LABELS)
    ax.set_yticks(_PI_TICKS, _PI_LABELS)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_aspect("equal")


def ramachandran(
    ax: Any,
    phi: Any,
    psi: Any,
    weights: Any = None,
    bins: int = 60,
    vmax_kt: float | None = None,
    cmap: str = "viridis",
) -> RamaResult:
    """Draw the (φ, ψ) free energy in kT on ``ax`` (unvisited bins blank).

    Colour scale runs from 0 to ``vmax_kt`` (default: the largest finite value
    of this panel); pass the same vmax_kt to several panels to share it.
    """
    free, edges = free_energy_2d(phi, psi, weights, bins)
    vmax = float(np.nanmax(free)) if vmax_kt is None else float(vmax_kt)
    vmax = vmax if vmax > 0 else 1.0
    mesh = ax.pcolormesh(edges, edges, free.T, vmin=0.0, vmax=vmax, cmap=cmap, shading="flat")
    _style_torsion_axes(ax)
    return RamaResult(mesh, free, vmax)


def _pair_columns(x: Any, name: str) -> np.ndarray:
    arr = as_numpy(x, name)
    arr = arr[:, None] if arr.ndim == 1 else arr
    if arr.ndim != 2:
        raise BgkitError(f"{name} must be [n] or [n, n_pairs], got {arr.shape}")
    return arr


def ramachandran_panels(
    datasets: dict[str, tuple[Any, ...]],
    out_path: str | Path,
    title: str | None = None,
    bins: int = 60,
    vmax_kt: float | None = None,
    pair_labels: list[str] | None = None,
) -> float:
    """Side-by-side Ramachandran free energies with one colour scale; returns vmax (kT).

    datasets: {label: (phi, psi) or (phi, psi, weights)} with phi, psi [n]
    for one residue or [n, n_pairs] for several (ala3/ala4): rows are φ/ψ
    pairs, columns are datasets. One colourbar labelled "free energy / kT";
    its maximum is ``vmax_kt`` or the largest finite value of the first
    dataset (the reference), so a poor proposal's 100s of kT cannot wash out the
    reference's structure; higher values take the top colour (extended bar).
    """
    if not datasets:
        raise BgkitError("no datasets to plot")
    grids: dict[str, list[np.ndarray]] = {}
    edges = None
    n_pairs = None
    for label, entry in datasets.items():
        if len(entry) not in (2, 3):
            raise BgkitError(f"dataset {label} must be (phi, psi) or (phi, psi, weights)")
        phi, psi = _pair_columns(entry[0], "phi"), _pair_columns(entry[1], "psi")
        weights = entry[2] if len(entry) == 3 else None
        if phi.shape != psi.shape or (n_pairs is not None and phi.shape[1] != n_pairs):
            raise BgkitError(f"dataset {label}: phi {phi.shape} / psi {psi.shape} do not match")
        n_pairs = phi.shape[1]
        grids[label] = []
        for j in range(n_pairs):
            free, edges = free_energy_2d(phi[:, j], psi[:, j], weights, bins)
            grids[label].append(free)
    if pair_labels is not None and len(pair_labels) != n_pairs:
        raise BgkitError(f"{len(pair_labels)} pair labels for {n_pairs} φ/ψ pairs")
    first = next(iter(grids.values()))
    vmax = vmax_kt if vmax_kt is not None else max(float(np.nanmax(g)) for g in first)
    vmax = float(vmax) if vmax > 0 else 1.0
    overflow = any(float(np.nanmax(g)) > vmax for gs in grids.values() for g in gs)
    n_cols = len(grids)
    fig = _figure(3.2 * n_cols + 1.0, 3.0 * n_pairs + (0.4 if title else 0.0))
    axes = fig.subplots(n_pairs, n_cols, squeeze=False)
    mesh = None
    for c, (label, gs) in enumerate(grids.items()):
        for r, free in enumerate(gs):
            ax = axes[r, c]
            mesh = ax.pcolormesh(edges, edges, free.T, vmin=0.0, vmax=vmax, cmap="viridis")
            pair = pair_labels[r] if pair_labels else (f"pair {r + 1}" if n_pairs > 1 else "")
            suffix = f" ({pair})" if pair else ""
            _style_torsion_axes(ax, f"φ{suffix} / rad", f"ψ{suffix} / rad")
            if r == 0:
                ax.set_title(label)
    fig.colorbar(mesh, ax=axes.ravel().tolist(), label=FREE_ENERGY_LABEL, extend="max" if overflow else "neither")
    if title:
        fig.suptitle(title)
    _save(fig, out_path)
    return vmax


def energy_histograms(
    data: dict[str, tuple[Any, ...]],
    out_path: str | Path,
    bins: int = 100,
    e_range: tuple[float, float] | None = None,
    title: str | None = None,
) -> dict[str, dict[str, int]]:
    """Overlaid normalised histograms of reduced energies (kT), finite values only.

    data: {label: energy_kt [n] or (energy_kt, weights)}; the first entry is
    the reference. Default range: from the smallest finite energy of any set
    to the reference's 99.9th percentile plus its 0.1–99.9 % spread. The
    legend gives, per set, how many energies were non-finite and how many fell
    outside the range. Returns {label: {"n_nonfinite": .., "n_outside": ..}}.
    """
    if not data:
        raise BgkitError("no energies to plot")
    sets = {}
    for label, entry in data.items():
        e, w = entry if isinstance(entry, tuple) and len(entry) == 2 else (entry, None)
        e = as_numpy(e, f"energies of {label}").reshape(-1)
        sets[label] = (e, _linear_weights(w, e.size))
    finite = [e[np.isfinite(e)] for e, _ in sets.values()]
    if not any(f.size for f in finite):
        raise BgkitError("no finite energies to plot")
    if e_range is None:
        ref = finite[0] if finite[0].size else np.concatenate(finite)
        lo_ref, hi_ref = np.percentile(ref, [0.1, 99.9])
        lo = min(float(f.min()) for f in finite if f.size)
        e_range = (lo, float(hi_ref + max(hi_ref - lo_ref, 1.0)))
    lo, hi = float(e_range[0]), float(e_range[1])
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    report = {}
    for label, (e, w) in sets.items():
        ok = np.isfinite(e)
        inside = ok & (e >= lo) & (e <= hi)
        n_bad, n_out = int((~ok).sum()), int((ok & ~inside).sum())
        report[label] = {"n_nonfinite": n_bad, "n_outside": n_out}
        note = f"{label} ({n_bad} non-finite, {n_out} outside range)"
        if inside.any() and w[inside].sum() > 0:
            ax.hist(e[inside], bins=bins, range=(lo, hi), weights=w[inside], density=True,
                    histtype="step", label=note)
        else:
            ax.plot([], [], label=note + " — none in range")
    ax.set_xlabel("energy u / kT")
    ax.set_ylabel("probability density / kT⁻¹")
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    _save(fig, out_path)
    return report


def log_weight_histogram(
    log_w: Any, out_path: str | Path, bins: int = 100, title: str | None = None
) -> dict[str, float | int]:
    """Histogram of finite log importance weights, shifted so the largest is 0.

    Notes the Kish ESS fraction and the number of zero weights (log w = −inf).
    Returns {"ess_fraction": .., "n_nonfinite": ..}.
    """
    lw = as_numpy(log_w, "log_w").reshape(-1)
    ok = np.isfinite(lw)
    if not ok.any():
        raise BgkitError("no finite log-weights to plot")
    n_bad = int((~ok).sum())
    ess = ess_fraction(np.where(ok, lw, -np.inf))
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    ax.hist(lw[ok] - lw[ok].max(), bins=bins, color="tab:blue")
    ax.set_xlabel("log w − max log w (dimensionless)")
    ax.set_ylabel("samples per bin (count)")
    ax.set_yscale("log")
    note = f"Kish ESS / N = {ess:.3g}; {n_bad} of {lw.size} weights zero (non-finite)"
    ax.set_title(f"{title}\n{note}" if title else note, fontsize="medium")
    _save(fig, out_path)
    return {"ess_fraction": ess, "n_nonfinite": n_bad}


def work_histograms(w_forward: Any, w_reverse: Any, report: dict[str, Any], out_path: str | Path,
                    bins: int = 60) -> dict[str, int]:
    """Densities of the forward works W_F and of −W_R (kT) with the ΔF estimates of ``report`` as lines.

    With a perfect map both are a spike at ΔF; overlap of the two histograms is what BAR
    needs. ``report``: ``bgkit fep``'s fep.json content (``estimates``, ``reference``).
    Non-finite works (mapped outside the target state) and finite ones outside the central 99 %
    (the range shown) are counted in the title.
    Returns {"n_nonfinite_forward": .., "n_nonfinite_reverse": ..}.
    """
    wf = as_numpy(w_forward, "w_forward").reshape(-1)
    wr = -as_numpy(w_reverse, "w_reverse").reshape(-1)
    ok_f, ok_r = np.isfinite(wf), np.isfinite(wr)
    if not (ok_f.any() or ok_r.any()):
        raise BgkitError("no finite works to plot")
    fig = _figure(6.5, 4.2)
    ax = fig.subplots()
    finite = np.concatenate([wf[ok_f], wr[ok_r]])
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size > 1 else (finite[0] - 1, finite[0] + 1)
    edges = np.linspace(lo, hi + 1e-9, bins + 1)
    n_out = int(((finite < lo) | (finite > hi)).sum())
    ax.hist(wf[ok_f], bins=edges, density=True, alpha=0.5, color="tab:blue", label="W_F (samples of A)")
    ax.hist(wr[ok_r], bins=edges, density=True, alpha=0.5, color="tab:orange", label="−W_R (samples of B)")
    lines = [("reference", report.get("reference", {}), "black", "-")]
    lines += [(k, v, c, "--") for k, c in (("tfep_bar", "tab:green"), ("tfep_exp_forward", "tab:blue"),
                                           ("tfep_exp_reverse", "tab:orange"))
              for v in [report.get("estimates", {}).get(k, {})]]
    for name, est, color, style in lines:
        df = est.get("dF_kT")
        if df is not None and math.isfinite(df):
            ax.axvline(df, color=color, linestyle=style, label=f"{name} ΔF = {df:.2f} kT")
    ax.set_xlabel("work / kT")
    ax.set_ylabel("density (1/kT)")
    ax.legend(fontsize="small")
    ax.set_title(f"{report.get('system', '')} {report.get('from', 'A')} → {report.get('to', 'B')}: "
                 f"{int((~ok_f).sum())} of {wf.size} forward and {int((~ok_r).sum())} of {wr.size} reverse works "
                 f"infinite (mapped outside the state); {n_out} finite ones outside the 0.5–99.5 % range shown",
                 fontsize="small", wrap=True)
    _save(fig, out_path)
    return {"n_nonfinite_forward": int((~ok_f).sum()), "n_nonfinite_reverse": int((~ok_r).sum())}


def refinement_curve(energy_evaluations: Any, ess_fractions: Any, out_path: str | Path,
                     title: str | None = None, label: str = "validation draw") -> list[Path]:
    """ESS/N (of independent validation draws) against cumulative energy evaluations, one point per round.

    energy_evaluations [K] counts (log x-axis where all are positive), ess_fractions [K] in [0, 1] (None: not
    measured). Returns the files written.
    """
    x = np.asarray(energy_evaluations, dtype=np.float64)
    y = np.asarray([np.nan if v is None else v for v in ess_fractions], dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or not len(x):
        raise BgkitError("refinement_curve needs one ESS/N per number of energy evaluations")
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    ax.plot(x, y, "o-", color="tab:blue", label=label)
    for k, (a, b) in enumerate(zip(x, y)):
        ax.annotate(str(k), (a, b), textcoords="offset points", xytext=(4, 4), fontsize="small")
    if (x > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel("energy evaluations (cumulative)")
    ax.set_ylabel("Kish ESS / N")
    ax.set_ylim(0, max(1e-3, float(np.nanmax(y)) * 1.15) if np.isfinite(y).any() else 1)
    ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    return _save(fig, out_path)
