"""Every repository path, config, tool and ``make`` target named in the Markdown docs and in
train_net.py's docstring exists, so the docs cannot drift from the tree.

A reference is checked when it is a link target, or a path-like word whose first component is
an entry of the repository root (or of the document's own folder): ``configs/voc/...`` is
checked, ``output/...`` (ignored by git), ``img.png`` or ``$DETECTRON2_DATASETS/...`` are not.
URLs and placeholders (``<dataset>``, ``path/to``, ``$VAR``, ``CONFIG``) are skipped; globs
must match a file and ``{a,b}`` must exist for every choice.
"""

from __future__ import annotations

import ast
import fnmatch
import glob
import os
import re
from pathlib import Path

import pytest
from ovseg_testing import ROOT

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)")
WORD = re.compile(r"[\w./*+{},<>$~-]+")
MAKE = re.compile(r"(?:^|[;&|(]\s*|\$\s+)make((?:\s+[^\s;&|#()]+)*)")
PYTHON_MODULE = re.compile(r"python[\d.]*\s+-m\s+([\w.]+)")
PLACEHOLDER_PART = re.compile(r"^[A-Z][A-Z0-9_]*$")  # CONFIG, OUT_DIR, HOST
GLOB_CHARS = set("*?[")


def _ignored_names() -> set[str]:
    """Top-level names git ignores (generated folders such as output/ and .venv/)."""
    patterns = [".git"]
    gitignore = ROOT / ".gitignore"
    if gitignore.is_file():
        for line in gitignore.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "!")) and "/" not in line.strip("/"):
                patterns.append(line.strip("/"))
    names = {p.name for p in ROOT.iterdir()}
    return {n for n in names if any(fnmatch.fnmatch(n, pat) for pat in patterns)}


IGNORED = _ignored_names()
TOP_LEVEL = {p.name for p in ROOT.iterdir()} - IGNORED


def doc_files() -> list[Path]:
    """Every Markdown file of the repository outside git-ignored folders."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        if Path(folder) == ROOT:
            dirs[:] = [d for d in dirs if d not in IGNORED]
        dirs[:] = [d for d in dirs if d not in {"__pycache__", ".git"}]
        found += [Path(folder) / f for f in files if f.endswith(".md")]
    return sorted(found)


def make_targets(makefile: Path = ROOT / "Makefile") -> set[str]:
    targets = set()
    for line in makefile.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.%/-]+(?:\s+[A-Za-z0-9_.%/-]+)*)\s*:(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return targets


def split_markdown(text: str) -> tuple[list[str], list[str]]:
    """(code, prose): fenced blocks and code spans, and the remaining text, line by line."""
    code, prose, fenced = [], [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            code.append(line)
            continue
        code += [m.group(2) for m in CODE_SPAN.finditer(line)]
        prose.append(CODE_SPAN.sub(" ", line))
    return code, prose


def _expand_braces(word: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", word)
    if not match:
        return [word]
    head, tail = word[: match.start()], word[match.end() :]
    return [w for choice in match.group(1).split(",") for w in _expand_braces(head + choice + tail)]


def _is_placeholder(word: str) -> bool:
    if any(c in word for c in "<>$~") or "path/to" in word or "..." in word:
        return True
    return any(PLACEHOLDER_PART.match(part) for part in word.split("/"))


def _exists(path: Path, directory: bool) -> bool:
    if GLOB_CHARS & set(str(path)):
        return bool(glob.glob(str(path)))
    return path.is_dir() if directory else path.exists()


def check_path(word: str, folder: Path, link: bool = False, local: bool = True) -> str | None:
    """A message when ``word`` names a repository path that does not exist, else None.
    ``local``: a word may also start from the document's folder (code, not prose)."""
    word = word.split("#")[0].rstrip(".,:;")
    if word.startswith("./"):
        word = word[2:]
    if not word or _is_placeholder(word) or re.match(r"^[a-z]+:", word):
        return None
    first = word.split("/")[0]
    if link:
        base = ROOT if word.startswith("/") else folder
        word = word.lstrip("/")
    elif first in TOP_LEVEL:
        base = ROOT
    elif local and folder != ROOT and first in {p.name for p in folder.iterdir()}:
        base = folder
    else:
        return None
    for choice in _expand_braces(word):
        if not _exists(base / choice, directory=choice.endswith("/")):
            return f"{choice} (from {base.relative_to(ROOT)})"
    return None


def check_commands(line: str, targets: set[str]) -> list[str]:
    """Messages for ``make <target>`` with an unknown target and ``python -m ovseg...`` with
    a missing module."""
    problems = []
    for match in MAKE.finditer(line):
        args = [a for a in match.group(1).split() if "=" not in a and not a.startswith("-")]
        if args and args[0] not in targets and not _is_placeholder(args[0]):
            problems.append(f"make {args[0]} (no such Makefile target)")
    for module in PYTHON_MODULE.findall(line):
        if module.split(".")[0] == "ovseg":
            path = ROOT / module.replace(".", "/")
            if not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()):
                problems.append(f"python -m {module} (no such module)")
    return problems


def problems_in(text: str, folder: Path, targets: set[str]) -> list[str]:
    code, prose = split_markdown(text)
    problems = []
    for line in prose:
        targets_ = LINK.findall(line) + REFERENCE_LINK.findall(line)
        problems += [check_path(t, folder, link=True) for t in targets_]
        line = LINK.sub(" ", line)
        # bare paths in prose: only words with a slash (a plain word is English)
        problems += [check_path(w, folder, local=False) for w in WORD.findall(line) if "/" in w]
    for line in code:
        problems += [check_path(w, folder) for w in WORD.findall(line)]
        problems += check_commands(line, targets)
    return [p for p in problems if p]


DOCS = doc_files()


def test_docs_found():
    names = {str(p.relative_to(ROOT)) for p in DOCS}
    assert {"README.md", "datasets/README.md", "docs/install.md", "docs/results.md"} <= names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_reference_exists(path):
    problems = problems_in(path.read_text(), path.parent, make_targets())
    assert not problems, f"{path.relative_to(ROOT)} names what does not exist: {problems}"


def test_train_net_docstring_names_real_configs():
    docstring = ast.get_docstring(ast.parse((ROOT / "train_net.py").read_text()))
    configs = re.findall(r"configs/\S+\.yaml", docstring)
    assert configs, docstring
    missing = [c for c in configs if not (ROOT / c).is_file()]
    assert not missing, f"train_net.py's docstring names missing configs: {missing}"


def test_checker_reports_what_is_missing_and_skips_the_rest():
    text = "\n".join(
        [
            "See [the base](configs/Base-ovseg.yaml) and [gone](configs/nope.yaml).",
            "Prose naming configs/toy/missing.yaml, [a site](https://example.org/x.md).",
            "```bash",
            "python train_net.py --config-file configs/<dataset>/lseg/x.yaml MODEL.WEIGHTS \\",
            "    path/to/model_final.pth OUTPUT_DIR output/run $DETECTRON2_DATASETS/coco",
            "python tools/no_such_tool.py --config-file CONFIG",
            "make demo QUICK=1 && make no-such-target  # (as make demo) does",
            "python -m ovseg.data.datasets.toy_world; python -m ovseg.nothing_here",
            "ls configs/{voc,toy}/ datasets/prepare_*.py configs/{voc,nowhere}/",
            "```",
            "`make test` and `configs/toy/*.yaml` and `configs/toy/zz_*.yaml`",
        ]
    )
    problems = problems_in(text, ROOT, {"demo", "test"})
    assert sorted(problems) == sorted(
        [
            "configs/nope.yaml (from .)",
            "configs/toy/missing.yaml (from .)",
            "tools/no_such_tool.py (from .)",
            "make no-such-target (no such Makefile target)",
            "python -m ovseg.nothing_here (no such module)",
            "configs/nowhere/ (from .)",
            "configs/toy/zz_*.yaml (from .)",
        ]
    ), problems


def test_makefile_targets_parsed():
    assert {"setup", "test", "lint", "demo"} <= make_targets()
