"""OT targets (exactness, blocking), targets files, provenance and atomic writes."""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from bgkit import BgkitError
from bgkit.provenance import atomic_save, atomic_write, atomic_write_json, provenance
from bgkit.train.targets import load_targets, ot_assignment, ot_pairs, save_targets


def _cost(x0: np.ndarray, x1: np.ndarray) -> float:
    return float(((x0 - x1) ** 2).sum())


def test_ot_assignment_equals_brute_force() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        x0, x1 = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)) * 2 + 0.5
        costs = {p: _cost(x0, x1[list(p)]) for p in itertools.permutations(range(6))}  # all 720
        best = min(costs, key=costs.get)
        perm = ot_assignment(x0, x1)
        assert sorted(perm.tolist()) == list(range(6))
        assert _cost(x0, x1[perm]) == pytest.approx(costs[best], rel=1e-12)
        assert tuple(perm.tolist()) == best  # unique optimum for continuous random data


def test_ot_assignment_falls_back_to_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    import ot

    def not_a_permutation(a, b, M, **kw):  # the independent coupling: not a vertex
        return np.outer(a, b), {"warning": None}

    monkeypatch.setattr(ot, "emd", not_a_permutation)
    rng = np.random.default_rng(2)
    x0, x1 = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    perm = ot_assignment(x0, x1)
    rows, cols = linear_sum_assignment(((x0[:, None] - x1[None]) ** 2).sum(-1))
    assert np.array_equal(perm, cols[np.argsort(rows)])


def test_ot_pairs_blocks_cover_every_frame_once_and_are_optimal() -> None:
    rng = np.random.default_rng(3)
    x1 = rng.standard_normal((103, 5)).astype(np.float32) + 1.0
    x0, x1p, index = ot_pairs(x1, seed=7, block_size=20, return_index=True)
    assert x0.shape == x1p.shape == (103, 5) and x0.dtype == np.float32
    assert np.array_equal(np.sort(index), np.arange(103))  # every frame exactly once
    assert np.array_equal(x1p, x1[index])
    # 6 blocks of 17-18 frames, each an exact OT problem
    start = 0
    for size in [len(b) for b in np.array_split(np.arange(103), 6)]:
        sl = slice(start, start + size)
        c = ((x0[sl, None].astype(np.float64) - x1p[None, sl]) ** 2).sum(-1)
        r, k = linear_sum_assignment(c)
        assert _cost(x0[sl].astype(np.float64), x1p[sl].astype(np.float64)) == pytest.approx(c[r, k].sum(), rel=1e-9)
        start += size
    # deterministic in the seed, different across seeds
    again = ot_pairs(x1, seed=7, block_size=20, return_index=True)
    assert all(np.array_equal(a, b) for a, b in zip((x0, x1p, index), again))
    assert not np.array_equal(ot_pairs(x1, seed=8, block_size=20)[0], x0)


def test_ot_pairs_prior_draws_are_standard_normal_and_ot_beats_random() -> None:
    rng = np.random.default_rng(4)
    x1 = rng.standard_normal((400, 2)) * 0.5 + 3.0
    x0, x1p = ot_pairs(x1, seed=0, block_size=400)
    assert abs(x0.mean()) < 0.1 and abs(x0.std() - 1) < 0.1
    assert _cost(x0, x1p) < _cost(x0, x1[rng.permutation(400)])


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((0, 3)), np.array([[0.0, np.nan]])])
def test_ot_pairs_rejects_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(BgkitError):
        ot_pairs(bad, seed=0)
    with pytest.raises(BgkitError):
        ot_pairs(np.zeros((4, 2)), seed=0, block_size=0)


@pytest.mark.parametrize("kind", ["ot", "reflow"])
def test_targets_file_roundtrip(tmp_path, kind: str) -> None:
    rng = np.random.default_rng(5)
    x0, x1 = rng.standard_normal((50, 6)).astype(np.float32), rng.standard_normal((50, 6)).astype(np.float32)
    prov = provenance(system="toy", seed=5, config={"block_size": 20})
    path = save_targets(tmp_path / "t.npz", x0, x1, prov, kind=kind)
    t = load_targets(path)
    assert t.kind == kind and np.array_equal(t.x0, x0) and np.array_equal(t.x1, x1)
    assert t.provenance["system"] == "toy" and t.provenance["config"] == {"block_size": 20}
    with np.load(path) as raw:  # plain numpy can read it
        assert json.loads(str(raw["provenance"]))["seed"] == 5
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_targets_file_errors(tmp_path) -> None:
    x = np.ones((40, 3), dtype=np.float32)
    good = save_targets(tmp_path / "t.npz", x, 2 * x, {})
    blob = good.read_bytes()
    cases = {
        "truncated": blob[: len(blob) // 2],
        "flipped": blob[:200] + bytes([blob[200] ^ 0xFF]) + blob[201:],  # inside x0's data
        "garbage": b"not a zip file at all",
        "empty": b"",
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.npz"
        p.write_bytes(data)
        with pytest.raises(BgkitError):
            load_targets(p)
    with pytest.raises(BgkitError, match="not found"):
        load_targets(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=x)
    with pytest.raises(BgkitError):
        load_targets(tmp_path / "other.npz")
    with pytest.raises(BgkitError):
        save_targets(tmp_path / "k.npz", x, x, {}, kind="flow")
    with pytest.raises(BgkitError):
        save_targets(tmp_path / "s.npz", x, x[:10], {})


def test_provenance_and_atomic_writes(tmp_path) -> None:
    import torch

    prov = provenance(system="ala2", seed=3)
    for key in ("bgkit_version", "torch_version", "numpy_version", "openmm_version", "time_utc", "hostname", "command"):
        assert key in prov
    assert prov["system"] == "ala2" and prov["seed"] == 3 and prov["time_utc"].endswith("+00:00")
    atomic_write_json(prov, tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())["seed"] == 3
    atomic_save({"w": torch.arange(3)}, tmp_path / "w.pt")
    assert torch.equal(torch.load(tmp_path / "w.pt")["w"], torch.arange(3))

    def failing(fh) -> None:
        fh.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "p.json", failing)
    assert json.loads((tmp_path / "p.json").read_text())["seed"] == 3  # old file intact
    assert sorted(os.listdir(tmp_path)) == ["p.json", "w.pt"]  # no temp files left


def test_ot_with_periodic_dimensions_uses_the_wrapped_cost() -> None:
    """On torsion dimensions the cost is the squared geodesic distance on the circle (brute force)."""
    from bgkit.train.targets import pair_cost

    rng = np.random.default_rng(4)
    wrap = lambda d: np.remainder(d + np.pi, 2 * np.pi) - np.pi  # noqa: E731
    for _ in range(5):
        x0 = np.concatenate([rng.standard_normal((6, 2)), rng.uniform(-np.pi, np.pi, (6, 1))], 1)
        x1 = np.concatenate([rng.standard_normal((6, 2)), rng.uniform(-np.pi, np.pi, (6, 1))], 1)
        cost = lambda a, b: float((((a - b)[:, :2]) ** 2).sum() + (wrap((a - b)[:, 2]) ** 2).sum())  # noqa: E731
        costs = {p: cost(x0, x1[list(p)]) for p in itertools.permutations(range(6))}
        best = min(costs, key=costs.get)
        perm = ot_assignment(x0, x1, periodic=[2])
        assert cost(x0, x1[perm]) == pytest.approx(costs[best], rel=1e-12)
    c = pair_cost(np.array([[0.0, 3.1]]), np.array([[0.0, -3.1]]), periodic=[1])
    assert c[0, 0] == pytest.approx((2 * np.pi - 6.2) ** 2)  # across the cut, not 6.2^2
    x0, x1p = ot_pairs(rng.uniform(-np.pi, np.pi, (500, 3)), seed=0, periodic=[0, 2])
    assert x0[:, [0, 2]].min() >= -np.pi and x0[:, [0, 2]].max() < np.pi  # uniform prior on the circle
    assert abs(x0[:, [0, 2]].std() - np.pi / np.sqrt(3)) < 0.15 and abs(x0[:, 1].std() - 1) < 0.15
