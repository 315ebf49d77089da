"""The example notebooks run top to bottom and compute what they claim (code cells executed in order)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_notebook(name: str, tmp_path: Path, monkeypatch) -> dict:
    """Execute every code cell of ``examples/name`` in one namespace (as a kernel would); return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plt, "show", lambda *a, **k: plt.close("all"))
    cells = json.loads((EXAMPLES / name).read_text())["cells"]
    namespace: dict = {"__name__": "__main__"}
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            assert not any(c["output_type"] == "error" for c in cell.get("outputs", []))
            exec(compile("".join(cell["source"]), f"{name}[cell {i}]", "exec"), namespace)
    return namespace


@pytest.mark.timeout(600)
def test_md_analysis_notebook(tmp_path, monkeypatch):
    ns = run_notebook("analyse_md_dataset.ipynb", tmp_path, monkeypatch)
    assert ns["max_abs_diff_kt"] < 1e-5  # stored energies equal OpenMM's
    label = next(iter(ns["populations"]))  # ala2's only φ/ψ pair
    total = sum(p.fraction for p in ns["populations"][label].values())
    assert 0.95 < total <= 1.0 + 1e-12  # the three boxes cover (almost) every frame of ala2
    f, err = ns["delta_f"][label, "alpha_R"]
    # independent check: −ln(N_αR / N_C7eq) counted directly from the φ/ψ arrays
    p = ns["populations"][label]
    assert f == pytest.approx(-np.log(p["alpha_R"].fraction / p["C7eq_beta"].fraction), rel=1e-9)
    assert 0 < err < 0.5


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sample_and_reweight_notebook(tmp_path, monkeypatch):
    ns = run_notebook("sample_and_reweight.ipynb", tmp_path, monkeypatch)
    result = ns["result"]
    assert result.xyz.shape == (ns["N"], 22, 3)
    assert 1.0 <= result.weights.ess <= ns["N"]
    assert ns["out"].is_file()
    assert (ns["work"] / "tiny.pt").is_file() and ns["tiny_result"].xyz.shape == (1000, 22, 3)
