"""Weight diagnosis: the heaviest draws and worst-covered MD frames, checked against direct computation."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from _cli_helpers import assert_one_line_error, bgkit
from bgkit.diagnose import _nearest_distance, coordinate_labels, diagnose_weights


def test_nearest_distance_wraps_periodic_coordinates():
    train = np.array([[0.0, 3.1], [1.0, 0.0]])
    y = np.array([[0.0, -3.1], [0.9, 0.1]])
    d = _nearest_distance(y, train, periodic=(1,))
    assert d[0] == pytest.approx(2 * np.pi - 6.2)  # 3.1 and -3.1 are 0.083 rad apart on the circle
    assert d[1] == pytest.approx(np.hypot(0.1, 0.1))


@pytest.fixture(scope="module")
def ala2_report():
    from bgkit.evaluate import Reference
    from bgkit.sample import draw, load_proposal
    from bgkit.systems import load_system

    system = load_system("ala2")
    proposal = load_proposal(system)
    result = draw(proposal, system, n=400, seed=5, n_workers=1, progress=False)
    ref = Reference.of_system(system)
    train = ref.datasets[0].split("train")[::20]
    report = diagnose_weights(result, proposal, system, train, ref.xyz[::10], ref.energies_kt[::10], top=5)
    return system, proposal, result, ref, report


def test_heaviest_draws_are_the_largest_normalised_weights(ala2_report):
    system, proposal, result, ref, report = ala2_report
    lw = result.weights.log_w
    expected = np.sort(np.exp(lw[np.isfinite(lw)] - logsumexp(lw[np.isfinite(lw)])))[::-1][:5]
    got = [r["weight_share"] for r in report["heaviest_draws"]]
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert report["heaviest_draws_weight_share"] == pytest.approx(expected.sum())
    assert sum(report["heaviest_draws_by_basin"].values()) == 5
    assert len(coordinate_labels(proposal.transform, system.topology)) == proposal.transform.dim == 60


def test_worst_covered_md_frames_have_the_largest_minus_u_minus_log_q(ala2_report):
    system, proposal, result, ref, report = ala2_report
    lw_md = -ref.energies_kt[::10] - proposal.log_prob(ref.xyz[::10])
    top = np.sort(lw_md)[::-1][:5]
    got = [r["log_w"] for r in report["undercovered_md_frames"]]
    np.testing.assert_allclose(got, top - np.median(lw_md), rtol=1e-6)


def test_diagnose_cli_bad_input(tmp_path):
    assert_one_line_error(bgkit("diagnose", "--system", "ala2", "--n", "10"), "--n")
    assert_one_line_error(bgkit("diagnose", "--system", "ala2", "--top", "0"), "--top")
    (tmp_path / "r.json").write_text("mine")
    assert_one_line_error(bgkit("diagnose", "--system", "ala2", "--out", tmp_path / "r.json"), "exists")
    assert (tmp_path / "r.json").read_text() == "mine"
