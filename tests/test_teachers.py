"""Teachers (CNF + flow matching) and reflow targets, against independent truth.

Flow-matching variants are compared with each other on one batch (W-CFM with ε → ∞ and FDM with
divergence weight 0 are CFM), the Hutchinson divergence with the exact one (autograd Jacobian
trace), the ODE likelihood with the closed form of a linear field, and reflow generation killed
mid-run with an uninterrupted run, byte for byte.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from _cli_helpers import REPO, assert_one_line_error, bgkit
from bgkit.flows import build_flow
from bgkit.train.matching import flow_matching_loss


def _random_cnf(dim: int = 5, periodic=(), seed: int = 0, **hp):
    torch.manual_seed(seed)
    cnf = build_flow("cnf", dim, hidden=32, n_blocks=1, periodic=list(periodic), **hp).double()
    for p in cnf.parameters():  # the output layer starts at zero: give the field some shape
        p.data.normal_(0, 0.3)
    return cnf


def _batch(cnf, n: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, cnf.dim, generator=g, dtype=torch.float64) * 0.7 + 0.3
    x0 = cnf.prior_sample(n, g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    return x0, x1, t


@pytest.mark.parametrize("periodic", [(), (1, 3)])
def test_wcfm_with_infinite_temperature_is_cfm(periodic) -> None:
    cnf = _random_cnf(periodic=periodic)
    x0, x1, t = _batch(cnf)
    cfm, _ = flow_matching_loss(cnf, x1, "cfm", x0=x0, t=t)
    w_inf, stats = flow_matching_loss(cnf, x1, "wcfm", wcfm_kappa=math.inf, x0=x0, t=t)
    w_one, _ = flow_matching_loss(cnf, x1, "wcfm", wcfm_kappa=1.0, x0=x0, t=t)
    assert torch.equal(cfm, w_inf) and stats["weight_ess"] == pytest.approx(1.0)
    assert not torch.isclose(cfm, w_one, rtol=1e-6)  # a finite temperature does reweight the pairs


@pytest.mark.parametrize("periodic", [(), (0, 2)])
def test_fdm_with_zero_divergence_weight_is_cfm(periodic) -> None:
    cnf = _random_cnf(periodic=periodic)
    x0, x1, t = _batch(cnf)
    cfm, _ = flow_matching_loss(cnf, x1, "cfm", x0=x0, t=t)
    fdm0, _ = flow_matching_loss(cnf, x1, "fdm", fdm_weights=(1.0, 0.0), x0=x0, t=t)
    fdm, stats = flow_matching_loss(cnf, x1, "fdm", fdm_weights=(1.0, 0.1), x0=x0, t=t)
    assert torch.equal(cfm, fdm0)
    assert stats["cdm"] > 0 and fdm.item() > cfm.item()


def test_fdm_residual_vanishes_for_the_conditional_field() -> None:
    """With one data point x1, v = u(x|x1) = (x1 - x)/(1 - t) solves the continuity equation: r = 0."""
    from bgkit.flows.cnf import CNF

    class Conditional(torch.nn.Module):
        def __init__(self, target):
            super().__init__()
            self.target = target

        def forward(self, t, x):
            return (self.target - x) / (1 - t.reshape(-1, 1))

    cnf = CNF(4, hidden=8, n_blocks=0).double()
    x1 = torch.tensor([[0.3, -1.0, 2.0, 0.5]], dtype=torch.float64).expand(256, 4)
    cnf.field = Conditional(x1[:1])
    x0, _, t = _batch(cnf, 256)
    _, stats = flow_matching_loss(cnf, x1, "fdm", fdm_weights=(1.0, 1.0), x0=x0, t=t * 0.9)
    assert stats["cfm"] < 1e-20 and stats["cdm"] < 1e-16
    cnf.field = Conditional(x1[:1] + 0.5)  # a wrong field leaves a residual
    _, stats = flow_matching_loss(cnf, x1, "fdm", fdm_weights=(1.0, 1.0), x0=x0, t=t * 0.9)
    assert stats["cdm"] > 1e-2


def test_otcfm_pairs_minimise_the_batch_transport_cost() -> None:
    """OT-CFM's loss equals CFM's on the batch re-paired by brute-force optimal assignment."""
    import itertools

    cnf = _random_cnf(dim=3, periodic=(2,))
    x0, x1, t = _batch(cnf, n=6)
    best = min(itertools.permutations(range(6)), key=lambda p: sum(
        float(((x1[list(p)][i] - x0[i]) ** 2)[:2].sum() + (torch.remainder(x1[p[i], 2] - x0[i, 2] + math.pi,
                                                                            2 * math.pi) - math.pi) ** 2)
        for i in range(6)))
    ot, _ = flow_matching_loss(cnf, x1, "otcfm", x0=x0, t=t)
    ref, _ = flow_matching_loss(cnf, x1[list(best)], "cfm", x0=x0, t=t)
    assert torch.allclose(ot, ref, rtol=1e-12)


def test_hutchinson_divergence_is_unbiased() -> None:
    cnf = _random_cnf(dim=6, periodic=(4,))
    x = torch.randn(8, 6, dtype=torch.float64)
    t = torch.tensor(0.37, dtype=torch.float64)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda xi: cnf.velocity(t, xi[None])[0], xi) for xi in x])
    exact_ref = jac.diagonal(dim1=-2, dim2=-1).sum(-1)
    _, exact = cnf.divergence(t, x)
    assert torch.allclose(exact, exact_ref, atol=1e-10)
    g = torch.Generator().manual_seed(0)
    probes = torch.randint(0, 2, (4000, 8, 6), generator=g).double() * 2 - 1
    with torch.no_grad():
        est = torch.stack([cnf.divergence(t, x, p)[1] for p in probes])
    se = est.std(0) / math.sqrt(len(probes))
    assert ((est.mean(0) - exact_ref).abs() < 4 * se + 1e-9).all()
    assert (est.std(0) > 0).all()  # a single probe is noisy (else the test proves nothing)


class _Linear(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, t, x):
        return x @ self.a.T


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_ode_likelihood_of_a_linear_field_is_analytic(divergence) -> None:
    """v(x) = A x maps N(0, I) to N(0, e^A e^Aᵀ): log q and the samples are known in closed form."""
    from torch.distributions import MultivariateNormal

    from bgkit.flows.cnf import CNF

    a = torch.tensor([[0.3, -0.5, 0.1], [0.4, -0.2, 0.0], [0.0, 0.2, 0.5]], dtype=torch.float64)
    cnf = CNF(3, divergence=divergence, atol=1e-9, rtol=1e-9).double()
    cnf.field = _Linear(a)
    expa = torch.linalg.matrix_exp(a)
    z = torch.randn(50, 3, dtype=torch.float64)
    with torch.no_grad():
        x, logdet = cnf(z)
        log_q = cnf.log_prob(x)
    truth = MultivariateNormal(torch.zeros(3, dtype=torch.float64), expa @ expa.T).log_prob(x)
    assert torch.allclose(x, z @ expa.T, atol=1e-7)
    if divergence == "exact":
        assert torch.allclose(logdet, torch.trace(a).expand(50), atol=1e-7)
        assert torch.allclose(log_q, truth, atol=1e-6)
    else:  # one probe per sample: right on average, noisy per sample
        se = logdet.std() / math.sqrt(50)
        assert abs(logdet.mean() - torch.trace(a)) < 4 * se and logdet.std() > 0.05
        assert abs((log_q - truth).mean()) < 4 * (log_q - truth).std() / math.sqrt(50)


@pytest.mark.slow
def test_cnf_is_invertible_and_its_logdet_is_the_jacobian() -> None:
    cnf = _random_cnf(dim=4, periodic=(3,), atol=1e-8, rtol=1e-8)
    z = cnf.prior_sample(6, torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        x, logdet = cnf(z)
        z_back, logdet_inv = cnf.inverse(x)
    diff = z_back - z
    diff[:, 3] = torch.remainder(diff[:, 3] + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-6 and (logdet + logdet_inv).abs().max() < 1e-6  # dopri5 at tol 1e-8
    assert (x[:, 3].abs() <= math.pi).all()
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda zz: cnf(zz[None])[0][0], z[i])
        assert torch.logdet(jac).item() == pytest.approx(logdet[i].item(), abs=1e-6)


# ------------------------------------------------------------------ training, reflow, streaming
@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A briefly trained ala2 teacher in internal coordinates (CFM), as a checkpoint file."""
    from bgkit.train.molecular import train_proposal

    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    train_proposal("ala2", "cnf", "cfm", path, coords="internal", max_frames=2000, progress=False,
                   hparams={"hidden": 32, "n_blocks": 1},
                   config_overrides={"steps": 30, "batch_size": 128, "warmup_steps": 3, "val_every": 10,
                                     "ckpt_every": 10, "lr": 2e-3})
    return path


def test_wcfm_training_history_reports_pair_weight_ess(tmp_path) -> None:
    """W-CFM's pair-weight ESS/B reaches the checkpoint's history (finite temperature: below 1)."""
    from bgkit.checkpoint import load_checkpoint
    from bgkit.train.molecular import train_proposal

    path = tmp_path / "w.pt"
    train_proposal("ala2", "cnf", "wcfm", path, coords="internal", max_frames=500, progress=False,
                   hparams={"hidden": 16, "n_blocks": 1},
                   config_overrides={"steps": 4, "batch_size": 64, "warmup_steps": 1, "val_every": 2,
                                     "ckpt_every": 2, "wcfm_kappa": 0.2})
    history = load_checkpoint(path)["history"]
    assert len(history) == 2 and all(0.0 < h["weight_ess"] < 1.0 for h in history)


def test_teacher_is_a_proposal(teacher) -> None:
    """A teacher samples molecules with log q consistent with its own log_prob (the ODE both ways)."""
    from bgkit.proposal import Proposal

    proposal = Proposal.load(teacher, system="ala2")
    assert proposal.info["arch"] == "cnf" and proposal.info["training"]["objective"] == "cfm"
    xyz, log_q = proposal.sample(16, generator=torch.Generator().manual_seed(0))
    assert xyz.shape == (16, 22, 3) and np.isfinite(log_q).all()
    assert np.allclose(proposal.log_prob(xyz), log_q, atol=2e-2)


def _pairs(folder):
    from bgkit.train.reflow import open_reflow

    t = open_reflow(folder)
    return np.concatenate([c for c in t.train.chunks], axis=1), t.val


@pytest.mark.slow
def test_reflow_killed_and_resumed_equals_uninterrupted(teacher, tmp_path) -> None:
    """SIGKILL during generation, then the same command: the same pairs, byte for byte, none lost or repeated."""
    import subprocess
    import sys

    args = ["targets", "reflow", "--teacher", teacher, "--n", 3000, "--chunk-size", 500, "--n-val", 200,
            "--steps", 8, "--batch-size", 200]
    full = bgkit(*args, "--out", tmp_path / "full")
    assert full.returncode == 0, full.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bgkit.cli", *map(str, args), "--out", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**__import__("os").environ,
                                                                                        "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("chunk_*.npy"))) < 2:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = len(list(out.glob("chunk_*.npy")))
    assert 2 <= done < 6, done  # killed mid-run
    with pytest.raises(Exception, match="incomplete"):
        _pairs(out)
    again = bgkit(*args, "--out", out)
    assert again.returncode == 0, again.stderr
    (a, va), (b, vb) = _pairs(tmp_path / "full"), _pairs(out)
    assert a.shape == (2, 3000, 60) and np.array_equal(a, b) and np.array_equal(va[1], vb[1])
    assert len(np.unique(a[0], axis=0)) == 3000  # every prior draw distinct: nothing duplicated
    assert bgkit(*args, "--out", out).returncode == 0  # the same command on a complete folder changes nothing
    assert np.array_equal(_pairs(out)[0], a)


@pytest.mark.slow
def test_reflow_shards_and_extends(teacher, tmp_path) -> None:
    from bgkit.train.reflow import make_reflow_targets

    kw = dict(chunk_size=400, n_val=100, steps=6, batch_size=100, progress=False)
    make_reflow_targets(teacher, tmp_path / "one", 800, **kw)
    make_reflow_targets(teacher, tmp_path / "one", 1200, **kw)  # extends by a chunk
    make_reflow_targets(teacher, tmp_path / "two", 1200, workers=2, **kw)
    a, b = _pairs(tmp_path / "one")[0], _pairs(tmp_path / "two")[0]
    assert a.shape[1] == 1200 and np.allclose(a, b, atol=1e-5)
    assert np.array_equal(a[0], b[0])  # prior draws are a function of (seed, chunk) alone


def test_reflow_pairs_stream_the_rows_asked_for(teacher, tmp_path) -> None:
    from bgkit.train.reflow import make_reflow_targets, open_reflow

    make_reflow_targets(teacher, tmp_path / "rf", 900, chunk_size=300, n_val=50, steps=4, batch_size=300,
                        progress=False)
    t = open_reflow(tmp_path / "rf")
    full = np.concatenate(t.train.chunks, axis=1)
    idx = torch.tensor([899, 0, 301, 300, 5, 601, 5])
    x0, x1 = t.train.take(idx)
    assert np.array_equal(x0.numpy(), full[0, idx.numpy()]) and np.array_equal(x1.numpy(), full[1, idx.numpy()])


@pytest.mark.slow
def test_train_regflow_on_reflow_targets_and_cli_errors(teacher, tmp_path) -> None:
    rf = tmp_path / "rf"
    made = bgkit("targets", "reflow", "--teacher", teacher, "--n", 1024, "--chunk-size", 512, "--n-val", 128,
                 "--steps", 4, "--out", rf)
    assert made.returncode == 0, made.stderr
    student = tmp_path / "student.pt"
    res = bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "regflow", "--targets", rf,
                "--steps", 6, "--batch-size", 128, "--hparams", '{"hidden": 16, "n_layers": 2}', "--out", student)
    assert res.returncode == 0, res.stderr
    ckpt = torch.load(student, weights_only=True)
    rec = ckpt["extra"]["training"]["targets_provenance"]
    assert rec["kind"] == "reflow" and rec["n"] == 1024 and rec["teacher_sha256"]
    assert ckpt["extra"]["coords"]["kind"] == "internal" and ckpt["history"][-1]["val_loss"] > 0
    assert_one_line_error(bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "regflow", "--targets",
                                rf, "--steps", 2, "--logdet-weight", 1, "--out", tmp_path / "s1.pt"),
                          "bgkit targets reflow --logdet")
    assert_one_line_error(bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "mle", "--coords",
                                "internal", "--steps", 2, "--logdet-weight", 1, "--out", tmp_path / "s1.pt"),
                          "--logdet-weight applies to --objective regflow")
    rf_ld = tmp_path / "rf_ld"
    assert bgkit("targets", "reflow", "--teacher", teacher, "--n", 256, "--chunk-size", 128, "--n-val", 64,
                 "--steps", 4, "--logdet", "--out", rf_ld).returncode == 0
    res = bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "regflow", "--targets", rf_ld,
                "--steps", 4, "--batch-size", 64, "--hparams", '{"hidden": 16, "n_layers": 2}', "--logdet-weight", 0.1,
                "--out", tmp_path / "student_ld.pt")
    assert res.returncode == 0, res.stderr
    assert torch.load(tmp_path / "student_ld.pt", weights_only=True)["config"]["logdet_weight"] == 0.1
    # other settings into the same folder: refused, the folder untouched
    before = sorted(p.name for p in rf.iterdir())
    assert_one_line_error(bgkit("targets", "reflow", "--teacher", teacher, "--n", 1024, "--chunk-size", 256,
                                "--out", rf), "other settings", "chunk_size")
    assert sorted(p.name for p in rf.iterdir()) == before
    (rf / "chunk_000001.npy").unlink()
    assert_one_line_error(bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "regflow", "--targets",
                                rf, "--steps", 2, "--out", tmp_path / "s2.pt"), "incomplete")
    assert_one_line_error(bgkit("train", "--system", "ala2", "--arch", "nsf", "--objective", "regflow", "--targets",
                                tmp_path, "--steps", 2, "--out", tmp_path / "s3.pt"), "not a reflow targets folder")
    assert_one_line_error(bgkit("targets", "reflow", "--teacher", student, "--n", 10, "--out", tmp_path / "x",
                                "--method", "leapfrog"), "unknown --method")
    assert_one_line_error(bgkit("teacher", "train", "--system", "ala2", "--steps", 2, "--out", tmp_path / "t.pt",
                                "--hparams", '{"depth": 3}'), "depth")


def test_reflow_logdets_are_the_jacobians_of_the_teacher_map(teacher, tmp_path) -> None:
    """--logdet stores, per pair, log|det dx1/dx0| of the teacher's map: checked against the autograd Jacobian of
    the same RK4 solve (float64), and a folder with log-dets streams them with the pairs."""
    from bgkit.proposal import Proposal
    from bgkit.train.reflow import make_reflow_targets, open_reflow

    make_reflow_targets(teacher, tmp_path / "rf", 60, chunk_size=30, n_val=10, steps=6, batch_size=20,
                        progress=False, logdet=True)
    t = open_reflow(tmp_path / "rf")
    assert len(t.val) == 3 and t.val[2].shape == (10,)
    x0, x1, ld = t.train.take(torch.tensor([31, 2, 59]))
    assert ld.shape == (3,) and torch.isfinite(ld).all()
    cnf = Proposal.load(teacher).flow.double()
    for i in range(3):
        z = x0[i].double()
        jac = torch.autograd.functional.jacobian(
            lambda zz: cnf.integrate(zz[None], 0.0, 1.0, logdet=False, method="rk4", steps=6)[0][0], z)
        assert torch.slogdet(jac).logabsdet.item() == pytest.approx(ld[i].item(), abs=2e-3)
    # a chunk whose log-dets were written but not its pairs (killed in between) is remade, identically
    before = t.train.take(torch.arange(60))
    (tmp_path / "rf" / "chunk_000001.npy").unlink()
    make_reflow_targets(teacher, tmp_path / "rf", 60, chunk_size=30, n_val=10, steps=6, batch_size=20,
                        progress=False, logdet=True)
    after = open_reflow(tmp_path / "rf").train.take(torch.arange(60))
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    (tmp_path / "rf" / "chunk_000000.logdet.npy").unlink()  # a lost log-det file: the same command remakes it
    make_reflow_targets(teacher, tmp_path / "rf", 60, chunk_size=30, n_val=10, steps=6, batch_size=20,
                        progress=False, logdet=True)
    assert torch.equal(open_reflow(tmp_path / "rf").train.take(torch.arange(60))[2], before[2])
    # a folder without log-dets streams pairs only
    make_reflow_targets(teacher, tmp_path / "plain", 30, chunk_size=30, n_val=10, steps=6, progress=False)
    assert len(open_reflow(tmp_path / "plain").train.take(torch.tensor([0]))) == 2


def test_regflow_logdet_term_is_the_squared_logdet_error() -> None:
    from bgkit import BgkitError
    from bgkit.train.regflow import regflow_loss

    torch.manual_seed(0)
    flow = build_flow("nsf", 4, hidden=8, n_layers=2).double()
    with torch.no_grad():  # leave the identity
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x0, x1, ld = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64), torch.randn(16).double()
    plain, s0 = regflow_loss(flow, x0, x1, reg=None)
    with_ld, s1 = regflow_loss(flow, x0, x1, reg=None, logdet_target=ld, logdet_weight=0.5)
    _, logdet = flow(x0)
    expected = 0.5 * (logdet - ld).pow(2).mean()
    assert (with_ld - plain).item() == pytest.approx(expected.item(), rel=1e-10) and expected > 1e-3
    assert s1["logdet_rmse"] == pytest.approx(expected.item() ** 0.5 / 0.5 ** 0.5, rel=1e-10)
    unweighted, _ = regflow_loss(flow, x0, x1, reg=None, logdet_target=ld, logdet_weight=0.0)
    assert unweighted.item() == plain.item()
    with pytest.raises(BgkitError, match="--logdet"):
        regflow_loss(flow, x0, x1, reg=None, logdet_weight=1.0)


def test_hutchinson_reflow_logdets_are_unbiased_and_reproducible(teacher, tmp_path) -> None:
    """--logdet-divergence hutchinson: the same pairs as exact, log-dets right on average, noisy per pair, and
    the same numbers when a chunk is remade (its probes come from the chunk's seed, not the global RNG)."""
    from bgkit import BgkitError
    from bgkit.train.reflow import make_reflow_targets, open_reflow

    kw = dict(chunk_size=100, n_val=10, steps=6, batch_size=50, progress=False, logdet=True)
    make_reflow_targets(teacher, tmp_path / "exact", 200, **kw)
    make_reflow_targets(teacher, tmp_path / "hutch", 200, logdet_divergence="hutchinson", **kw)
    x0e, x1e, lde = open_reflow(tmp_path / "exact").train.take(torch.arange(200))
    x0h, x1h, ldh = open_reflow(tmp_path / "hutch").train.take(torch.arange(200))
    assert torch.equal(x0e, x0h) and torch.allclose(x1e, x1h, atol=1e-5)
    diff = (ldh - lde).double()
    assert diff.std() > 0.01 and abs(diff.mean()) < 4 * diff.std() / 200 ** 0.5
    torch.manual_seed(123)  # the global RNG must not matter
    (tmp_path / "hutch" / "chunk_000001.npy").unlink()
    make_reflow_targets(teacher, tmp_path / "hutch", 200, logdet_divergence="hutchinson", **kw)
    assert torch.equal(open_reflow(tmp_path / "hutch").train.take(torch.arange(200))[2], ldh)
    with pytest.raises(BgkitError, match="other settings"):  # exact and Hutchinson log-dets never mix in a folder
        make_reflow_targets(teacher, tmp_path / "hutch", 200, **kw)
