"""The evaluation reference: one or several datasets' test splits, joined, and their MD noise floor."""
from __future__ import annotations

import numpy as np
import pytest
from _cli_helpers import assert_one_line_error, bgkit

from bgkit import BgkitError
from bgkit.dihedrals import torsions
from bgkit.evaluate import Reference, noise_floor
from bgkit.md.dataset import load_dataset
from bgkit.metrics import torsion_w2
from bgkit.systems import load_system


@pytest.fixture(scope="module")
def ala2_datasets():
    system = load_system("ala2")
    return [load_dataset(system.folder / name, system) for name in ("md", "md_rex")]


def w2_equal_sizes(a: np.ndarray, b: np.ndarray) -> float:
    """1-D W2 between two equal-size samples: the sorted values are matched (the quantile coupling)."""
    assert len(a) == len(b)
    return float(np.sqrt(np.mean((np.sort(a) - np.sort(b)) ** 2)))


def test_joined_reference_holds_every_test_split_in_order(ala2_datasets):
    ref = Reference(ala2_datasets)
    np.testing.assert_array_equal(ref.xyz, np.concatenate([d.split("test") for d in ala2_datasets]))
    lengths = [len(d.split_indices()["test"]) for d in ala2_datasets]
    record = ref.record()
    assert record["frames"] == len(ref.energies_kt) == sum(lengths)
    assert record["frames_per_dataset"] == lengths
    assert record["datasets"] == [str(d.folder) for d in ala2_datasets]
    first = ala2_datasets[0].split_indices()["test"]
    np.testing.assert_array_equal(ref.energies_kt[: len(first)], ala2_datasets[0].energies_kt[first])


def test_noise_floor_compares_test_frames_with_each_datasets_first_other_frames(ala2_datasets):
    """E-W2 against the quantile coupling by hand; the block is each dataset's first n_test non-test frames."""
    blocks, tests = [], []
    for d in ala2_datasets:
        test = d.split_indices()["test"]
        other = np.setdiff1d(np.arange(d.n_frames), test)
        blocks.append(other[: len(test)])
        tests.append(test)
    single = noise_floor(Reference(ala2_datasets[0]), max_ot=500)
    assert single["e_w2"] == pytest.approx(
        w2_equal_sizes(ala2_datasets[0].energies_kt[tests[0]], ala2_datasets[0].energies_kt[blocks[0]]), rel=1e-6)
    joined = noise_floor(Reference(ala2_datasets), max_ot=500)
    e_test = np.concatenate([d.energies_kt[t] for d, t in zip(ala2_datasets, tests)])
    e_block = np.concatenate([d.energies_kt[b] for d, b in zip(ala2_datasets, blocks)])
    assert joined["e_w2"] == pytest.approx(w2_equal_sizes(e_test, e_block), rel=1e-6)
    assert joined["block_frames"] == [[int(b[0]), int(b[-1]) + 1] for b in blocks]
    assert joined["frames"] == len(e_block)
    system = ala2_datasets[0].system
    t_test = torsions(np.concatenate([d.xyz[t] for d, t in zip(ala2_datasets, tests)]), system)
    t_block = torsions(np.concatenate([d.xyz[b] for d, b in zip(ala2_datasets, blocks)]), system)
    assert joined["t_w2"] == pytest.approx(torsion_w2(t_test, t_block, max_samples=500, seed=0), rel=1e-9)


def test_reference_refuses_repeated_or_foreign_datasets(ala2_datasets):
    with pytest.raises(BgkitError, match="given twice"):
        Reference([ala2_datasets[0], ala2_datasets[0]])
    ala3 = load_system("ala3")
    with pytest.raises(BgkitError, match="different systems"):
        Reference([ala2_datasets[0], load_dataset(ala3.folder, ala3)])
    with pytest.raises(BgkitError, match="at least one"):
        Reference([])


def test_evaluate_refuses_a_dataset_given_twice_in_one_line(tmp_path):
    md = load_system("ala2").folder / "md"
    res = bgkit("evaluate", "--system", "ala2", "--n", 10, "--data", md, "--data", md, "--out", tmp_path / "ev")
    assert_one_line_error(res, "given twice")
    assert not (tmp_path / "ev").exists()


def user_system(tmp_path, reference_line: str):
    """A copy of the ala2 system folder whose system.yaml ends with ``reference_line``, sharing the shipped data."""
    import shutil

    shipped = load_system("ala2").folder
    folder = tmp_path / "mysys"
    folder.mkdir()
    shutil.copy(shipped / "ala2.pdb", folder)
    text = "".join(line for line in (shipped / "system.yaml").read_text().splitlines(True)
                   if not line.startswith("reference:"))  # a key given twice is refused
    (folder / "system.yaml").write_text(text + reference_line + "\n")
    for name in ("md", "md_rex"):
        (folder / name).symlink_to(shipped / name)
    return folder


def test_system_yaml_names_the_default_reference(tmp_path, ala2_datasets):
    system = load_system(user_system(tmp_path, "reference: [md, md_rex]"))
    ref = Reference.of_system(system)
    assert ref.record()["frames_per_dataset"] == Reference(ala2_datasets).record()["frames_per_dataset"]
    np.testing.assert_array_equal(ref.energies_kt, Reference(ala2_datasets).energies_kt)
    shipped = load_system("ala2").folder  # ala2's own reference joins the plain MD and the replica exchange
    assert Reference.of_system(load_system("ala2")).record()["datasets"] == [str(shipped / "md"), str(shipped / "md_rex")]


@pytest.mark.parametrize("line, message", [("reference: [md, nothere]", "has no reference data"),
                                           ("reference: []", "malformed"), ("reference: [/abs/md]", "malformed"),
                                           ("reference: [../md]", "malformed"),
                                           ("reference: {md: 1}", "malformed")])
def test_bad_reference_entries_fail_in_one_line(tmp_path, line, message):
    with pytest.raises(BgkitError, match=message):
        Reference.of_system(load_system(user_system(tmp_path, line)))
