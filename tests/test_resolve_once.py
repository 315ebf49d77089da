"""`bgkit sample` and `bgkit train` resolve the --system name once, at the command line, and check it once:
every layer below (proposal, sampling, energies, training) is handed the same System object."""
from __future__ import annotations

import json
import sys
from collections import Counter

import pytest
from click.testing import CliRunner

import bgkit.cli
import bgkit.energy
import bgkit.md.dataset
import bgkit.proposal
import bgkit.sample
import bgkit.systems
import bgkit.train.molecular
from bgkit.proposal import Proposal
from bgkit.systems import System


@pytest.fixture
def calls(monkeypatch):
    """Counter of what was called: ("load_system", its argument) for every load_system call, "check_system"
    for every proposal check, "check_unconstrained" for every training check of a System (each still runs)."""
    seen: Counter = Counter()
    original = bgkit.systems.load_system

    def load_system(name_or_path):
        seen["load_system", name_or_path if not isinstance(name_or_path, System) else "a System"] += 1
        return original(name_or_path)

    for module in [m for name, m in sys.modules.items() if name == "bgkit" or name.startswith("bgkit.")]:
        if getattr(module, "load_system", None) is original:  # every module that bound the name, and the package
            monkeypatch.setattr(module, "load_system", load_system)

    def counted(name, method):
        def wrapper(self, *args, **kwargs):
            seen[name] += 1
            return method(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(Proposal, "check_system", counted("check_system", Proposal.check_system))
    monkeypatch.setattr(System, "check_unconstrained", counted("check_unconstrained", System.check_unconstrained))
    return seen


def _system_names(seen: Counter) -> dict:
    """load_system calls by argument."""
    return {arg: n for (what, *rest), n in seen.items() if what == "load_system" for arg in rest}


def test_sample_resolves_and_checks_the_system_once(calls, tmp_path):
    out = tmp_path / "s"
    res = CliRunner().invoke(bgkit.cli.main, ["sample", "--system", "ala2", "--n", "20", "--batch-size", "20",
                                              "--workers", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["n"] == 20
    assert _system_names(calls) == {"ala2": 1}  # resolved once; no layer below re-resolves (not even a System)
    assert calls["check_system"] == 1  # the proposal checked against it once (not again when drawing)


def test_train_resolves_and_checks_the_system_once(calls, tmp_path):
    """Maximum likelihood from the shipped proposal (--init, which is checked against the system too)."""
    out, folder = tmp_path / "m.pt", bgkit.systems.systems_dir() / "ala2"
    res = CliRunner().invoke(bgkit.cli.main, ["train", "--system", "ala2", "--arch", "nsf", "--objective", "mle",
                                              "--init", str(folder / "proposal.pt"), "--steps", "1",
                                              "--batch-size", "8", "--max-frames", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file()
    names = _system_names(calls)
    assert names.pop("ala2") == 1 and "a System" not in names  # the --system name, resolved once
    assert all(str(arg) == str(folder / "md" / "system") for arg in names), names  # else the dataset's own copy
    assert calls["check_unconstrained"] == 1 and calls["check_system"] == 1  # the system; the --init proposal
