"""RegFlow / MLE losses and the training loop: learning, resume, checkpoints, errors."""
from __future__ import annotations

import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from _dist_train import DIM, CrashingAugment, rotate_pairs, small_flow, toy_data
from _dist_train import config as toy_config
from bgkit import BgkitError
from bgkit.flows import build_flow
from bgkit.train import TrainConfig, load_checkpoint, mle_loss, ot_pairs, regflow_loss, train

torch.set_num_threads(1)


# --------------------------------------------------------------------------- losses


def test_regflow_loss_sums_over_dims_and_regularisers() -> None:
    flow = small_flow()  # zero-initialised conditioners: the identity map
    x0 = torch.randn(16, 4)
    loss, stats = regflow_loss(flow, x0, x0 + 1.0, reg=None)
    assert loss.item() == pytest.approx(4.0, rel=1e-5)  # Σ over 4 dims of 1², mean over batch
    assert stats["mse_per_dim"] == pytest.approx(1.0, rel=1e-5)
    for reg in ("fb", "logdet"):
        loss, stats = regflow_loss(flow, x0, x0 + 1.0, reg=reg, reg_weight=1e-3)
        assert stats["reg"] == pytest.approx(0.0, abs=1e-8) and loss.item() == pytest.approx(4.0, rel=1e-5)
    g = torch.Generator().manual_seed(0)
    _, noisy = regflow_loss(flow, x0, x0, noise_std=0.5, reg=None, generator=g)
    assert noisy["mse"] > 0.1
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())
    with pytest.raises(BgkitError):
        regflow_loss(flow, x0, x0, reg="l2")
    with pytest.raises(BgkitError):
        regflow_loss(flow, x0, x0[:, :2])


def test_mle_loss_is_total_nll() -> None:
    flow = small_flow()  # identity: log q = log N(x; 0, I)
    x = torch.randn(32, 4)
    loss, stats = mle_loss(flow, x)
    expected = (0.5 * x.pow(2).sum(1) + 2 * math.log(2 * math.pi)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["nll_per_dim"] == pytest.approx(expected.item() / 4, rel=1e-5)


# --------------------------------------------------------------------------- learning a 2-D toy


_CENTRES = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) * 1.2
_STD = 0.35


def _mixture(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _CENTRES[rng.integers(0, 4, n)] + _STD * rng.standard_normal((n, 2))


def _mixture_log_prob(x: np.ndarray) -> np.ndarray:
    d2 = ((x[:, None, :] - _CENTRES[None]) ** 2).sum(-1)
    log_comp = -0.5 * d2 / _STD**2 - np.log(2 * np.pi * _STD**2)
    return np.logaddexp.reduce(log_comp, axis=1) - np.log(4)


def _energy_distance_test(a: torch.Tensor, b: torch.Tensor, n_perm: int = 150, seed: int = 0) -> float:
    """Permutation p-value of the energy distance between samples a [n, D] and b [n, D]."""
    z = torch.cat([a, b]).double()
    d = torch.cdist(z, z)
    n = a.shape[0]

    def stat(idx: torch.Tensor) -> float:
        i, j = idx[:n], idx[n:]
        return float(2 * d[i][:, j].mean() - d[i][:, i].mean() - d[j][:, j].mean())

    g = torch.Generator().manual_seed(seed)
    s0 = stat(torch.arange(2 * n))
    hits = sum(stat(torch.randperm(2 * n, generator=g)) >= s0 for _ in range(n_perm))
    return (1 + hits) / (1 + n_perm)


@pytest.mark.slow
def test_regflow_with_ot_targets_learns_gaussian_mixture(tmp_path: Path) -> None:
    x0, x1 = ot_pairs(_mixture(2000, seed=0), seed=1, block_size=2000)
    v0, v1 = ot_pairs(_mixture(500, seed=2), seed=3, block_size=500)
    torch.manual_seed(0)
    flow = build_flow("nsf", 2, n_layers=4, hidden=32, n_blocks=1, bins=8)
    cfg = TrainConfig(steps=600, batch_size=256, lr=3e-3, warmup_steps=50, val_every=200, ckpt_every=600,
                      reg="fb", reg_weight=1e-6, seed=0)
    result = train(flow, (x0, x1), (v0, v1), cfg, tmp_path / "ck.pt", progress=False)
    identity_loss = float(((v0 - v1) ** 2).sum(1).mean())  # ~0.5; held-out OT pairs are noisy (finite n)
    assert result.steps == 600 and result.final_val_loss < 0.4 * identity_loss
    with torch.no_grad():
        xs, log_q = flow.sample(1000, torch.Generator().manual_seed(5))
    target = torch.as_tensor(_mixture(1000, seed=9))
    assert _energy_distance_test(xs, target) > 0.01  # flow samples ~ target
    assert _energy_distance_test(torch.randn(1000, 2), target, n_perm=100) < 0.02  # the test has power
    # densities are usable: invertible and close to the true log-density on held-out data
    held = _mixture(2000, seed=11)
    with torch.no_grad():
        nll_model = -flow.log_prob(torch.as_tensor(held, dtype=torch.float32)).mean().item()
        assert torch.allclose(flow.log_prob(xs), log_q, atol=1e-3)
    nll_true = -_mixture_log_prob(held).mean()
    assert nll_model < nll_true + 0.3


# --------------------------------------------------------------------------- resume


def _all_equal(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _all_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _all_equal(u, v, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("objective", ["regflow", "mle"])
def test_resume_after_crash_is_bit_identical(tmp_path: Path, objective: str) -> None:
    data = toy_data(objective)
    val = tuple(d[:64] for d in data) if objective == "regflow" else data[:64]
    cfg = toy_config(objective, steps=23)
    cfg.noise_std = 0.05 if objective == "regflow" else 0.0  # exercise the RNG state
    full = train(small_flow(), data, val, cfg, tmp_path / "full.pt", augment=rotate_pairs, progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):  # dies at step 13, last checkpoint: step 10
        train(small_flow(), data, val, cfg, tmp_path / "part.pt", augment=CrashingAugment(13), progress=False)
    assert load_checkpoint(tmp_path / "part.pt")["step"] == 10
    flow = small_flow()
    resumed = train(flow, data, val, cfg, tmp_path / "part.pt", resume=True, augment=rotate_pairs, progress=False)
    a, b = load_checkpoint(tmp_path / "full.pt"), load_checkpoint(tmp_path / "part.pt")
    assert a["step"] == b["step"] == 23 and a["final"] and b["final"]
    for key in ("model", "raw_model", "optimizer", "scheduler", "rng", "ema_updates", "history"):
        _all_equal(a[key], b[key], key)
    assert resumed.final_val_loss == full.final_val_loss
    for k, v in flow.state_dict().items():  # the returned flow holds the EMA weights
        assert torch.equal(v, a["model"][k])
    # resuming a finished run is a no-op
    again = train(small_flow(), data, val, cfg, tmp_path / "part.pt", resume=True, progress=False)
    assert again.steps == 23


def test_resume_rejects_mismatches(tmp_path: Path) -> None:
    data = toy_data("regflow")
    cfg = toy_config("regflow", steps=5)
    with pytest.raises(BgkitError, match="not found"):
        train(small_flow(), data, None, cfg, tmp_path / "none.pt", resume=True, progress=False)
    train(small_flow(), data, None, cfg, tmp_path / "ck.pt", progress=False)
    cfg2 = toy_config("regflow", steps=10)
    cfg2.seed = 4
    with pytest.raises(BgkitError, match="seed"):
        train(small_flow(), data, None, cfg2, tmp_path / "ck.pt", resume=True, progress=False)
    with pytest.raises(BgkitError, match="samples"):
        train(small_flow(), tuple(d[:200] for d in data), None, toy_config("regflow", 10), tmp_path / "ck.pt",
              resume=True, progress=False)
    # another architecture or size: one line naming what differs, not torch's state_dict dump
    for other, what in ((build_flow("realnvp", DIM, n_layers=2, hidden=16, n_blocks=1), "flow arch was 'nsf', now 'realnvp'"),
                        (build_flow("nsf", DIM, n_layers=2, hidden=32, n_blocks=1, bins=4), "hidden was 16, now 32")):
        with pytest.raises(BgkitError, match=what) as err:
            train(other, data, None, toy_config("regflow", 10), tmp_path / "ck.pt", resume=True, progress=False)
        assert len(str(err.value)) < 300
    # a checkpoint written before a config field existed resumes with that field at its default, not otherwise
    ckpt = torch.load(tmp_path / "ck.pt", weights_only=False)
    del ckpt["config"]["logdet_weight"]
    torch.save(ckpt, tmp_path / "old.pt")
    cfg3 = toy_config("regflow", steps=5)
    cfg3.logdet_weight = 0.5
    with pytest.raises(BgkitError, match="logdet_weight was 0.0, now 0.5"):
        train(small_flow(), data, None, cfg3, tmp_path / "old.pt", resume=True, progress=False)
    assert train(small_flow(), data, None, toy_config("regflow", 6), tmp_path / "old.pt", resume=True,
                 progress=False).steps == 6


# --------------------------------------------------------------------------- checkpoints & errors


def test_final_checkpoint_contents_and_rebuild(tmp_path: Path) -> None:
    data = toy_data("mle")
    cfg = toy_config("mle", steps=12)
    flow = small_flow()
    res = train(flow, data, data[:64], cfg, tmp_path / "ck.pt", progress=True,
                extra_checkpoint={"system": "toy", "scale_nm": np.float64(0.3), "mask": np.arange(3)})
    ck = load_checkpoint(tmp_path / "ck.pt")
    assert ck["final"] and ck["step"] == 12 and ck["world_size"] == 1
    for key in ("final_train_loss", "final_val_loss", "samples_per_s", "wall_time_s"):
        assert math.isfinite(ck["metrics"][key])
    assert res.samples_per_s > 0 and res.final_val_loss == ck["metrics"]["final_val_loss"]
    assert [h["step"] for h in ck["history"]] == [4, 8, 12]
    assert ck["scheduler"]["_last_lr"][0] == pytest.approx(cfg.lr * cfg.min_lr_factor)
    assert ck["extra"]["scale_nm"] == 0.3 and torch.equal(ck["extra"]["mask"], torch.arange(3))
    assert ck["config"]["objective"] == "mle" and ck["provenance"]["seed"] == cfg.seed
    assert TrainConfig.from_dict(ck["config"]) == cfg
    rebuilt = build_flow(ck["flow"]["arch"], ck["flow"]["dim"], **ck["flow"]["hparams"])
    rebuilt.load_state_dict(ck["model"])
    x = torch.as_tensor(data[:10])
    assert torch.equal(rebuilt.log_prob(x), flow.log_prob(x))


def _data_offset(path: Path, member_suffix: str) -> int:
    """Byte offset of the stored data of the first zip member whose name ends with member_suffix."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def test_corrupted_or_truncated_checkpoint_raises(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    train(small_flow(), toy_data("regflow"), None, toy_config("regflow", 3), path, progress=False)
    good = load_checkpoint(path)
    blob = path.read_bytes()
    pos = _data_offset(path, "data/0") + 1  # inside the first tensor's bytes
    cases = {
        "truncated": blob[: len(blob) // 2],
        "tail-cut": blob[:-10],
        "flipped-tensor-byte": blob[:pos] + bytes([blob[pos] ^ 0x01]) + blob[pos + 1 :],
        "garbage": b"\x00" * 100,
        "empty": b"",
    }
    for name, data in cases.items():
        bad = tmp_path / f"{name}.pt"
        bad.write_bytes(data)
        with pytest.raises(BgkitError):
            load_checkpoint(bad)
    # any single flipped byte is either detected or harmless (e.g. zip alignment padding)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(blob), size=25, replace=False):
        bad = tmp_path / "flip.pt"
        bad.write_bytes(blob[:i] + bytes([blob[i] ^ 0x10]) + blob[i + 1 :])
        try:
            _all_equal(load_checkpoint(bad), good, f"byte {i}")
        except BgkitError:
            pass
    with pytest.raises(BgkitError):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(BgkitError, match="not a bgkit checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "truncated.pt").replace(path)
    with pytest.raises(BgkitError):
        train(small_flow(), toy_data("regflow"), None, toy_config("regflow", 6), path, resume=True, progress=False)


def test_nonfinite_loss_names_the_step(tmp_path: Path) -> None:
    calls = {"n": 0}

    def poison(batch):
        calls["n"] += 1
        return tuple(t * float("nan") for t in batch) if calls["n"] == 3 else batch

    with pytest.raises(BgkitError, match="step 3"):
        train(small_flow(), toy_data("regflow"), None, toy_config("regflow", 6), tmp_path / "ck.pt",
              augment=poison, progress=False)


def test_bad_input_raises(tmp_path: Path) -> None:
    data = toy_data("regflow")
    out = tmp_path / "ck.pt"
    with pytest.raises(BgkitError, match="objective"):
        train(small_flow(), data, None, TrainConfig(objective="kl"), out, progress=False)
    with pytest.raises(BgkitError, match="batch_size"):
        train(small_flow(), tuple(d[:10] for d in data), None, toy_config("regflow", 3), out, progress=False)
    with pytest.raises(BgkitError, match="pair"):
        train(small_flow(), data[0], None, toy_config("regflow", 3), out, progress=False)
    bad = (data[0].copy(), data[1].copy())
    bad[1][3, 0] = np.nan
    with pytest.raises(BgkitError, match="NaN"):
        train(small_flow(), bad, None, toy_config("regflow", 3), out, progress=False)
    with pytest.raises(BgkitError, match="extra_checkpoint"):
        train(small_flow(), data, None, toy_config("regflow", 3), out, extra_checkpoint={"f": object()},
              progress=False)
