"""The README's config tree ("## Configs") is configs/ exactly: every YAML file appears once,
under the file its ``_BASE_`` names."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ovseg_testing import ROOT

CONFIGS = ROOT / "configs"
BRANCH = re.compile(r"^((?:│   |    )*)(?:├── |└── )(\S+)")


def actual_tree() -> dict[str, str | None]:
    """configs/-relative path -> the configs/-relative path its _BASE_ names (None at the root)."""
    bases = {}
    for path in sorted(CONFIGS.rglob("*.yaml")):
        match = re.search(r"^_BASE_:\s*(\S+)", path.read_text(encoding="utf-8"), re.M)
        rel = path.relative_to(CONFIGS).as_posix()
        base = None
        if match:
            base = os.path.normpath(path.parent / match.group(1).strip("\"'"))
            base = Path(base).relative_to(CONFIGS).as_posix()
        bases[rel] = base
    return bases


def readme_tree() -> dict[str, str | None]:
    """The same map as the README draws it (a bare name lies in its parent's folder)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Configs\n.*?```\n(.*?)```", text, re.S).group(1)
    lines = block.splitlines()
    drawn = {lines[0].split()[0]: None}
    stack = [lines[0].split()[0]]
    for line in lines[1:]:
        match = BRANCH.match(line)
        assert match, f"README config tree: cannot read the line {line!r}"
        depth = len(match.group(1)) // 4 + 1
        parent = stack[depth - 1]
        name = match.group(2)
        if "/" not in name:
            name = (Path(parent).parent / name).as_posix()
        assert name not in drawn, f"README config tree lists {name} twice"
        drawn[name] = parent
        stack[depth:] = [name]
    return drawn


def test_readme_config_tree_is_configs_exactly():
    drawn, actual = readme_tree(), actual_tree()
    assert sorted(set(actual) - set(drawn)) == [], "configs missing from the README tree"
    assert sorted(set(drawn) - set(actual)) == [], "README tree names configs that do not exist"
    wrong = {k: (drawn[k], actual[k]) for k in actual if drawn[k] != actual[k]}
    assert wrong == {}, "README tree parent != _BASE_ (drawn, actual)"
