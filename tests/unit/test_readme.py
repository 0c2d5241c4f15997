"""README's layout section matches the tree: every package file and every rule file is listed.

`python -m tests.unit.test_readme` prints the cytoscreen/ part of the block (one line per file,
described by the first sentence of its docstring) to paste into README.md after adding a module.
"""

from __future__ import annotations

import ast
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


def _first_sentence(path) -> str:
    doc = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split("\n\n")[0].split())
    cut = doc.find(". ")
    doc = (doc if cut < 0 else doc[:cut + 1]).replace("``", "`")
    for role in (":func:", ":class:", ":mod:"):
        doc = doc.replace(role, "")
    return doc if len(doc) <= 100 else doc[:97].rsplit(" ", 1)[0].rstrip(",;:") + " ..."


def package_block() -> str:
    """The cytoscreen/ lines of the README layout block, from the files on disk."""
    schemas = {"config": "the config schema: every key's type, default and description",
               "plates": "one row of the plate table", "platemap": "one row of a platemap"}
    lines, seen = ["cytoscreen/"], set()
    files = sorted(p for p in (REPO / "cytoscreen").rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    for path in files:
        parts = path.relative_to(REPO).parts
        for i in range(1, len(parts) - 1):
            if parts[:i + 1] not in seen:
                seen.add(parts[:i + 1])
                lines.append("  " * i + parts[i] + "/")
        if path.suffix == ".py":
            desc = _first_sentence(path)
        elif "schemas" in parts:
            desc = schemas.get(path.name.split(".")[0], "schema")
        else:
            desc = "report page asset (package data)"
        lines.append(f"{'  ' * (len(parts) - 1) + parts[-1]:<34} {desc}".rstrip())
    return "\n".join(lines)


if __name__ == "__main__":
    print(package_block())
