"""Targeted FEP with a learned map: analytic ΔF, the map's Jacobian, states files and `bgkit fep`.

Truths: closed-form partition functions (Gaussians, von Mises), autograd-free identities
(M⁻¹(M(x)) = x, ln|det J_M| + ln|det J_{M⁻¹}| = 0, identity map ⇒ zero work), frames
counted from mdtraj's φ/ψ with the boxes written out here in degrees.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli_helpers import assert_one_line_error, bgkit
from scipy.special import i0

from bgkit import BgkitError
from bgkit.free_energy.learned_map import LearnedMap, tfep_estimates, works_block_errors
from bgkit.free_energy.states import ALA2_STATES, State, load_states

# ----------------------------------------------------------------------------- analytic TFEP


def _gauss_vm(x: np.ndarray, mu: np.ndarray, s: np.ndarray, m_theta: float, kappa: float, offset: float) -> np.ndarray:
    """Reduced energy: Gaussian on x[:, :2] (means mu, stds s) + von Mises on the angle x[:, 2] + offset."""
    return 0.5 * (((x[:, :2] - mu) / s) ** 2).sum(1) - kappa * np.cos(x[:, 2] - m_theta) + offset


A = dict(mu=np.array([0.0, 0.0]), s=np.array([1.0, 1.0]), m_theta=-1.0, kappa=2.0, offset=0.0)
B = dict(mu=np.array([1.5, -0.5]), s=np.array([0.6, 1.3]), m_theta=1.8, kappa=4.0, offset=0.4)


def _log_z(p: dict) -> float:
    return float(np.log(2 * np.pi * p["s"]).sum() + np.log(2 * np.pi * i0(p["kappa"])) - p["offset"])


def _draw(p: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    x = p["mu"] + p["s"] * rng.standard_normal((n, 2))
    theta = np.remainder(rng.vonmises(p["m_theta"], p["kappa"], n) + np.pi, 2 * np.pi) - np.pi
    return np.column_stack([x, theta])


@pytest.mark.timeout(300)
def test_tfep_with_a_trained_imperfect_map_recovers_the_analytic_free_energy(tmp_path):
    """RegFlow map on OT pairs (one periodic dimension), works on fresh samples: EXP both ways and BAR
    within 3 of their reported errors of the exact ΔF, and the errors below 0.1 kT for 3 000 works each."""
    from bgkit.checkpoint import load_checkpoint
    from bgkit.flows import build_flow
    from bgkit.train.learned_map import train_map

    rng = np.random.default_rng(0)
    truth = -(_log_z(B) - _log_z(A))
    train_map(_draw(A, 3000, rng), _draw(B, 3000, rng), tmp_path / "m.pt", periodic=(2,),
              hparams={"hidden": 32, "n_layers": 4}, progress=False,
              config_overrides={"steps": 250, "batch_size": 256, "lr": 2e-3, "seed": 1})
    ckpt = load_checkpoint(tmp_path / "m.pt")
    flow = build_flow(ckpt["flow"]["arch"], 3, **ckpt["flow"]["hparams"]).eval()
    flow.load_state_dict(ckpt["model"])
    xa, xb = _draw(A, 3000, rng), _draw(B, 3000, rng)
    with torch.no_grad():
        ma, ld_f = (t.double().numpy() for t in flow(torch.as_tensor(xa).float()))
        mb, ld_r = (t.double().numpy() for t in flow.inverse(torch.as_tensor(xb).float()))
    w_f = _gauss_vm(ma, **B) - _gauss_vm(xa, **A) - ld_f
    w_r = _gauss_vm(mb, **A) - _gauss_vm(xb, **B) - ld_r
    assert np.std(w_f) > 0.05  # the map is imperfect: works are spread, not a spike at ΔF
    results, failures = tfep_estimates(w_f, w_r)
    assert not failures
    for name, r in results.items():
        assert r.stderr_kt < 0.1, (name, r)
        assert abs(r.delta_f_kt - truth) < 3 * r.stderr_kt + 1e-3, (name, r.delta_f_kt, r.stderr_kt, truth)
    boot = works_block_errors(w_f, w_r, n_boot=100)
    for name, r in results.items():  # independent samples: the bootstrap error agrees with pymbar's
        assert 0.5 < boot[name] / r.stderr_kt < 2.0, (name, boot[name], r.stderr_kt)


def test_map_pairs_uses_every_sample_of_the_larger_set_and_is_optimal_per_block():
    from itertools import permutations

    from bgkit.train.learned_map import map_pairs

    rng = np.random.default_rng(3)
    ya, yb = rng.normal(size=(6, 2)), rng.normal(size=(4, 2)) + 2
    x0, x1 = map_pairs(ya, yb, block_size=6)
    assert sorted(map(tuple, x0)) == sorted(map(tuple, ya))  # each A sample once
    assert {tuple(r) for r in x1} <= {tuple(r) for r in yb}
    cost = ((x0 - x1) ** 2).sum()
    best = min(((x0 - x1[list(p)]) ** 2).sum() for p in permutations(range(6)))
    assert cost == pytest.approx(best)


def test_select_dims_picks_the_dimensions_whose_marginals_differ():
    from bgkit.train.learned_map import select_dims

    rng = np.random.default_rng(0)
    ya, yb = rng.normal(size=(4000, 4)), rng.normal(size=(4000, 4))
    yb[:, 1] += 1.0
    ya[:, 3] = rng.uniform(-np.pi, -np.pi / 2, 4000)  # a torsion on two arcs, transported along its interval
    yb[:, 3] = rng.uniform(np.pi / 2, np.pi, 4000)
    assert select_dims(ya[:3000], yb, threshold=0.1) == [1, 3]  # unequal sample sizes
    assert select_dims(ya, yb, threshold=10.0) == [1, 3]  # at least the two most different ones


def test_estimates_flag_instead_of_inventing_numbers():
    results, failures = tfep_estimates(np.full(5, np.inf), np.array([0.1, 0.2, 0.3]))
    assert "exp_forward" in failures and "no overlap" in failures["exp_forward"]
    assert "exp_reverse" in results
    with pytest.raises(BgkitError, match="-inf"):
        from bgkit.free_energy.estimators import exp_estimate

        exp_estimate([0.0, -np.inf])


# ----------------------------------------------------------------------------- states


def test_states_yaml(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("ext:\n  phi: [-180, -120]\n  psi: [120, -150]\nhelix2:\n  phi2: [-100, -30]\n  psi2: [-80, 0]\n"
                 "all:\n  phi: [-180, 180]\n")
    states = load_states(f)
    deg = np.radians
    ext = states["ext"]
    assert ext.mask(deg([-150, -150, -100]), deg([170, -170, 170])).tolist() == [True, True, False]
    assert states["all"].mask(deg([179.9, -180]), deg([0, 0])).tolist() == [True, True]
    angles, labels = deg(np.array([[-60, -40, -60, -40], [-60, -40, 60, -40]])), ["phi1", "psi1", "phi2", "psi2"]
    assert states["helix2"].mask_torsions(angles, labels).tolist() == [True, False]
    with pytest.raises(BgkitError, match="several|2 residues"):
        ext.mask_torsions(angles, labels)  # phi/psi box on a two-residue peptide
    with pytest.raises(BgkitError, match="psi3"):
        State("x", dihedrals=(("psi3", (0.0, 1.0)),)).mask_torsions(angles, labels)
    # builtin beta_planar, written out in degrees: phi in [-180, -120), psi from 120 through 180 to -150
    assert ALA2_STATES["beta_planar"].mask(deg([-150, -150, -110, -150]), deg([150, -160, 150, -140])).tolist() == [
        True, True, False, False]


@pytest.mark.parametrize("text, fragment", [
    ("a: [1, 2]\n", "needs at least one dihedral range"),
    ("a:\n  chi1: [0, 10]\n", "unknown dihedral"),
    ("a:\n  phi: [0]\n", "[lo, hi] in degrees"),
    ("a:\n  phi: [10, 10]\n", "empty arc"),
    ("a:\n  phi: [0, 10]\n  psi2: [0, 10]\n", "mixes"),
    ("a: {phi: [0, 10]\n", "not valid YAML"),
    ("- 1\n", "must map state names"),
    ("alpha_R: {phi: [-180, 0], psi: [-120, 50]}\nalpha_R: {phi: [-180, 0], psi: [50, -120]}\n",
     "'alpha_R' is given twice"),  # not: the last definition silently wins
    ("a:\n  phi: [0, 10]\n  phi: [20, 30]\n", "'phi' is given twice"),
])
def test_states_yaml_errors(tmp_path, text, fragment):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(BgkitError, match=None) as err:
        load_states(f)
    assert fragment in str(err.value)


# ----------------------------------------------------------------------------- the map on a molecule


@pytest.fixture(scope="module")
def ala2_map(tmp_path_factory):
    """A briefly trained C7eq/β → α_R map of ala2 (internal coordinates) and a few frames of each state."""
    from bgkit.free_energy.states import state_frames, system_states
    from bgkit.md.dataset import load_dataset
    from bgkit.systems import load_system
    from bgkit.train.learned_map import train_state_map

    system = load_system("ala2")
    ds = load_dataset("ala2")
    states = system_states(system)
    a = state_frames(ds, system, "train", states["C7eq_beta"], 600)
    b = state_frames(ds, system, "train", states["alpha_R"], 600)
    path = tmp_path_factory.mktemp("map") / "map.pt"
    train_state_map(system, a, b, path, {"from": "C7eq_beta", "to": "alpha_R"}, hparams={"hidden": 32, "n_layers": 2},
                    config_overrides={"steps": 30, "batch_size": 128}, progress=False)
    return system, LearnedMap.load(path, topology_hash=system.topology_hash), a[:50], b[:50]


def _distances(xyz: np.ndarray) -> np.ndarray:
    return np.linalg.norm(xyz[:, :, None] - xyz[:, None], axis=-1)


def test_learned_map_is_invertible_with_opposite_log_jacobians(ala2_map):
    _, lmap, a, _ = ala2_map
    m, ld = lmap.forward(a)
    back, ld_back = lmap.inverse(m)
    np.testing.assert_allclose(_distances(back), _distances(a), atol=2e-5)  # float32 flow
    np.testing.assert_allclose(ld + ld_back, 0.0, atol=2e-3)
    assert np.abs(ld).max() > 1e-3  # it did move something


def test_learned_map_log_jacobian_matches_finite_volume_change(ala2_map):
    """ln|det J_M| against the flow's own Jacobian in float64 plus the representation's log-dets."""
    _, lmap, a, _ = ala2_map
    flow = lmap.flow.double()
    try:
        x = torch.as_tensor(a[:3])
        y, ld_to = lmap.transform.to_flow(x)
        sub = y[:, lmap.dims]
        jac = torch.stack([torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], s) for s in sub])
        ld_flow = torch.linalg.slogdet(jac)[1]
        y2 = y.clone()
        y2[:, lmap.dims] = flow(sub)[0]
        _, ld_from = lmap.transform.from_flow(y2)
        expected = (ld_to + ld_flow + ld_from).detach().numpy()
    finally:
        flow.float()
    np.testing.assert_allclose(lmap.forward(a[:3])[1], expected, atol=1e-3)


def test_identity_map_gives_zero_work_and_exact_estimates(ala2_map):
    """An untrained flow is the identity (zero-initialised output layers): W = 0 up to rounding."""
    from bgkit.energy import EnergyModel
    from bgkit.flows import build_flow
    from bgkit.free_energy.learned_map import map_works
    from bgkit.free_energy.states import in_state

    system, lmap, a, _ = ala2_map
    identity = LearnedMap(build_flow("nsf", len(lmap.dims), hidden=8, n_layers=2,
                                     periodic=lmap.flow.hparams.get("periodic", [])).double(),
                          lmap.transform, lmap.dims)
    beta = ALA2_STATES["C7eq_beta"]
    with EnergyModel(system, n_workers=1) as energy:
        works = map_works(identity, energy, lambda xyz, s: in_state(xyz, s, system), a, a, beta, beta)
    np.testing.assert_allclose(works.forward, 0.0, atol=1e-6)
    np.testing.assert_allclose(works.reverse, 0.0, atol=1e-6)


# ----------------------------------------------------------------------------- bgkit fep


def _direct_counts(xyz: np.ndarray, topology) -> tuple[int, int]:
    """C7eq/β and α_R frames from mdtraj's φ/ψ, boxes written out here in degrees."""
    import mdtraj

    traj = mdtraj.Trajectory(np.asarray(xyz, dtype=np.float32), topology)
    phi = np.degrees(mdtraj.compute_phi(traj)[1][:, 0])
    psi = np.degrees(mdtraj.compute_psi(traj)[1][:, 0])
    helix = (psi >= -120.0) & (psi < 50.0)
    return int(np.sum((phi < 0) & ~helix)), int(np.sum((phi < 0) & helix))


FEP_SMALL = ["fep", "--system", "ala2", "--from", "C7eq_beta", "--to", "alpha_R", "--n", 200, "--map-steps", 20,
             "--map-frames", 400, "--work-frames", 60, "--workers", 1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fep_command_end_to_end(tmp_path):
    from bgkit.md.dataset import load_dataset

    out = tmp_path / "fep"
    res = bgkit(*FEP_SMALL, "--out", out)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "fep.json").read_text())
    assert set(report["estimates"]) == {"counting", "reweighting", "tfep_exp_forward", "tfep_exp_reverse", "tfep_bar"}
    ds = load_dataset("ala2")
    n_a, n_b = _direct_counts(ds.xyz, ds.system.topology)
    counting = report["estimates"]["counting"]
    assert (counting["n_a"], counting["n_b"]) == (n_a, n_b)
    assert counting["dF_kT"] == pytest.approx(-math.log(n_b / n_a))
    assert counting["dF_kcal_mol"] == pytest.approx(counting["dF_kT"] * ds.system.kT / 4.184)
    assert report["reference"]["dataset"].endswith("md_rex")  # the shipped replica-exchange data judge
    works = np.load(out / "works.npz")
    assert works["w_forward"].shape == (60,) and works["w_reverse"].shape == (60,)
    import hashlib  # the data files are checksummed in fep.json

    assert report["sha256"]["works.npz"] == hashlib.sha256((out / "works.npz").read_bytes()).hexdigest()
    assert report["sha256"]["map.pt"] == hashlib.sha256((out / "map.pt").read_bytes()).hexdigest()
    bar = report["estimates"]["tfep_bar"]
    assert bar["n_a"] == 60 and bar["n_b"] == 60
    assert bar["dF_kT"] is None or math.isfinite(bar["dF_kT"])
    assert (out / "works.png").stat().st_size > 1000 and (out / "map.pt").is_file()
    assert "ΔF(C7eq_beta → alpha_R)" in res.stdout
    # the saved map is reused: same works without training
    again = tmp_path / "again"
    res = bgkit(*FEP_SMALL, "--methods", "tfep", "--map", out / "map.pt", "--out", again)
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(np.load(again / "works.npz")["w_forward"], works["w_forward"], rtol=1e-6)
    # the same command twice: refused, the first output kept
    res = bgkit(*FEP_SMALL, "--methods", "counting", "--out", again)
    assert_one_line_error(res, "exists")
    assert (again / "works.npz").is_file()


@pytest.mark.parametrize("args, fragments", [
    (["--from", "C7eq_beta", "--to", "nowhere"], ["unknown state 'nowhere'", "alpha_L"]),
    (["--from", "alpha_R", "--to", "alpha_R"], ["same state"]),
    (["--from", "C7eq_beta", "--to", "alpha_R", "--methods", "counting,magic"], ["unknown method", "magic"]),
    (["--from", "C7eq_beta", "--to", "alpha_R", "--map", "missing.pt"], ["missing.pt", "does not exist"]),
    (["--from", "C7eq_beta", "--to", "alpha_R", "--map-steps", "0"], ["--map-steps"]),
    (["--from", "C7eq_beta", "--to", "alpha_R", "--states", "missing.yaml"], ["missing.yaml"]),
])
def test_fep_bad_input(tmp_path, args, fragments):
    res = bgkit("fep", "--system", "ala2", *args, "--out", tmp_path / "o", cwd=tmp_path)
    assert_one_line_error(res, *fragments)
    assert not (tmp_path / "o").exists()


def test_fep_states_file_errors(tmp_path):
    never = tmp_path / "never.yaml"
    never.write_text("corner:\n  phi: [100, 101]\n  psi: [-10, -9]\n")
    res = bgkit("fep", "--system", "ala2", "--states", never, "--from", "C7eq_beta", "--to", "corner",
                "--methods", "counting", "--out", tmp_path / "o")
    assert_one_line_error(res, "corner", "never visited")
    other = tmp_path / "other.yaml"
    other.write_text("h:\n  phi3: [-100, -30]\n")
    res = bgkit("fep", "--system", "ala2", "--states", other, "--from", "C7eq_beta", "--to", "h", "--out", tmp_path / "o")
    assert_one_line_error(res, "phi3", "lacks")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    res = bgkit("fep", "--system", "ala2", "--from", "C7eq_beta", "--to", "alpha_R", "--methods", "counting",
                "--out", mine, "--force")
    assert res.returncode == 1 and (mine / "keep.txt").read_text() == "precious"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fep_example_runs_with_small_settings(tmp_path):
    import subprocess
    import sys

    from bgkit.md.dataset import load_dataset

    script = Path(__file__).resolve().parents[1] / "examples" / "fep_ala2.py"
    res = subprocess.run([sys.executable, str(script), "--n", "300", "--map-steps", "20", "--map-frames", "300",
                          "--work-frames", "40", "--workers", "1", "--figure", str(tmp_path / "f.png")],
                         capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                           "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    rows = {line.split("  ")[1].strip(): line for line in res.stdout.splitlines() if line.startswith("  ")}
    assert any(k.startswith("TFEP BAR") or "BAR" in k for k in rows), res.stdout
    plain = [line for line in res.stdout.splitlines() if "plain MD" in line][0]
    ds = load_dataset("ala2")
    n_a, n_b = _direct_counts(ds.xyz, ds.system.topology)
    assert float(plain.split()[2]) == pytest.approx(-math.log(n_b / n_a), abs=5e-4)
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_fep_refuses_a_proposal_as_map_before_any_work(tmp_path):
    from bgkit.systems import load_system

    proposal = load_system("ala2").folder / "proposal.pt"
    res = bgkit("fep", "--system", "ala2", "--from", "C7eq_beta", "--to", "alpha_R", "--map", proposal,
                "--out", tmp_path / "o", timeout=60)
    assert_one_line_error(res, "not a TFEP map")
    res = bgkit("fep", "--system", "ala4", "--from", "C7eq_beta", "--to", "alpha_R", "--out", tmp_path / "o")
    assert_one_line_error(res, "unknown state", "--states")  # three residues with φ and ψ: no named states


def test_work_histograms_count_the_infinite_works(tmp_path):
    from bgkit.plots import work_histograms

    w_f = np.array([0.1, 0.5, np.inf, 1.0, 2.0])
    w_r = np.array([-0.2, 0.3, np.inf, np.inf])
    report = {"estimates": {"tfep_bar": {"dF_kT": 0.4}}, "reference": {"dF_kT": None}}
    assert work_histograms(w_f, w_r, report, tmp_path / "w.png") == {"n_nonfinite_forward": 1, "n_nonfinite_reverse": 2}
    assert (tmp_path / "w.png").stat().st_size > 1000
    with pytest.raises(BgkitError, match="no finite works"):
        work_histograms(np.full(2, np.inf), np.full(2, np.inf), report, tmp_path / "x.png")


def test_a_mirrored_molecule_is_in_no_state():
    from bgkit.free_energy.states import in_state
    from bgkit.systems import load_system

    system = load_system("ala2")
    xyz = np.stack([system.positions, system.positions * np.array([-1.0, 1.0, 1.0])])  # a mirror image
    whole = State("anything", phi=(-math.pi, math.pi))
    assert in_state(xyz, whole, system).tolist() == [True, False]
