"""EnergyModel against OpenMM set up by hand, autograd, finite differences and bad input."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bgkit import BgkitError
from bgkit.energy import EnergyModel, EnergyWorkerError
from bgkit.systems import load_system
from conftest import DESIGN_TABLE, direct_openmm, perturbed_frames


@pytest.fixture(scope="module")
def models():
    opened: dict[str, EnergyModel] = {}

    def get(name: str, platform: str | None = None) -> EnergyModel:
        if (name, platform) not in opened:
            opened[name, platform] = EnergyModel(name, n_workers=2, chunk_size=8, platform=platform)
        return opened[name, platform]

    yield get
    for m in opened.values():
        m.close()


def test_energies_and_forces_match_direct_openmm(system, models):
    """Double precision (Reference platform) in both: agreement to 1e-6 relative."""
    assert models(system.name).platform == ("CPU" if system.name == "ala3" else "Reference")
    model = models(system.name, "Reference")
    xyz = perturbed_frames(system, 24)
    batch = model.evaluate(xyz, forces=True)
    e_ref, f_ref = direct_openmm(system.name, xyz, platform=model.platform)
    kT = 8.314462618e-3 * DESIGN_TABLE[system.name]["T"]
    np.testing.assert_allclose(batch.energy_kt, e_ref / kT, rtol=1e-6, atol=0)
    rel = np.linalg.norm(batch.forces_kt_per_nm - f_ref / kT, axis=(1, 2)) / np.linalg.norm(f_ref / kT, axis=(1, 2))
    assert rel.max() <= 1e-6
    assert batch.n_invalid == 0 and batch.energy_kt.dtype == np.float64


def test_ala3_cpu_platform_agrees_with_reference(models):
    """ala3's default CPU platform computes nonbonded terms in single precision (and reorders atoms between
    frames), so two CPU Contexts differ by ~1e-6 relative: it is checked against double precision at 1e-4 kT."""
    s = load_system("ala3")
    xyz = perturbed_frames(s, 24)
    e_ref, f_ref = direct_openmm("ala3", xyz, platform="Reference")
    batch = models("ala3").evaluate(xyz, forces=True)
    np.testing.assert_allclose(batch.energy_kt, e_ref / s.kT, rtol=1e-6, atol=1e-4)
    rel = np.linalg.norm(batch.forces_kt_per_nm - f_ref / s.kT, axis=(1, 2)) / np.linalg.norm(f_ref / s.kT, axis=(1, 2))
    assert rel.max() <= 1e-5


def test_forces_are_minus_autograd_gradient(system, models):
    model = models(system.name)
    xyz = torch.tensor(perturbed_frames(system, 6, seed=1), requires_grad=True)
    u = model.torch_energy(xyz)
    assert u.shape == (6, 1) and u.dtype == torch.float64
    (grad,) = torch.autograd.grad(u.sum(), xyz)
    forces = model.evaluate(xyz.detach().numpy(), forces=True).forces_kt_per_nm
    np.testing.assert_allclose(-grad.numpy(), forces, rtol=1e-12, atol=1e-12)
    # flat [B, 3N] input and a weighted sum go through the same Function
    flat = xyz.detach().reshape(6, -1).requires_grad_(True)
    w = torch.arange(1.0, 7.0, dtype=torch.float64)
    (g2,) = torch.autograd.grad((model.torch_energy(flat).squeeze(-1) * w).sum(), flat)
    np.testing.assert_allclose(-g2.numpy(), forces.reshape(6, -1) * w[:, None].numpy(), rtol=1e-12)


def test_forces_match_finite_differences(models):
    """Independent of OpenMM's forces: central differences of the energy (Reference, float64)."""
    s = load_system("ala2")
    model = models("ala2")
    x0 = perturbed_frames(s, 1, seed=3)
    forces = model.evaluate(x0, forces=True).forces_kt_per_nm[0]
    h = 1e-5
    rng = np.random.default_rng(0)
    for atom, dim in zip(rng.integers(0, s.n_atoms, 6), rng.integers(0, 3, 6)):
        plus, minus = x0.copy(), x0.copy()
        plus[0, atom, dim] += h
        minus[0, atom, dim] -= h
        fd = -(model(plus)[0] - model(minus)[0]) / (2 * h)
        assert fd == pytest.approx(forces[atom, dim], rel=1e-5, abs=1e-4)


def test_invalid_frames_get_inf_and_are_counted(models):
    s = load_system("ala2")
    model = models("ala2")
    xyz = perturbed_frames(s, 6)
    good = model(xyz)
    xyz[1, 3, 0] = np.nan
    xyz[2, 7] = xyz[2, 6]  # two atoms on top of each other
    xyz[3, 12] = xyz[3, 13] + 1e-3  # 0.001 nm apart
    xyz[4, 0, 2] = np.inf
    batch = model.evaluate(xyz, forces=True)
    assert np.isposinf(batch.energy_kt[[1, 2, 3, 4]]).all()
    np.testing.assert_array_equal(batch.energy_kt[[0, 5]], good[[0, 5]])
    assert (batch.n_nonfinite_positions, batch.n_overlapping) == (2, 2)
    assert batch.n_invalid == 4
    assert not np.isnan(batch.forces_kt_per_nm).any()
    assert (batch.forces_kt_per_nm[[1, 2, 3, 4]] == 0).all()


def test_float32_input(models):
    s = load_system("ala2")
    model = models("ala2")
    xyz32 = perturbed_frames(s, 8).astype(np.float32)
    e32 = model(xyz32)
    assert e32.dtype == np.float64
    e_ref, _ = direct_openmm("ala2", xyz32.astype(np.float64))
    np.testing.assert_allclose(e32, e_ref / s.kT, rtol=1e-6)
    t = model.torch_energy(torch.tensor(xyz32))
    assert t.dtype == torch.float32 and t.shape == (8, 1)


@pytest.mark.parametrize("bad", [np.zeros((4, 21, 3)), np.zeros((4, 22, 2)), np.zeros((22, 3)), np.zeros((4, 65)),
                                 np.zeros((4, 22, 3), dtype=np.int64)])
def test_wrong_shape_or_dtype_is_a_clear_error(models, bad):
    with pytest.raises(BgkitError, match="positions"):
        models("ala2")(bad)


def test_empty_batch(models):
    out = models("ala2")(np.zeros((0, 22, 3)))
    assert out.shape == (0,)


def test_custom_system_folder(tmp_path):
    """A user folder: own PDB, one force-field XML from the folder and one bundled with OpenMM."""
    import shutil

    from openmm import app

    s2 = load_system("ala2")
    folder = tmp_path / "mydipeptide"
    folder.mkdir()
    shutil.copy(s2.pdb_path, folder / "dipeptide.pdb")
    shutil.copy(os.path.join(os.path.dirname(app.__file__), "data", "amber14", "protein.ff14SB.xml"), folder / "my_ff.xml")
    (folder / "system.yaml").write_text(textwrap.dedent("""\
        name: mydipeptide
        topology: dipeptide.pdb
        forcefield: [my_ff.xml, implicit/obc2.xml]
        nonbonded_method: CutoffNonPeriodic
        nonbonded_cutoff_nm: 1.5
        temperature_K: 350
        """))
    custom = load_system(str(folder))
    assert custom.forcefield_files()[0] == str(folder / "my_ff.xml")
    xyz = perturbed_frames(s2, 5)
    with EnergyModel(str(folder), n_workers=1) as model:
        e = model(xyz)
    import openmm
    from openmm import unit

    pdb = app.PDBFile(str(folder / "dipeptide.pdb"))
    ff = app.ForceField(str(folder / "my_ff.xml"), "implicit/obc2.xml")
    omm = ff.createSystem(pdb.topology, nonbondedMethod=app.CutoffNonPeriodic, nonbondedCutoff=1.5 * unit.nanometer)
    ctx = openmm.Context(omm, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(model.platform),
                         {"Threads": "1"} if model.platform == "CPU" else {})
    ref = []
    for frame in xyz:
        ctx.setPositions(frame)
        ref.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    kT = 8.314462618e-3 * 350
    np.testing.assert_allclose(e, np.array(ref) / kT, rtol=1e-6)
    with EnergyModel("ala2", n_workers=1) as ala2:
        assert np.abs(e - ala2(xyz)).min() > 1.0  # a different force field and temperature, not ala2 again


@pytest.mark.timeout(120)
def test_worker_crash_mid_batch_recovers():
    s = load_system("ala2")
    xyz = perturbed_frames(s, 40)
    with EnergyModel("ala2", n_workers=2, chunk_size=5) as model:
        expected = model(xyz)
        old = set(model.pids)
        model._crash_next = 2  # the next chunk's worker exits after 2 frames
        np.testing.assert_array_equal(model(xyz), expected)
        assert len(set(model.pids) - old) == 1  # exactly one worker was replaced
        # a worker killed between calls is replaced as well
        os.kill(model.pids[0], signal.SIGKILL)
        np.testing.assert_array_equal(model(xyz), expected)


@pytest.mark.timeout(120)
def test_worker_that_keeps_crashing_gives_clear_error():
    s = load_system("ala2")
    xyz = perturbed_frames(s, 10)
    with EnergyModel("ala2", n_workers=1, chunk_size=5) as model:
        model._crash_next, model._crash_sticky = 1, True
        with pytest.raises(EnergyWorkerError, match="died twice"):
            model(xyz)
        model._crash_next, model._crash_sticky = None, False
        assert model(xyz).shape == (10,)  # the pool restarts on the next call


@pytest.mark.timeout(120)
def test_workers_shut_down_on_close_and_at_exit():
    model = EnergyModel("ala2", n_workers=2)
    procs = [w.process for w in model._workers]
    model.close()
    assert not any(p.is_alive() for p in procs)
    script = textwrap.dedent("""\
        from bgkit.energy import EnergyModel
        if __name__ == "__main__":
            m = EnergyModel("ala2", n_workers=2)
            print(" ".join(map(str, m.pids)), flush=True)
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for pid in map(int, out.stdout.split()):
        alive = os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read()
        assert not alive, f"worker {pid} outlived its parent"


@pytest.mark.timeout(120)
def test_keyboard_interrupt_stops_workers_without_hang():
    script = textwrap.dedent("""\
        import os, signal, threading, numpy as np
        from bgkit.energy import EnergyModel
        if __name__ == "__main__":
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a background parent may ignore SIGINT
            m = EnergyModel("ala2", n_workers=2, chunk_size=64)
            pids = m.pids
            x = np.repeat(m.system.positions[None], 200000, axis=0)
            threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            try:
                m(x)
            except KeyboardInterrupt:
                print("interrupted", " ".join(map(str, pids)), flush=True)
            print("again", m(x[:4]).shape, flush=True)
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("interrupted") and lines[1] == "again (4,)"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("n_workers", [1, 2])
def test_large_force_batches_finish_and_equal_small_batches(n_workers):
    """4 096 frames with forces in one call (chunks of 1 024, two jobs in flight per worker, ~0.5 MB each way)
    used to deadlock on the pipe; the result must equal the same frames in batches of 256."""
    s = load_system("ala2")
    xyz = perturbed_frames(s, 4096, seed=3)
    with EnergyModel("ala2", n_workers=n_workers) as model:
        big = model.evaluate(xyz, forces=True)
        parts = [model.evaluate(xyz[i:i + 256], forces=True) for i in range(0, len(xyz), 256)]
    np.testing.assert_array_equal(big.energy_kt, np.concatenate([p.energy_kt for p in parts]))
    np.testing.assert_array_equal(big.forces_kt_per_nm, np.concatenate([p.forces_kt_per_nm for p in parts]))
    assert np.isfinite(big.energy_kt).all()


def test_more_workers_than_cores_are_capped_with_a_warning():
    from bgkit.energy import default_n_workers
    with pytest.warns(UserWarning, match="cores available"):
        model = EnergyModel("ala2", n_workers=default_n_workers() + 50)
    with model:
        assert model.n_workers == default_n_workers() and len(model.pids) == default_n_workers()
