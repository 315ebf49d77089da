"""The reference MD shipped in systems/<name>/md: readable, consistent with its system, energies reproducible."""
from __future__ import annotations

import json
from pathlib import Path

import mdtraj
import numpy as np
import pytest

from bgkit.md.dataset import load_dataset
from bgkit.energy import EnergyModel
from bgkit.systems import load_system

SHIPPED = ["ala2", "ala3", "ala4", "ala2ff96"]
#: every dataset folder shipped beside a system's md/: replica exchange (ala2, ala2ff96), densely saved plain MD (ala4)
EXTRA = [str(Path(__file__).resolve().parents[1] / "systems" / d) for d in ("ala2/md_rex", "ala4/md_dense", "ala2ff96/md_rex")]


@pytest.fixture(scope="module", params=SHIPPED + EXTRA)
def dataset(request):
    return load_dataset(request.param)


def test_dataset_matches_its_system(dataset):
    system = load_system(dataset.name)
    assert dataset.system.topology_hash == system.topology_hash
    assert dataset.xyz.shape == (dataset.n_frames, system.n_atoms, 3)
    assert dataset.n_frames >= 1000
    # every completed chunk holds the frames its interval promises, times strictly increasing per replica
    s = dataset.meta["settings"]
    per_chunk = round(s["chunk_ps"] / s["save_every_ps"])
    for rep in dataset.replicas:
        assert json.loads((rep.folder / "progress.json").read_text())["frames"] == per_chunk * len(rep.chunks)
        t = dataset.times_ps[dataset.replica_index == rep.index]
        np.testing.assert_allclose(np.diff(t), s["save_every_ps"], atol=1e-3)
    assert np.isfinite(dataset.energies_kt).all()
    # the XTC files are plain mdtraj-readable trajectories with the system topology
    top = system.pdb_path or dataset.folder / "topology.pdb"  # a prmtop system (ala2ff96) has no PDB of its own
    first = mdtraj.load(str(dataset.replicas[0].chunks[0]), top=str(top))
    assert first.n_atoms == system.n_atoms


def test_stored_energies_match_energy_model(dataset):
    system = load_system(dataset.name)
    idx = np.linspace(0, dataset.n_frames - 1, 200).round().astype(int)
    with EnergyModel(system, n_workers=1) as model:
        recomputed = model(dataset.xyz[idx].astype(np.float64))
    np.testing.assert_allclose(recomputed, dataset.energies_kt[idx], rtol=1e-6, atol=1e-6)


def test_provenance_records_the_command(dataset):
    prov = dataset.meta["provenance"]
    assert prov and all("bgkit simulate" in p["command"] for p in prov)
    assert dataset.meta["integrator"] == "LangevinMiddleIntegrator"
    assert dataset.meta["settings"]["step_fs"] == 1.0
    expected_friction = {"ala2": 1.0, "ala3": 0.3, "ala4": 0.3, "ala2ff96": 1.0}[dataset.name]
    assert dataset.meta["settings"]["friction_per_ps"] == expected_friction
