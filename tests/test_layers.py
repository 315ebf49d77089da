"""Import layers of bgkit: no import cycles, and every module imports only from its own or lower layers.

Every import counts: module level and inside functions, absolute and relative
(``from . import x``). Importing ``a.b.c`` also runs the package ``a.b``, so that
package counts as imported too (except by modules inside it). A new module
fails the test until it is placed in a layer of ``LAYERS``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

#: Layers, lowest first: number, name, modules. Names are relative to ``bgkit`` (``bgkit`` alone: the
#: package's ``__init__``); ``x.*`` is the package ``x`` and every module under it, and the most specific
#: entry wins (``a.b`` over ``a.*``). A module may import only from its own or lower layers.
LAYERS = """
0  core      bgkit  provenance  outputs  arrays  distributed  limits  blocks  units
1  physics   systems.*  dihedrals  io  build  energy  _energy_worker  symmetry  coords.*  chirality  md.*
2  models    flows.*  checkpoint  proposal
3  analysis  reweight  metrics  free_energy.*  sample  evaluate  plots  diagnose  coverage  protocols
4  training  train.*
5  workflow  fep_workflow  refine  refine_folder
6  entry     bench.*  cli.*  __main__
"""

#: (importer, imported) -> reason: known violations, each to be fixed and removed (the test fails once one is gone)
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}

PACKAGE = Path(__file__).resolve().parents[1] / "bgkit"


def layer_table() -> list[tuple[int, str, list[str]]]:
    """(layer number, name, module patterns) of each line of the table."""
    rows = []
    for line in LAYERS.strip().splitlines():
        number, name, *patterns = line.split()
        rows.append((int(number), name, [p if p == "bgkit" else f"bgkit.{p}" for p in patterns]))
    return rows


def modules() -> dict[str, Path]:
    """Every module of bgkit: dotted name -> file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> int | None:
    """The layer of ``module`` by its most specific pattern, None if no pattern matches."""
    best: tuple[int, int] | None = None  # (specificity, layer)
    for number, _, patterns in layer_table():
        for p in patterns:
            base = p[:-2] if p.endswith(".*") else p
            if module == base or (p.endswith(".*") and module.startswith(base + ".")):
                rank = len(base) * 2 + (0 if p.endswith(".*") else 1)
                if best is None or rank > best[0]:
                    best = (rank, number)
    return None if best is None else best[1]


def _resolve(name: str, known: set[str]) -> str | None:
    """The bgkit module that importing ``name`` loads (its longest known prefix), None outside bgkit."""
    parts = name.split(".")
    if parts[0] != "bgkit":
        return None
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts) if parts else None


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """bgkit modules that ``module`` imports explicitly (anywhere in the file)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(_resolve(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                out.add(sub if sub in known else _resolve(source, known))
    out.discard(None)
    out.discard(module)
    return out


def with_packages(importer: str, imported: set[str]) -> set[str]:
    """``imported`` plus the packages that importing them runs (not ``bgkit`` itself, nor the importer's own)."""
    out = set(imported)
    for name in imported:
        parts = name.split(".")
        for i in range(2, len(parts)):
            package = ".".join(parts[:i])
            if importer != package and not importer.startswith(package + "."):
                out.add(package)
    return out


def graph() -> dict[str, set[str]]:
    """Import graph of bgkit: module -> the bgkit modules it loads."""
    mods = modules()
    known = set(mods)
    return {m: with_packages(m, imports_of(m, p, known)) for m, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle [a, b, ..., a] of the graph, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def closure(g: dict[str, set[str]], start: str) -> set[str]:
    """Every module that importing ``start`` may load (transitively), known violations left out."""
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for nxt in g.get(node, ()):
            if nxt not in seen and (node, nxt) not in KNOWN_VIOLATIONS:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_sees_every_kind_of_import():
    g = graph()
    assert "bgkit.md.chunks" in g["bgkit.md.simulate"]  # module-level absolute import
    assert "bgkit.coords.geometry" in g["bgkit.coords.internal"]  # relative import
    assert "bgkit.md.simulate" in g["bgkit.cli.md"]  # import inside a function
    assert "bgkit.md" in g["bgkit.evaluate"]  # the package an import runs


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if layer_of(m) is None]
    assert not unplaced, (f"place {', '.join(unplaced)} in a layer of the table at the top of tests/test_layers.py "
                          "(the lowest layer whose modules it needs)")


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_modules_import_only_from_their_own_or_lower_layers():
    g = graph()
    names = {number: name for number, name, _ in layer_table()}
    found, bad = set(), []
    for importer, imported in sorted(g.items()):
        low = layer_of(importer)
        for target in sorted(imported):
            high = layer_of(target)
            if low is None or high is None or high <= low:
                continue
            if (importer, target) in KNOWN_VIOLATIONS:
                found.add((importer, target))
                continue
            bad.append(f"{importer} (layer {low} {names[low]}) imports {target} (layer {high} {names[high]})")
    assert not bad, "layer violations:\n" + "\n".join(bad)
    stale = sorted(set(KNOWN_VIOLATIONS) - found)
    assert not stale, f"fixed: remove {stale} from KNOWN_VIOLATIONS in tests/test_layers.py"


@pytest.mark.parametrize("model", ["bgkit.coords", "bgkit.flows", "bgkit.proposal"])
def test_the_model_layer_never_imports_training(model):
    g = graph()
    for m in [x for x in g if x == model or x.startswith(model + ".")]:
        assert not {x for x in closure(g, m) if x.startswith("bgkit.train")}, f"{m} imports bgkit.train"


def test_md_imports_neither_flows_nor_training():
    g = graph()
    for m in [x for x in g if x == "bgkit.md" or x.startswith("bgkit.md.")]:
        bad = {x for x in closure(g, m) if x.startswith(("bgkit.flows", "bgkit.train"))}
        assert not bad, f"{m} imports {sorted(bad)}"


def test_nothing_imports_the_entry_points():
    entry = ("bgkit.cli", "bgkit.bench", "bgkit.__main__")
    g = graph()
    for importer, imported in g.items():
        if importer.startswith(entry):
            continue
        bad = {x for x in imported if x == "bgkit.cli" or x.startswith(entry)}
        assert not bad, f"{importer} imports the entry point(s) {sorted(bad)}"
