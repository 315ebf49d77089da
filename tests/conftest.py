"""Shared fixtures: the shipped systems and independent OpenMM reference computations."""
from __future__ import annotations

import numpy as np
import pytest

# The systems table of README.md ("Systems"), written out here independently of systems/*/system.yaml,
# so that the tests compare bgkit against OpenMM set up by hand.
DESIGN_TABLE = {
    "ala2": dict(atoms=22, ff=["amber99sbildn.xml", "amber99_obc.xml"], method="NoCutoff", cutoff=None, T=300.0),
    "ala3": dict(atoms=33, ff=["amber14-all.xml", "implicit/obc1.xml"], method="CutoffNonPeriodic", cutoff=2.0, T=310.0),
    "ala4": dict(atoms=42, ff=["amber99sbildn.xml", "amber99_obc.xml"], method="NoCutoff", cutoff=None, T=300.0),
}


def direct_openmm(name: str, xyz: np.ndarray, platform: str = "Reference"):
    """Energies (kJ/mol) and forces (kJ/mol/nm) from one hand-made OpenMM Context."""
    import openmm
    from openmm import app, unit

    from bgkit.systems import systems_dir

    row = DESIGN_TABLE[name]
    pdb = app.PDBFile(str(systems_dir() / name / f"{name}.pdb"))
    kwargs = dict(nonbondedMethod=getattr(app, row["method"]), constraints=None)
    if row["cutoff"]:
        kwargs["nonbondedCutoff"] = row["cutoff"] * unit.nanometer
    system = app.ForceField(*row["ff"]).createSystem(pdb.topology, **kwargs)
    props = {"Threads": "1"} if platform == "CPU" else {}
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform), props)
    energies, forces = [], []
    for frame in xyz:
        ctx.setPositions(frame)
        state = ctx.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return np.array(energies), np.array(forces)


def perturbed_frames(system, n: int, sigma: float = 0.005, seed: int = 0) -> np.ndarray:
    """n frames near the system's reference structure, float64 [n, N, 3] nm."""
    rng = np.random.default_rng(seed)
    return system.positions[None] + sigma * rng.standard_normal((n, system.n_atoms, 3))


@pytest.fixture(scope="session", params=["ala2", "ala3", "ala4"])
def system(request):
    from bgkit.systems import load_system

    return load_system(request.param)


def wait_for_chunks(progress, n: int, timeout: float = 120.0) -> None:
    """Poll a simulation's progress.json until ``n`` chunks are done (or ``timeout`` seconds pass)."""
    import json
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads(progress.read_text())["chunks_done"] >= n:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
