"""Which MD a command uses, and whether it belongs to the system: the system folder's own md/ (never a folder
found by the system's name), and the full Hamiltonian (force field, nonbonded settings, temperature, the hash
of the serialised OpenMM System) checked against dataset.json; proposals of another temperature or of an
unfinished run warned about; evaluation refused on too few test frames.

Datasets here are cut from the shipped ala2 MD (a few of its chunks), so no MD is run.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli_helpers import assert_one_line_error, bgkit

from bgkit import BgkitError
from bgkit.md.dataset import load_dataset
from bgkit.systems import load_system

ALA2 = load_system("ala2")
SHIPPED_MD = ALA2.folder / "md"


def small_dataset(dst: Path, chunks: int = 2, frames: int | None = None, **meta) -> Path:
    """A dataset folder of the first ``chunks`` chunks of the shipped ala2 MD (200 frames each), or of its first
    ``frames`` frames; dataset.json entries replaced by ``meta``."""
    dst.mkdir(parents=True)
    shutil.copy(SHIPPED_MD / "topology.pdb", dst)
    shutil.copytree(SHIPPED_MD / "system", dst / "system")
    record = {**json.loads((SHIPPED_MD / "dataset.json").read_text()), **meta}
    (dst / "dataset.json").write_text(json.dumps(record, indent=2))
    rep = dst / "rep000"
    rep.mkdir()
    if frames is None:
        for k in range(chunks):
            for suffix in (".xtc", ".npy"):
                shutil.copy(SHIPPED_MD / "rep000" / f"chunk{k:05d}{suffix}", rep)
        n = 200 * chunks
    else:
        import mdtraj

        chunks, n = 1, frames
        mdtraj.load(str(SHIPPED_MD / "rep000" / "chunk00000.xtc"), top=str(SHIPPED_MD / "topology.pdb"))[:frames] \
            .save_xtc(str(rep / "chunk00000.xtc"))
        np.save(rep / "chunk00000.npy", np.load(SHIPPED_MD / "rep000" / "chunk00000.npy")[:frames])
    (rep / "progress.json").write_text(json.dumps({"chunks_done": chunks, "frames": n}))
    return dst


def without_notes(res):
    """The finished command with its informational ``note:`` lines (e.g. evaluate's protocol note) removed."""
    res.stderr = "".join(line for line in res.stderr.splitlines(True) if not line.startswith("note: "))
    return res


def user_system(folder: Path, name: str = "ala2", forcefield: str | None = None, temperature: float | None = None,
                md: Path | None = None) -> Path:
    """A copy of the ala2 system folder (its system.yaml edited), with ``md`` (a dataset folder) as its md/."""
    folder.mkdir(parents=True)
    shutil.copy(ALA2.pdb_path, folder)
    text = (ALA2.folder / "system.yaml").read_text().replace("name: ala2", f"name: {name}")
    if forcefield is not None:
        text = text.replace("forcefield: [amber99sbildn.xml, amber99_obc.xml]", f"forcefield: {forcefield}")
    if temperature is not None:
        text = text.replace("temperature_K: 300", f"temperature_K: {temperature}")
    (folder / "system.yaml").write_text(text)
    if md is not None:
        shutil.move(str(md), folder / "md")
    return folder


# ------------------------------------------------------------------------------------- which dataset (defect 2)

def test_the_shipped_datasets_match_their_systems():
    from bgkit.md.dataset import system_dataset

    for name, folders in (("ala2", ["md", "md_rex"]), ("ala3", ["md"]), ("ala4", ["md", "md_dense"])):
        system = load_system(name)
        for f in folders:
            assert load_dataset(system.folder / f, system).folder == system.folder / f
        assert system_dataset(system).folder == system.folder / "md"


def test_the_default_dataset_is_the_system_folders_md_not_one_found_by_name(tmp_path, monkeypatch):
    from bgkit.train.molecular import _datasets

    monkeypatch.chdir(tmp_path)
    # name: ala2 in a folder of another force field: the shipped ala2 MD is not its data
    syst = load_system(user_system(tmp_path / "syst", forcefield="[amber14-all.xml]"))
    with pytest.raises(BgkitError, match="has no dataset at .*syst/md"):
        _datasets(None, syst)
    # a folder whose system.yaml says another name uses its own md/
    pro = load_system(user_system(tmp_path / "pro", name="pro2", md=small_dataset(tmp_path / "d1")))
    assert [d.folder for d in _datasets(None, pro)] == [tmp_path / "pro" / "md"]
    # a nested folder, run from elsewhere, with a decoy folder of the system's name in the current directory
    water = load_system(user_system(tmp_path / "b12" / "water", name="water", md=small_dataset(tmp_path / "d2")))
    user_system(tmp_path / "water", name="water", md=small_dataset(tmp_path / "d3", frames=30))
    assert [d.n_frames for d in _datasets(None, water)] == [400]
    assert _datasets(None, water)[0].folder == tmp_path / "b12" / "water" / "md"


def test_train_and_fep_use_the_system_folders_md(tmp_path):
    user_system(tmp_path / "syst", forcefield="[amber14-all.xml]")
    res = bgkit("train", "--system", "syst", "--arch", "nsf", "--objective", "mle", "--steps", 1,
                "--out", tmp_path / "x.pt", cwd=tmp_path)
    assert_one_line_error(res, "has no dataset at", "syst/md", "--data")
    assert not (tmp_path / "x.pt").exists()
    pro = user_system(tmp_path / "pro", name="pro2", md=small_dataset(tmp_path / "d"))
    res = bgkit("train", "--system", "pro", "--arch", "nsf", "--objective", "mle", "--steps", 2, "--batch-size", 16,
                "--hparams", '{"hidden": 8, "n_layers": 2}', "--out", tmp_path / "m.pt", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    assert tmp_path / ckpt["extra"]["training"]["dataset"] == pro / "md"  # recorded relative to the cwd
    assert ckpt["extra"]["training"]["dataset_frames"] == 400
    from bgkit.fep_workflow import run_fep

    result = run_fep(load_system(pro), "C7eq_beta", "alpha_R", tmp_path / "fep", methods=("counting",), progress=False)
    assert Path(result["estimates"]["counting"]["dataset"]) == pro / "md"
    assert result["estimates"]["counting"]["frames"] == 400


def test_a_sample_folder_finds_its_system_by_folder():
    from bgkit.sample import sample_folder_system

    assert sample_folder_system({"system": "x", "system_folder": str(ALA2.folder),
                                 "topology_hash": ALA2.topology_hash}).folder == ALA2.folder
    # folders written before the folder was recorded: by name
    assert sample_folder_system({"system": "ala2", "topology_hash": ALA2.topology_hash}).folder == ALA2.folder


# ------------------------------------------------------------------------------ which Hamiltonian (defect 3)

def test_a_dataset_of_another_force_field_or_temperature_is_refused_with_the_difference(tmp_path):
    amber14 = load_system(user_system(tmp_path / "a", forcefield="[amber14-all.xml]"))
    with pytest.raises(BgkitError) as err:
        load_dataset(SHIPPED_MD, amber14)
    assert "forcefield [amber99sbildn.xml, amber99_obc.xml]" in str(err.value)
    assert "system 'ala2' has forcefield [amber14-all.xml]:" in str(err.value)  # only what differs is shown
    hot = load_system(user_system(tmp_path / "h", temperature=310))
    with pytest.raises(BgkitError, match=r"was simulated at 300 K, system 'ala2' is at 310 K"):
        load_dataset(SHIPPED_MD, hot)
    cut = user_system(tmp_path / "c")
    text = (cut / "system.yaml").read_text().replace("nonbonded_method: NoCutoff", "nonbonded_method: CutoffNonPeriodic")
    (cut / "system.yaml").write_text(text + "nonbonded_cutoff_nm: 1.5\n")
    cut = load_system(cut)
    with pytest.raises(BgkitError, match=r"nonbonded_method NoCutoff, no cutoff, system .* has nonbonded_method "
                                         r"CutoffNonPeriodic, cutoff 1.5 nm"):
        load_dataset(SHIPPED_MD, cut)
    # the same Hamiltonian under another name and folder is fine
    assert load_dataset(SHIPPED_MD, load_system(user_system(tmp_path / "same", name="mine"))).folder == SHIPPED_MD


@pytest.mark.parametrize("command", [
    ["evaluate", "--n", 10, "--workers", 1],
    ["train", "--arch", "nsf", "--objective", "mle", "--steps", 1],
    ["fep", "--from", "C7eq_beta", "--to", "alpha_R", "--methods", "counting"],
    ["targets", "ot"],
])
def test_commands_refuse_md_of_another_hamiltonian(tmp_path, command):
    hot = user_system(tmp_path / "hot", temperature=310)
    out = tmp_path / ("o.pt" if command[0] in ("train", "targets") else "o")
    res = bgkit(command[0], *command[1:2] if command[0] == "targets" else (), "--system", hot,
                *command[2:] if command[0] == "targets" else command[1:], "--data", SHIPPED_MD, "--out", out)
    assert_one_line_error(without_notes(res), f"dataset {SHIPPED_MD} was simulated at 300 K", "is at 310 K")
    assert not out.exists()


def test_new_datasets_record_the_hash_of_the_openmm_system_and_it_is_checked(tmp_path):
    import openmm.app

    from bgkit.md.dataset import hamiltonian_mismatch, system_xml_sha256
    from bgkit.md.settings import MDSettings
    from bgkit.md.simulate import prepare

    out = tmp_path / "new"
    settings = MDSettings(system="ala2", ns=0.001, save_every_ps=0.5, chunk_ps=1.0, equilibrate_ps=0.0)
    prepare(out, ALA2, settings)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["system_xml"]["sha256"] == system_xml_sha256(ALA2)
    assert meta["system_xml"]["openmm_version"] == openmm.__version__
    assert hamiltonian_mismatch(meta, ALA2, out) is None
    # the same force field in another file order is the same OpenMM System
    swapped = load_system(user_system(tmp_path / "swapped", forcefield="[amber99_obc.xml, amber99sbildn.xml]"))
    assert system_xml_sha256(swapped) == system_xml_sha256(ALA2)
    assert hamiltonian_mismatch(meta, swapped, out) is None
    # a local force-field file of the same name with other parameters: the names agree, the hash does not
    edited = user_system(tmp_path / "edited")
    obc = (Path(openmm.app.__file__).parent / "data" / "amber99_obc.xml").read_text()
    (edited / "amber99_obc.xml").write_text(obc.replace('scale="0.85"', 'scale="0.80"'))
    edited = load_system(edited)
    problem = hamiltonian_mismatch(meta, edited, out)
    assert problem is not None and "another OpenMM System" in problem and "serialised Systems differ" in problem and "\n" not in problem
    assert hamiltonian_mismatch({k: v for k, v in meta.items() if k != "system_xml"}, edited, out) is None  # old
    # a run is never resumed with another Hamiltonian
    with pytest.raises(BgkitError, match="at 300 K, system 'ala2' is at 310 K.*another --out"):
        prepare(out, load_system(user_system(tmp_path / "hot", temperature=310)), settings)


def _checkpoint(path: Path, **changes) -> Path:
    """The shipped ala2 proposal with checkpoint entries changed (``temperature_K``: its system record's)."""
    ckpt = torch.load(ALA2.folder / "proposal.pt", weights_only=True)
    if "temperature_K" in changes:
        ckpt["extra"]["system"]["temperature_K"] = changes.pop("temperature_K")
    ckpt.update(changes)
    torch.save(ckpt, path)
    return path


def test_a_proposal_trained_at_another_temperature_is_warned_about(tmp_path):
    hot = _checkpoint(tmp_path / "hot.pt", temperature_K=310.0)
    res = bgkit("sample", "--system", "ala2", "--model", hot, "--n", 10, "--workers", 1, "--out", tmp_path / "s")
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "trained at 310 K" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "'ala2' is at 300 K" in warnings[0]
    res = bgkit("sample", "--system", "ala2", "--n", 10, "--workers", 1, "--out", tmp_path / "t")
    assert res.returncode == 0 and "trained at" not in res.stderr


def test_fep_warns_about_an_unfinished_model_and_records_it(tmp_path):
    partial = _checkpoint(tmp_path / "partial.pt", final=False, step=10)
    data = small_dataset(tmp_path / "d")
    res = bgkit("fep", "--system", "ala2", "--from", "C7eq_beta", "--to", "alpha_R", "--methods",
                "counting,reweighting", "--model", partial, "--n", 20, "--workers", 1, "--data", data,
                "--reference", data, "--out", tmp_path / "fep")
    assert res.returncode == 0, res.stderr
    warned = [line for line in res.stderr.splitlines() if "unfinished training run (step 10 of" in line]
    assert warned and all(line.startswith("warning: ") for line in warned)
    row = json.loads((tmp_path / "fep" / "fep.json").read_text())["estimates"]["reweighting"]
    assert row["model_unfinished"] is True and row["model_step"] == 10
    assert any("unfinished training run" in flag for flag in row["flags"])


# ------------------------------------------------------------------------------- too few test frames (defect 10)

def test_evaluate_refuses_a_reference_with_too_few_test_frames(tmp_path):
    from bgkit.evaluate import MIN_TEST_FRAMES, Reference

    tiny = small_dataset(tmp_path / "tiny", frames=6)
    res = bgkit("evaluate", "--system", "ala2", "--data", tiny, "--n", 10, "--workers", 1, "--out", tmp_path / "ev")
    assert_one_line_error(without_notes(res), "1 test frame", f"at least {MIN_TEST_FRAMES}", str(tiny))
    assert not (tmp_path / "ev").exists()
    # enough frames: accepted (200 frames, 20 test frames)
    assert len(Reference(load_dataset(small_dataset(tmp_path / "ok", chunks=1), ALA2)).xyz) == MIN_TEST_FRAMES
