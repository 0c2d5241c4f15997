"""README's layout section matches the tree: every package file and every rule file is listed."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _layout_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Layout\n"):]
    return section[section.index("```\n") + 4:section.index("\n```", section.index("```\n") + 4)].splitlines()


def _package_tree(lines: list[str]) -> set[str]:
    """The paths under cytoscreen/ that the indented block names."""
    start = lines.index("cytoscreen/")
    paths, stack = set(), ["cytoscreen"]
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        del stack[depth:]
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
        else:
            paths.add("/".join([*stack, name]))
    return paths


def test_layout_lists_every_package_file():
    on_disk = {
        str(p.relative_to(REPO)) for p in (REPO / "cytoscreen").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    listed = _package_tree(_layout_block())
    assert listed == on_disk, f"README lists, not in the tree: {sorted(listed - on_disk)}; " \
                              f"in the tree, not in README: {sorted(on_disk - listed)}"


def test_layout_names_every_rule_file():
    block = "\n".join(_layout_block())
    stages = re.search(r"<stage>\.smk\s+one thin rule per `cytoscreen` call \(([^)]*)\)", block, re.S)
    assert stages, "README layout has no workflow/rules/<stage>.smk line"
    named = {s.strip() for s in stages.group(1).replace("\n", " ").split(",")}
    rules = {p.stem for p in (REPO / "workflow" / "rules").glob("*.smk")} - {"common"}
    assert named == rules
