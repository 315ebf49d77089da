"""``bgkit fep``: ΔF between two conformational states by counting, reweighting and targeted FEP.

One function, :func:`run_fep`, runs every method on a system's data and proposal and writes an
output folder (``fep.json``, ``works.png``, ``works.npz`` and, when trained here, ``map.pt``):

* ``reference``: counting in the reference dataset (default: the system's replica-exchange data
  ``md_rex`` where shipped, else ``--data``), block-bootstrap error;
* ``counting``: counting in ``--data`` (default: the ``md/`` folder inside the system folder), block-bootstrap error;
* ``reweighting``: importance-weighted samples of the proposal (SNIS, delta-method error);
* ``tfep``: a map M: A → B trained by RegFlow on exact-OT pairs between the train-split frames
  of A and B (:mod:`bgkit.train.learned_map`), works on the held-out frames (validation split, which
  training only monitors, and test split; forward on A, reverse on B), EXP both ways and BAR;
  errors from a bootstrap over contiguous time blocks of the works
  (MD frames are correlated), pymbar's asymptotic errors beside them.

States and which frames lie in them: :mod:`bgkit.free_energy.states`; the estimators:
:mod:`bgkit.free_energy.populations`, :mod:`bgkit.free_energy.estimators`, :mod:`bgkit.free_energy.learned_map`.

Sign convention: ΔF_AB = F_B − F_A = −ln(Z_B / Z_A) in kT, kcal/mol beside it.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bgkit import BgkitError
from bgkit.arrays import evenly_spaced
from bgkit.coords import DEFAULT_COORDS
from bgkit.free_energy.states import State, frame_masks, in_state, resolve_state, system_states
from bgkit.systems import System
from bgkit.units import kt_to_kcal_mol

__all__ = ["MAP_CONFIG", "MAP_HPARAMS", "MAP_THRESHOLD", "METHODS", "default_reference", "run_fep"]

#: the methods ``run_fep`` knows, in the order they run
METHODS = ("counting", "reweighting", "tfep")
#: architecture of a TFEP map (NSF) and its training defaults; ``map_config`` overrides the latter
MAP_HPARAMS = {"hidden": 128, "n_layers": 6}
MAP_CONFIG = {"steps": 1000, "batch_size": 256, "lr": 1e-3}
#: TFEP estimates are flagged when a state has fewer test frames (works) than this
MIN_WORKS = 50
#: reweighting is flagged when the Kish ESS of the samples within a state is below this
MIN_STATE_ESS = 10.0
#: the map moves the flow coordinates whose A and B marginals differ by more than this (1-D W1, flow units)
MAP_THRESHOLD = 1.0


def default_reference(system: System) -> Path | None:
    """The system's shipped replica-exchange dataset (``md_rex``) if it has one."""
    folder = Path(system.folder) / "md_rex"
    return folder if (folder / "dataset.json").is_file() else None


def _row(df: float, err: float, kt_kj: float, **more: Any) -> dict[str, Any]:
    return {"dF_kT": df, "dF_err_kT": err, "dF_kcal_mol": kt_to_kcal_mol(df, kt_kj),
            "dF_err_kcal_mol": kt_to_kcal_mol(err, kt_kj), **more}


def _frames(xyz: np.ndarray, limit: int | None) -> np.ndarray:
    """At most ``limit`` evenly spaced frames of xyz [n, N, 3] (all if None), float64."""
    return np.asarray(xyz[evenly_spaced(len(xyz), limit)], dtype=np.float64)


def _counting(ds: Any, system: System, a: State, b: State, seed: int) -> dict[str, Any]:
    from bgkit.free_energy.populations import delta_f_counting

    ma, mb = frame_masks(ds.xyz, system, a, b)
    df, err = delta_f_counting(ma, mb, n_blocks=20, seed=seed)
    flags = [f"state {s.name} never visited ({ds.n_frames} frames)" for s, m in ((a, ma), (b, mb)) if not m.any()]
    return _row(df, err, system.kT, dataset=str(ds.folder), frames=ds.n_frames, simulated_ns=ds.simulated_ns,
                n_a=int(ma.sum()), n_b=int(mb.sum()), error="bootstrap over 20 contiguous time blocks",
                flags=flags)


def _proposal_notes(proposal: Any, system: System) -> list[str]:
    """Warnings about a proposal: an interrupted run's checkpoint, trained at another temperature."""
    return [note for note in (proposal.unfinished_note(), proposal.temperature_note(system)) if note]


def _reweighting(system: System, proposal: Any, a: State, b: State, n: int, seed: int,
                 workers: int | None, progress: bool) -> dict[str, Any]:
    from bgkit.free_energy.populations import delta_f_reweighting
    from bgkit.reweight import kish_ess
    from bgkit.sample import LOW_ESS_FRACTION, draw

    flags = _proposal_notes(proposal, system)  # also printed when run_fep starts
    res = draw(proposal, system, n=n, seed=seed, n_workers=workers, progress=progress)
    ma, mb = frame_masks(res.xyz, system, a, b)
    df, err = delta_f_reweighting(ma, mb, res.weights.log_w)
    lw = res.weights.log_w
    if res.weights.ess_fraction < LOW_ESS_FRACTION:
        flags.append(f"ESS/N {res.weights.ess_fraction:.2g} < {LOW_ESS_FRACTION}: reweighted results unreliable")
    ess = {}
    for s, m in ((a, ma), (b, mb)):
        ess[s.name] = kish_ess(lw[m]) if np.isfinite(lw[m]).any() else 0.0
        if ess[s.name] < MIN_STATE_ESS:
            flags.append(f"Kish ESS within {s.name} is {ess[s.name]:.3g} (< {MIN_STATE_ESS}): too few weighted "
                         "samples there")
    return _row(df, err, system.kT, model=str(proposal.path), model_unfinished=not proposal.finished,
                model_step=proposal.info["step"], model_planned_steps=proposal.info["planned_steps"],
                model_temperature_K=proposal.system_info.get("temperature_K"), n_samples=n, n_a=int(ma.sum()),
                n_b=int(mb.sum()),
                ess_fraction=res.weights.ess_fraction, ess_a=ess[a.name], ess_b=ess[b.name],
                error="delta method (independent samples)", flags=flags)


def _tfep(ds: Any, system: System, a: State, b: State, work: Path, map_path: str | None, coords: str,
          map_config: dict, map_threshold: float, map_frames: int | None, work_frames: int | None, seed: int,
          workers: int | None, progress: bool, states_record: dict) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from bgkit.energy import EnergyModel
    from bgkit.free_energy.learned_map import LearnedMap, map_works, tfep_estimates, works_block_errors

    frames = {}
    for split, limit in ((("train", map_frames),) if map_path is None else ()) + (("val", None), ("test", None)):
        xyz = ds.split(split)  # dihedrals once per split, for both states
        for key, mask in zip("ab", frame_masks(xyz, system, a, b)):
            frames[split, key] = _frames(xyz[mask], limit)
    for s, key in ((a, "a"), (b, "b")):
        # works on the frames the map never fitted: validation (only monitored) and test, in time order
        frames["work", key] = _frames(np.concatenate([frames["val", key], frames["test", key]]), work_frames)
        for split in ("train", "work") if map_path is None else ("work",):
            if not len(frames[split, key]):
                where = "train split" if split == "train" else "validation and test splits"
                raise BgkitError(f"state {s.name} has no frames in the {where} of {ds.folder}: TFEP needs "
                                 "samples of both states (use data that visit it, e.g. replica exchange)")
    t0 = time.time()
    if map_path is None:
        from bgkit.train.learned_map import train_state_map

        map_file = work / "map.pt"
        train_state_map(system, frames["train", "a"], frames["train", "b"], map_file, states_record, coords=coords,
                        val_xyz=(frames["val", "a"][:2000], frames["val", "b"][:2000]), hparams=dict(MAP_HPARAMS),
                        config_overrides={**MAP_CONFIG, "seed": seed, **map_config},
                        progress=progress, record={"dataset": str(ds.folder), "split": "train"},
                        threshold=map_threshold)
    else:
        map_file = Path(map_path)
    lmap = LearnedMap.load(map_file, topology_hash=system.topology_hash)
    train_s = time.time() - t0

    with EnergyModel(system, n_workers=workers) as energy:
        works = map_works(lmap, energy, lambda xyz, state: in_state(xyz, state, system), frames["work", "a"],
                          frames["work", "b"], a, b)
    results, failures = tfep_estimates(works.forward, works.reverse)
    boot = works_block_errors(works.forward, works.reverse, seed=seed)
    common = {"n_a": int(works.forward.size), "n_b": int(works.reverse.size), "dataset": str(ds.folder),
              "split": "val+test", "map": str(map_path or "map.pt"), "map_seconds": train_s,
              "left_state_forward": works.left_forward, "left_state_reverse": works.left_reverse,
              "nonfinite_energy_forward": works.nonfinite_forward, "nonfinite_energy_reverse": works.nonfinite_reverse}
    few = [f"only {n} held-out frames of {s.name}: errors unreliable" for s, n in ((a, works.forward.size),
                                                                            (b, works.reverse.size)) if n < MIN_WORKS]
    out = {}
    for name in ("exp_forward", "exp_reverse", "bar"):
        if name in failures:
            out[f"tfep_{name}"] = {"dF_kT": None, "dF_err_kT": None, "flags": few + [failures[name]], **common}
            continue
        r = results[name]
        flags = list(few)
        err = max(boot[name], r.stderr_kt) if math.isfinite(r.stderr_kt) else boot[name]
        for direction, ess in (("forward", r.ess_fraction_forward), ("reverse", r.ess_fraction_reverse)):
            if math.isfinite(ess) and ess < 0.01:
                flags.append(f"work overlap ESS/N {direction} {ess:.2g} < 0.01: estimate unreliable")
        exp_err = math.hypot(*(results[k].stderr_kt if k in results else math.inf for k in ("exp_forward", "exp_reverse")))
        if name == "bar" and math.isfinite(r.hysteresis_kt) and abs(r.hysteresis_kt) > 3 * max(exp_err, 1e-12):
            flags.append(f"EXP forward and reverse differ by {r.hysteresis_kt:.3g} kT (> 3 combined errors): "
                         "poor overlap")
        out[f"tfep_{name}"] = _row(r.delta_f_kt, err, system.kT, dF_err_asymptotic_kT=r.stderr_kt,
                                   dF_err_block_bootstrap_kT=boot[name], ess_fraction_forward=r.ess_fraction_forward,
                                   ess_fraction_reverse=r.ess_fraction_reverse, hysteresis_kT=r.hysteresis_kt,
                                   n_nonfinite_works=r.n_nonfinite, error="larger of block bootstrap (20 blocks) "
                                   "and pymbar asymptotic", flags=flags, **common)
    return out, {"w_forward": works.forward, "w_reverse": works.reverse}


def run_fep(system: System, state_from: str, state_to: str, out: str | os.PathLike, *, states_file: str | None = None,
            data: str | None = None, reference: str | None = None, model: str | None = None, n_samples: int = 10000,
            map_path: str | None = None, coords: str = DEFAULT_COORDS, map_config: dict | None = None,
            map_threshold: float = MAP_THRESHOLD, map_frames: int | None = 20000, work_frames: int | None = 5000,
            methods: tuple[str, ...] = METHODS,
            seed: int = 0, workers: int | None = None, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """ΔF(state_from → state_to) of ``system`` by each of ``methods``; writes ``out`` (see the module docstring);
    returns fep.json.

    ``system``: a :class:`bgkit.systems.System` (:func:`bgkit.systems.load_system` resolves a name or a folder);
    ``map_config``: TrainConfig fields of the map (``steps``, ``batch_size``, ``lr``, ``max_seconds``, ...);
    ``map_threshold``: which coordinates the map moves (:func:`bgkit.train.learned_map.select_dims`).
    A state never visited by the data is an error; estimates that cannot be trusted are flagged.
    """
    from bgkit.md.dataset import load_dataset, system_dataset
    from bgkit.outputs import check_output_folder, write_output_folder
    from bgkit.provenance import dumps_json, provenance

    if not isinstance(system, System):
        raise TypeError(f"run_fep needs a System (bgkit.systems.load_system), got {type(system).__name__}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise BgkitError(f"unknown method(s) {unknown or '(none given)'}; choose from {', '.join(METHODS)}")
    if n_samples < 2:
        raise BgkitError(f"--n must be >= 2, got {n_samples}")
    out = Path(os.path.abspath(out))
    check_output_folder(out, force)
    if map_path is not None and not Path(map_path).is_file():
        raise BgkitError(f"map {map_path} does not exist")
    states = system_states(system, states_file)
    a = resolve_state(state_from, states, f"system '{system.name}'")
    b = resolve_state(state_to, states, f"system '{system.name}'")
    if a.name == b.name:
        raise BgkitError(f"--from and --to are the same state ({a.name})")
    map_flags = []
    if map_path is not None and "tfep" in methods:  # a wrong file fails now, not after sampling
        from bgkit.free_energy.learned_map import LearnedMap

        trained = (LearnedMap.load(map_path, topology_hash=system.topology_hash).info.get("states") or {})
        if (trained.get("from"), trained.get("to")) != (a.name, b.name):
            map_flags.append(f"the map was trained for {trained.get('from')} -> {trained.get('to')}, not "
                             f"{a.name} -> {b.name} (TFEP stays exact for any map, but its variance grows)")
    proposal = None
    if "reweighting" in methods:  # a wrong --model fails now; an unfinished one is warned about before the work
        from bgkit.sample import load_proposal

        proposal = load_proposal(system, model)
        for note in _proposal_notes(proposal, system):
            print("warning: " + note, file=sys.stderr, flush=True)
    ds = load_dataset(data, system) if data else system_dataset(system)  # the system folder's own md/
    ref_path = reference or default_reference(system)
    record = {"from": a.name, "to": b.name, "definitions": {s.name: _definition(s) for s in (a, b)}}
    result: dict[str, Any] = {"system": system.name, "from": a.name, "to": b.name,
                              "convention": "dF = F_to - F_from = -ln(Z_to / Z_from); kT at the system temperature",
                              "temperature_K": system.temperature, "kT_kcal_mol": kt_to_kcal_mol(1.0, system.kT),
                              "states": record["definitions"], "estimates": {}}
    counting = _counting(ds, system, a, b, seed)
    if counting["n_a"] == 0 or counting["n_b"] == 0:
        missing = a.name if counting["n_a"] == 0 else b.name
        raise BgkitError(f"state {missing} is never visited by the {ds.n_frames} frames of {ds.folder}")
    ref = _counting(load_dataset(ref_path, system), system, a, b, seed) if ref_path is not None else counting
    result["reference"] = {**ref, "source": "replica-exchange / reference dataset" if ref_path else "--data (no "
                           "separate reference dataset)"}

    def write(tmp: Path) -> list[str]:
        """Every estimate, fep.json and the TFEP files, into the working folder ``tmp``; returns the file names."""
        arrays: dict[str, np.ndarray] = {}
        if "counting" in methods:
            result["estimates"]["counting"] = counting
        if "reweighting" in methods:
            result["estimates"]["reweighting"] = _reweighting(system, proposal, a, b, n_samples, seed, workers, progress)
        if "tfep" in methods:
            est, arrays = _tfep(ds, system, a, b, tmp, map_path, coords, dict(map_config or {}), map_threshold,
                                map_frames, work_frames, seed, workers, progress, record)
            for row in est.values():
                row["flags"] = map_flags + row["flags"]
            result["estimates"].update(est)
        result["provenance"] = provenance(seed=seed, system=system.name, command=" ".join(sys.argv))
        files = ["fep.json"]
        if arrays:
            np.savez(tmp / "works.npz", **arrays)
            from bgkit.plots import work_histograms

            work_histograms(arrays["w_forward"], arrays["w_reverse"], result, tmp / "works.png")
            files += ["works.npz", "works.png"] + (["map.pt"] if (tmp / "map.pt").exists() else [])
            from bgkit.provenance import file_sha256

            result["sha256"] = {name: file_sha256(tmp / name) for name in files[1:] if name.endswith((".npz", ".pt"))}
        (tmp / "fep.json").write_text(dumps_json(result) + "\n")
        return files

    write_output_folder(out, "bgkit.fep", write, force)
    return result


def _definition(state: State) -> dict[str, Any]:
    """A state's boxes in degrees (plain data)."""
    deg = lambda arc: None if arc is None else [math.degrees(arc[0]), math.degrees(arc[1])]  # noqa: E731
    if state.dihedrals is not None:
        return {lab: deg(arc) for lab, arc in state.dihedrals}
    return {"phi": deg(state.phi), "psi": deg(state.psi)}
