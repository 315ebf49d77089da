"""The files bgkit writes and reads are strict: JSON without bare NaN/Infinity (undefined values are null), YAML
without silently overridden duplicate keys."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from _cli_helpers import assert_one_line_error, bgkit

from bgkit import BgkitError

PACKAGE = Path(__file__).resolve().parents[1] / "bgkit"


def strict_loads(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as strict JSON parsers do."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_undefined_values_are_written_as_null(tmp_path):
    from bgkit.evaluate import write_metrics
    from bgkit.provenance import atomic_write_json, dumps_json

    value = {"nan": float("nan"), "inf": -math.inf, "np": np.float32("nan"), "ok": np.float64(1.5),
             "nested": [{"a": np.array([1.0, np.inf])}, (np.int64(3), np.bool_(True))], 7: Path("x")}
    assert strict_loads(dumps_json(value)) == {"nan": None, "inf": None, "np": None, "ok": 1.5,
                                               "nested": [{"a": [1.0, None]}, [3, True]], "7": "x"}
    strict_loads(atomic_write_json(value, tmp_path / "a.json").read_text())
    metrics = write_metrics({"system": "ala2", "nll_test": float("nan"), "t_w2_proposal": np.float64("inf")}, tmp_path)
    loaded = strict_loads(metrics.read_text())
    assert loaded["nll_test"] is None and loaded["t_w2_proposal"] is None


def test_every_json_file_is_written_by_the_strict_helper():
    """No json.dump/json.dumps in the package outside bgkit.provenance (whose dumps_json is allow_nan=False)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "provenance.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bjson\.dumps?\(", line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{n}")
    assert offenders == []
    assert "allow_nan=False" in (PACKAGE / "provenance.py").read_text()


@pytest.mark.parametrize("text, fragment", [
    ("a: 1\nb: 2\na: 3\n", "key 'a' is given twice (lines 1 and 3)"),
    ("x: {a: 1, a: 2}\n", "key 'a' is given twice"),
    ("base: &b {a: 1}\nx:\n  <<: *b\n  a: 2\n", None),  # a YAML merge key may be overridden
])
def test_yaml_files_refuse_duplicate_keys(tmp_path, text, fragment):
    from bgkit.provenance import load_yaml

    f = tmp_path / "f.yaml"
    f.write_text(text)
    if fragment is None:
        assert load_yaml(f)["x"] == {"a": 2}
        return
    with pytest.raises(BgkitError) as err:
        load_yaml(f, "states file")
    assert fragment in str(err.value) and str(f) in str(err.value)


def test_fep_refuses_a_states_file_defining_a_state_twice(tmp_path):
    states = tmp_path / "states.yaml"
    states.write_text("alpha_R:\n  phi: [-180, 0]\n  psi: [-120, 50]\nalpha_R:\n  phi: [-180, 0]\n  psi: [50, -120]\n")
    res = bgkit("fep", "--system", "ala2", "--states", states, "--from", "alpha_R", "--to", "C7eq_beta",
                "--methods", "counting", "--out", tmp_path / "o")
    assert_one_line_error(res, str(states), "'alpha_R' is given twice (lines 1 and 4)")
    assert not (tmp_path / "o").exists()


def test_a_system_yaml_with_a_key_twice_is_refused(tmp_path):
    import shutil

    from bgkit.systems import load_system

    folder = tmp_path / "s"
    folder.mkdir()
    shipped = load_system("ala2").folder
    shutil.copy(shipped / "ala2.pdb", folder)
    (folder / "system.yaml").write_text((shipped / "system.yaml").read_text() + "temperature_K: 310\n")
    res = bgkit("systems", "show", folder)
    assert_one_line_error(res, "system.yaml", "'temperature_K' is given twice")
