"""bgkit.outputs.write_output_folder: an output folder is written completely or not at all."""
from __future__ import annotations

import json

import pytest

from bgkit import BgkitError
from bgkit.outputs import MARKER, write_output_folder


def _write(tmp):
    (tmp / "a.json").write_text("{}")
    return ["a.json", "later.txt"]  # later.txt: a file a later step adds


def test_a_complete_folder_is_moved_into_place_with_its_marker(tmp_path):
    out = tmp_path / "out"
    assert write_output_folder(out, "bgkit.test", _write, force=False) == out
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "a.json"])
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "bgkit.test" and marker["files"] == ["a.json", "later.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no working folder left beside it


def test_a_failed_write_leaves_the_old_folder_and_no_working_folder(tmp_path):
    out = tmp_path / "out"
    write_output_folder(out, "bgkit.test", _write, force=False)

    def broken(tmp):
        (tmp / "a.json").write_text('{"new": 1}')
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_output_folder(out, "bgkit.test", broken, force=True)
    assert (out / "a.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_existing_folder_is_replaced_only_with_force(tmp_path):
    out = tmp_path / "out"
    write_output_folder(out, "bgkit.test", _write, force=False)
    with pytest.raises(BgkitError, match="exists"):
        write_output_folder(out, "bgkit.test", lambda tmp: [], force=False)
    assert (out / "a.json").exists()
    write_output_folder(out, "bgkit.test", lambda tmp: [], force=True)
    assert [p.name for p in out.iterdir()] == [MARKER]
