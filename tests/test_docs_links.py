"""The README is a short front door, and every relative link in the documentation points to a file that exists."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from _cli_helpers import REPO

README_MAX_LINES = 160

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets, e.g. [`a[0]`](x)
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+[\"'(][^)]*)?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)  # http:, https:, mailto:, ... and protocol-relative


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "systems").glob("*/README.md"))]


def link_targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link outside code blocks and code spans."""
    found, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = CODE_SPAN.sub("", line)
        found += [(number, m.group(1)) for m in INLINE.finditer(line)]
        found += [(number, m.group(1)) for m in REFERENCE.finditer(line)]
    return found


def broken_links(text: str, base: Path) -> list[str]:
    """Relative links of a markdown text (a file in folder base) whose file does not exist."""
    broken = []
    for number, target in link_targets(text):
        target = target.strip("<>")
        if not target or target.startswith("#") or EXTERNAL.match(target):
            continue
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if not path or not (base / path).exists():
            broken.append(f"line {number}: {target}")
    return broken


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_a_file(doc):
    assert broken_links(doc.read_text(), doc.parent) == []


def test_the_documentation_is_found():
    names = {str(p.relative_to(REPO)) for p in doc_files()}
    assert {"README.md", "docs/results.md", "docs/architecture.md", "systems/ala2/README.md"} <= names


def test_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    targets = {t for _, t in link_targets(readme)}
    assert {"docs/results.md", "docs/architecture.md"} <= targets


def test_a_broken_link_is_caught(tmp_path):
    readme = (REPO / "README.md").read_text()
    assert broken_links(readme, REPO) == []
    broken = readme + "\nSee [the missing page](docs/no_such_page.md#part) and ![a figure](systems/ala2/none.png).\n"
    assert broken_links(broken, REPO) == [f"line {len(readme.splitlines()) + 2}: docs/no_such_page.md#part",
                                          f"line {len(readme.splitlines()) + 2}: systems/ala2/none.png"]
    # a copy on disk, relative to its own folder: fine beside its target, broken without it
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# a\n")
    page = tmp_path / "page.md"
    page.write_text("[a](docs/a.md) [a, part](docs/a.md#a) [ref]\n\n[ref]: <docs/a.md>\n")
    assert broken_links(page.read_text(), tmp_path) == []
    (tmp_path / "docs" / "a.md").unlink()
    assert len(broken_links(page.read_text(), tmp_path)) == 3


def test_what_is_not_a_relative_link_is_ignored(tmp_path):
    text = ("[web](https://example.org/x.md) [mail](mailto:a@b.c) [here](#two-commands) [plain](http://x)\n"
            "`[code](nowhere.md)` and\n```\n[fenced](nowhere.md)\n```\n")
    assert broken_links(text, tmp_path) == []
    assert broken_links(text + "[real](nowhere.md)\n", tmp_path) == ["line 6: nowhere.md"]
