"""Reference MD datasets written by ``bgkit simulate``: loading, splits, provenance.

A dataset is a folder (see :mod:`bgkit.md.simulate` for the layout) with
``dataset.json``, ``topology.pdb``, a frozen copy of the system definition and
per-replica XTC chunks with reduced energies. A system's own dataset is the
``md`` folder inside its system folder (:func:`system_dataset`; the shipped ones
in ``systems/<name>/md``, which ``load_dataset("ala2")`` finds too).

``dataset.json`` records the Hamiltonian the data were simulated with (force-field
files, nonbonded method and cutoff, constraints, temperature; datasets written by
this version also the sha256 of the canonically serialised OpenMM System,
:func:`system_xml_sha256`). :func:`load_dataset` with a system refuses data of
another topology or another Hamiltonian.

Plain mdtraj reads the same data::

    md.load(sorted(glob("systems/ala2/md/rep000/chunk*.xtc")), top="systems/ala2/md/topology.pdb")
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from bgkit import BgkitError
from bgkit.md.chunks import PROGRESS, chunk_path
from bgkit.systems import System, load_system, shipped_systems, systems_dir

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Replica:
    """The completed chunks of one replica."""

    folder: Path
    chunks: tuple[Path, ...]  #: XTC files, in time order

    @property
    def index(self) -> int:
        return int(self.folder.name[3:])


class Dataset:
    """A reference-MD dataset: positions (nm), reduced energies (kT), times (ps), splits."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        meta_path = self.folder / "dataset.json"
        if not meta_path.is_file():
            raise BgkitError(f"{self.folder} is not a bgkit dataset: it has no dataset.json")
        try:
            self.meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            raise BgkitError(f"{meta_path} is corrupted (not valid JSON)") from None
        if self.meta.get("kind") != "bgkit.md_dataset":
            raise BgkitError(f"{meta_path} does not describe a bgkit MD dataset")

    # ------------------------------------------------------------- contents
    @cached_property
    def system(self) -> System:
        """The system the data were simulated with (the dataset's frozen copy)."""
        frozen = self.folder / "system"
        system = load_system(frozen if (frozen / "system.yaml").is_file() else self.meta["system"])
        if system.topology_hash != self.meta["topology_hash"]:
            raise BgkitError(f"dataset {self.folder}: topology does not match its dataset.json")
        return system

    @property
    def name(self) -> str:
        return self.meta["system"]

    @cached_property
    def replicas(self) -> list[Replica]:
        """Replicas with their completed chunks (an interrupted chunk is never included)."""
        out = []
        for rep in sorted(self.folder.glob("rep[0-9][0-9][0-9]")):
            progress = rep / PROGRESS
            if not progress.is_file():
                continue
            done = json.loads(progress.read_text())["chunks_done"]
            chunks = tuple(chunk_path(rep, k) for k in range(done))
            missing = [c for c in chunks if not c.is_file() or not c.with_suffix(".npy").is_file()]
            if missing:
                raise BgkitError(f"dataset {self.folder}: {missing[0]} listed as complete but missing")
            if chunks:
                out.append(Replica(rep, chunks))
        return out

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        import mdtraj

        xyz, energies, times, replica = [], [], [], []
        top = self.system.topology
        for rep in self.replicas:
            for chunk in rep.chunks:
                try:
                    traj = mdtraj.load(str(chunk), top=top)
                except Exception as exc:  # noqa: BLE001 - any reader failure is a corrupted file
                    raise BgkitError(f"dataset {self.folder}: cannot read {chunk}: {exc}") from None
                e = np.load(chunk.with_suffix(".npy"))
                if len(e) != traj.n_frames:
                    raise BgkitError(f"dataset {self.folder}: {chunk} has {traj.n_frames} frames but {len(e)} energies")
                xyz.append(traj.xyz)
                times.append(np.asarray(traj.time, dtype=np.float64))
                energies.append(e)
                replica.append(np.full(traj.n_frames, rep.index, dtype=np.int32))
        if not xyz:
            raise BgkitError(f"dataset {self.folder} holds no completed chunk yet")
        return np.concatenate(xyz), np.concatenate(energies), np.concatenate(times), np.concatenate(replica)

    @property
    def xyz(self) -> np.ndarray:
        """Positions, float32 [n_frames, N, 3] nm, replicas concatenated in order."""
        return self._arrays[0]

    @property
    def energies_kt(self) -> np.ndarray:
        """Reduced energies of the stored frames, float64 [n_frames]."""
        return self._arrays[1]

    @property
    def times_ps(self) -> np.ndarray:
        """Simulation time of each frame within its replica, ps."""
        return self._arrays[2]

    @property
    def replica_index(self) -> np.ndarray:
        """Replica of each frame, int [n_frames]."""
        return self._arrays[3]

    @property
    def n_frames(self) -> int:
        return len(self.energies_kt)

    @property
    def simulated_ns(self) -> float:
        """Sampled production time over all replicas, ns."""
        return self.n_frames * self.meta["settings"]["save_every_ps"] / 1000.0

    def trajectory(self, indices: np.ndarray | None = None):
        """An ``mdtraj.Trajectory`` of all (or the given) frames."""
        import mdtraj

        sel = slice(None) if indices is None else indices
        return mdtraj.Trajectory(self.xyz[sel], self.system.topology, time=self.times_ps[sel])

    # --------------------------------------------------------------- splits
    def split_indices(self, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
        """Train/val/test frame indices from contiguous time blocks.

        Each replica's trajectory is cut in time order: the first ``fractions[0]``
        of its frames are train, the next ``fractions[1]`` val, the rest test, so
        no stretch of trajectory is shared between splits (only the two block
        boundaries per replica are adjacent in time).
        """
        f = np.asarray(fractions, dtype=float)
        if f.shape != (3,) or (f < 0).any() or abs(f.sum() - 1) > 1e-9:
            raise BgkitError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
        out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for rep in np.unique(self.replica_index):
            idx = np.flatnonzero(self.replica_index == rep)
            cuts = np.round(np.cumsum(f)[:2] * len(idx)).astype(int)
            for name, part in zip(SPLITS, np.split(idx, cuts)):
                out[name].append(part)
        return {k: np.concatenate(v) for k, v in out.items()}

    def split(self, name: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> np.ndarray:
        """Positions of one split, float32 [n, N, 3] nm."""
        if name not in SPLITS:
            raise BgkitError(f"unknown split '{name}': choose train, val or test")
        return self.xyz[self.split_indices(fractions)[name]]

    def summary(self) -> dict:
        s = self.meta["settings"]
        return {
            "system": self.name,
            "folder": str(self.folder),
            "replicas": len(self.replicas),
            "frames": self.n_frames,
            "simulated_ns": self.simulated_ns,
            "frame_interval_ps": s["save_every_ps"],
            "friction_per_ps": s["friction_per_ps"],
            "step_fs": s["step_fs"],
            "temperature_K": self.meta["temperature_K"],
        }


#: the fields of dataset.json that define the Hamiltonian, compared with the system's on loading
HAMILTONIAN_FIELDS = ("forcefield", "nonbonded_method", "nonbonded_cutoff_nm", "constraints", "temperature_K",
                      "amber", "openmm_system")


def system_xml_sha256(system: System) -> str:
    """sha256 of ``system``'s OpenMM System in a canonical serialisation.

    The XML of ``XmlSerializer`` without its ``openmmVersion`` attribute, its forces sorted by
    their own serialisation (the order of force-field files does not matter), in canonical
    XML (C14N 2.0: sorted attributes, no formatting whitespace). Covers every way of defining
    a system (force-field XMLs, AMBER files, a serialised System).
    """
    import hashlib
    import xml.etree.ElementTree as ET

    root = ET.fromstring(system.system_xml)
    root.attrib.pop("openmmVersion", None)
    forces = root.find("Forces")
    if forces is not None:
        children = sorted(forces, key=lambda f: ET.canonicalize(ET.tostring(f), strip_text=True))
        forces[:] = children
    text = ET.canonicalize(ET.tostring(root), strip_text=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _openmm_version() -> str:
    import openmm

    return str(openmm.__version__)


def _fields(system: System) -> dict[str, Any]:
    """``system``'s values of :data:`HAMILTONIAN_FIELDS`."""
    spec = system.spec
    ff = getattr(spec, "forcefield", None)
    return {"forcefield": list(ff) if ff else None, "nonbonded_method": getattr(spec, "nonbonded_method", None),
            "nonbonded_cutoff_nm": getattr(spec, "nonbonded_cutoff_nm", None),
            "constraints": getattr(spec, "constraints", None), "temperature_K": system.temperature,
            "amber": dict(getattr(spec, "amber", None) or {}),  # systems from AMBER files or a System XML
            "openmm_system": dict(getattr(spec, "openmm_system", None) or {})}


def hamiltonian_record(system: System) -> dict[str, Any]:
    """What dataset.json records of ``system``'s Hamiltonian (:data:`HAMILTONIAN_FIELDS` and ``system_xml``)."""
    return {
        **_fields(system),
        "system_xml": {"sha256": system_xml_sha256(system), "openmm_version": _openmm_version(),
                       "canonical": "XmlSerializer XML, no openmmVersion, forces sorted, C14N 2.0"},
    }


def _same(key: str, a: Any, b: Any) -> bool:
    if key in ("temperature_K", "nonbonded_cutoff_nm") and a is not None and b is not None:
        try:
            return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    if key == "forcefield":
        return [os.path.normpath(str(x)) for x in a or []] == [os.path.normpath(str(x)) for x in b or []]
    if key in ("amber", "openmm_system"):
        return (a or {}) == (b or {})
    return a == b


def _describe(record: dict[str, Any], keys: list[str], dataset: bool) -> str:
    """The Hamiltonian fields ``keys`` of a record as words: "simulated with forcefield [a, b] at 300 K" (a
    dataset) or "has forcefield [c] at 310 K", "is at 310 K" (a system)."""
    words, temperature = [], ""
    for key in keys:
        value = record.get(key)
        if key == "forcefield":
            words.append("forcefield [" + ", ".join(map(str, value or [])) + "]")
        elif key == "temperature_K":
            temperature = f"at {float(value):g} K" if value is not None else "at an unrecorded temperature"
        elif key == "nonbonded_cutoff_nm":
            words.append(f"cutoff {float(value):g} nm" if value is not None else "no cutoff")
        elif key == "constraints":
            words.append(f"constraints {value or 'none'}")
        else:
            words.append(f"{key} {value if value else 'none'}")
    head = ("simulated with " if dataset else "has ") + ", ".join(words) if words else ("simulated" if dataset else "is")
    return f"{head} {temperature}".strip()


def hamiltonian_mismatch(meta: dict[str, Any], system: System, folder: str | os.PathLike) -> str | None:
    """Why the dataset of ``meta`` (its dataset.json, in ``folder``) was simulated with another Hamiltonian
    than ``system``'s, as one line; None if it was the same.

    A dataset that recorded the hash of its serialised OpenMM System under this OpenMM version is
    compared by that hash and the temperature (so equivalent definitions, e.g. force-field files
    in another order, agree); otherwise by the recorded :data:`HAMILTONIAN_FIELDS` (a field an old
    dataset.json lacks is skipped).
    """
    mine = _fields(system)
    differ = [k for k in HAMILTONIAN_FIELDS if k in meta and not _same(k, meta[k], mine[k])]
    xml = meta.get("system_xml") or {}
    if xml.get("sha256") and xml.get("openmm_version") == _openmm_version():
        mine_hash = system_xml_sha256(system)
        if xml["sha256"] != mine_hash:
            hashes = f"sha256 {xml['sha256'][:12]} vs {mine_hash[:12]}"
            if not differ:
                return (f"dataset {folder} was simulated with another OpenMM System than system '{system.name}' "
                        f"(same recorded force-field names and settings, but the serialised Systems differ, {hashes}: "
                        "e.g. an edited force-field file)")
            return (f"dataset {folder} was {_describe(meta, differ, True)}, system '{system.name}' "
                    f"{_describe(mine, differ, False)}, and their serialised OpenMM Systems differ ({hashes}): its "
                    "frames and energies belong to another Hamiltonian")
        differ = [k for k in differ if k == "temperature_K"]
    if differ:
        return (f"dataset {folder} was {_describe(meta, differ, True)}, system '{system.name}' "
                f"{_describe(mine, differ, False)}: its frames and energies belong to another Hamiltonian")
    return None


def load_dataset(name_or_path: str | os.PathLike, system: Any = None) -> Dataset:
    """A dataset folder, a system folder's ``md`` dataset, or that of a system by name (``systems/<name>/md``).

    With ``system`` (a bgkit System), a dataset simulated for another topology or with another
    Hamiltonian (:func:`hamiltonian_mismatch`) is refused.
    """
    ds = _find_dataset(name_or_path)
    if system is not None:
        if ds.meta["topology_hash"] != system.topology_hash:
            raise BgkitError(f"dataset {ds.folder} was simulated for another topology than system '{system.name}'")
        problem = hamiltonian_mismatch(ds.meta, system, ds.folder)
        if problem:
            raise BgkitError(problem)
    return ds


def system_dataset(system: System) -> Dataset:
    """The system's own dataset: the ``md`` folder in its system folder (never one found by the system's name),
    checked against the system (topology and Hamiltonian)."""
    folder = Path(system.folder) / "md"
    if not (folder / "dataset.json").is_file():
        raise BgkitError(f"system '{system.name}' has no dataset at {folder}: simulate it (`bgkit simulate "
                         f"--system {system.folder} --out {folder}`) or pass --data")
    return load_dataset(folder, system)


def _find_dataset(name_or_path: str | os.PathLike) -> Dataset:
    path = Path(name_or_path)
    if path.is_dir():
        if (path / "dataset.json").is_file():
            return Dataset(path)
        if (path / "md" / "dataset.json").is_file():  # a system folder with its data
            return Dataset(path / "md")
        raise BgkitError(f"{path} is not a bgkit dataset: it has no dataset.json")
    if str(name_or_path) in shipped_systems():
        folder = systems_dir() / str(name_or_path) / "md"
        if not (folder / "dataset.json").is_file():
            raise BgkitError(f"system '{name_or_path}' ships no reference data yet ({folder} missing)")
        return Dataset(folder)
    raise BgkitError(f"no dataset '{name_or_path}': neither a dataset folder nor a shipped system")
