"""Your own student, heads or datasets in your own module, named by the config that needs it.

A config's ``EXTENSIONS`` lists Python modules (dotted names, e.g.
``projects.dense_adapter.dense_adapter``). :func:`ovseg.engine.defaults.load_config` imports
each before it reads the config's other keys, so whatever the module registers (a
META_ARCH_REGISTRY class, a dense head, a dataset) exists when the config is built, and a
module's ``add_config(cfg)``, when it has one, adds its keys first. Every program that reads a
config goes through ``load_config``: train_net.py and each of its processes, the demo,
:class:`ovseg.Predictor`, the web app, the export and the benchmark. The list is part of the
config, so the run's saved ``config.yaml`` imports the same code when it is evaluated again.

The modules of a config's ``_BASE_`` chain and of its overrides add up (a child names only
what it adds), and the config keeps their union, so its saved copy names them all. A module is
looked up on ``sys.path`` first, then under the repository root (where ``projects/`` lives),
so a shipped project runs from any folder. See docs/new_student.md.
"""

from __future__ import annotations

import ast
import importlib
import logging
import os
import re
import sys
import traceback
import warnings
from typing import List, Sequence

import yaml

from detectron2.config import CfgNode

__all__ = ["KEY", "import_extensions", "requested_extensions"]

logger = logging.getLogger(__name__)

KEY = "EXTENSIONS"
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_EXAMPLE = 'EXTENSIONS: ["projects.dense_adapter.dense_adapter"]'


def requested_extensions(
    config_file: str, opts: Sequence[str] = (), repo_root: str = ""
) -> List[str]:
    """The modules a config asks for, read before the merge (whose other keys may be the
    modules' own): those of its ``_BASE_`` chain, base first, then the file's own, then the
    KEY VALUE overrides' (a bare name there is a one-module list), each once.

    Args:
        repo_root (str): the repository, to name a file under it as a module in an error.

    Raises:
        ValueError: a file that is no mapping, or an EXTENSIONS that is not a list of
            module names.
    """
    names: List[str] = []
    for where, value in _chain_values(config_file, (), repo_root):
        names += _check_names(value, f"config file {where}", repo_root)
    for key, item in zip(opts[::2], opts[1::2]):
        if key == KEY:
            value = _literal(item)
            value = [value] if isinstance(value, str) else value
            names += _check_names(value, "the overrides", repo_root)
    return list(dict.fromkeys(names))


def shipped_base(path: str, repo_root: str) -> str:
    """``path`` when it exists, else the shipped config it names: the longest tail of it
    that is a file under ``repo_root/configs`` or ``repo_root`` (a ``_BASE_:
    toy/maskclip.yaml`` of a user's own file, from an installed ovseg or another folder),
    else ``path`` unchanged (whose error then names it). A URL is left to detectron2. The
    substitution is a warning (``warnings``: shown before any logging is set up, once)."""
    if not repo_root or "://" in path or os.path.exists(path):
        return path
    parts = os.path.normpath(path).split(os.sep)
    for i in range(len(parts)):
        tail = os.path.join(*[p for p in parts[i:] if p])
        for root in (os.path.join(repo_root, "configs"), repo_root):
            if tail and os.path.isfile(os.path.join(root, tail)):
                found = os.path.join(root, tail)
                warnings.warn(
                    f"_BASE_ {path} is not a file: using the shipped {found}", stacklevel=2
                )
                return found
    return path


def _chain_values(config_file: str, seen: tuple, repo_root: str = "") -> list:
    """(file, its own EXTENSIONS) along the ``_BASE_`` chain, the root first (bases are
    resolved as detectron2 resolves them: relative to the file that names them, else a
    shipped config's tail, :func:`shipped_base`)."""
    config_file = shipped_base(config_file, repo_root)
    if config_file in seen:
        raise ValueError(f"config file {config_file} is its own _BASE_ (through {seen})")
    with open(config_file, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.constructor.ConstructorError:  # python tags, as detectron2 allows
            f.seek(0)
            data = yaml.unsafe_load(f)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{config_file} is not a config: its YAML is a {type(data).__name__}, not "
            "KEY: value pairs; pick a .yaml file under configs/ (see README)"
        )
    out = []
    base = data.get("_BASE_")
    if isinstance(base, str) and base:
        base = os.path.expanduser(base)
        if not base.startswith(("/", "https://", "http://")):
            base = os.path.join(os.path.dirname(config_file), base)
        if not base.startswith(("https://", "http://")):
            out += _chain_values(base, (*seen, config_file), repo_root)
    if KEY in data:
        out.append((config_file, data[KEY]))
    return out


def _literal(text):
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _check_names(value, where: str, repo_root: str) -> List[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        raise ValueError(
            f"{KEY} (set in {where}) must be a list, got the string {value!r}; write "
            f"{KEY}: [{value!r}]"
        )
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"{KEY} (set in {where}) must be a list of Python module names, got {value!r}; "
            f"e.g. {_EXAMPLE}"
        )
    names = [str(v) for v in value]
    for name in names:
        if name.endswith(".py") or "/" in name or os.sep in name:
            raise ValueError(
                f"{KEY} (set in {where}) names the file {name!r}; it takes module names: "
                f"{_module_for_file(name, repo_root)}"
            )
        if not _DOTTED.match(name):
            raise ValueError(
                f"{KEY} (set in {where}) names {name!r}, which is not a dotted Python module "
                f"name; e.g. {_EXAMPLE}"
            )
    return names


def _module_for_file(name: str, repo_root: str) -> str:
    """What to write instead of a file path: the module's dotted name and, for a file
    outside the repository, the folder PYTHONPATH needs."""
    path = os.path.abspath(os.path.expanduser(name))
    stem = path[: -len(".py")] if path.endswith(".py") else path
    rel = os.path.relpath(stem, repo_root) if repo_root else os.pardir
    if os.path.exists(path) and not rel.startswith(os.pardir):
        return f"{rel.replace(os.sep, '.')!r} (found from the repository root)"
    if os.path.exists(path):
        return f"{os.path.basename(stem)!r}, with PYTHONPATH={os.path.dirname(stem)}"
    return f"{os.path.basename(stem)!r}, with the folder that holds it on PYTHONPATH"


def import_extensions(names: Sequence[str], cfg: CfgNode, repo_root: str) -> None:
    """Import each module (once per process) and call its ``add_config(cfg)``, if any;
    a module not on ``sys.path`` is looked for under ``repo_root``.

    Raises:
        ValueError: a module that cannot be found, that registers a name already taken, or
            whose import or ``add_config`` raises a ValueError or OSError (named, with the
            file and line). Other errors inside a module propagate as they are.
    """
    for name in names:
        module = _guarded(name, "while it was imported", lambda n=name: _import(n, repo_root))
        add_config = getattr(module, "add_config", None)
        if callable(add_config):
            _guarded(name, "in add_config(cfg)", lambda fn=add_config: fn(cfg))


def _guarded(name: str, when: str, action):
    """``action()``; a user-level error raised inside a module names the module and where."""
    try:
        return action()
    except AssertionError as e:
        if "already registered" not in str(e):
            raise
        raise ValueError(
            f"{KEY} module {name!r} registers a name that is already taken ({e}); give the "
            "class a name of its own. A registry keeps the first class of a name: after "
            "editing a module, start a new Python process instead of reloading it"
        ) from e
    except (ValueError, OSError) as e:
        if str(e).startswith(f"{KEY} "):  # ours: already says what to do
            raise
        frame = traceback.extract_tb(e.__traceback__)[-1]
        raise ValueError(
            f"{KEY} module {name!r} failed {when} ({frame.filename}:{frame.lineno}): "
            f"{type(e).__name__}: {e}"
        ) from e


def _import(name: str, repo_root: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if not _is_part_of(e.name, name):
            raise  # the extension itself imports something that is missing
    top = name.split(".")[0]
    at_root = os.path.isdir(os.path.join(repo_root, top)) or os.path.isfile(
        os.path.join(repo_root, top + ".py")
    )
    # a namespace package already imported (tests/projects beside projects/) takes in the
    # root's portion once the root is on sys.path; a regular package of the name cannot
    loaded = sys.modules.get(top)
    open_to_root = loaded is None or getattr(loaded, "__file__", None) is None
    if repo_root not in sys.path and at_root and open_to_root:
        sys.path.append(repo_root)
        logger.info("Importing %s from the repository root %s", name, repo_root)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not _is_part_of(e.name, name):
                raise
    raise ValueError(f"{KEY} names the module {name!r}, which cannot be imported: {_why(top)}")


def _why(top: str) -> str:
    """What to do about a module that was not found, from where its top package is."""
    loaded = sys.modules.get(top)
    if loaded is not None and getattr(loaded, "__file__", None) is not None:
        where = list(getattr(loaded, "__path__", []) or [getattr(loaded, "__file__", "?")])
        return (
            f"{top!r} is already the package at {', '.join(map(str, where))}, which does not "
            f"hold it; give your package a name of its own"
        )
    cwd = os.getcwd()
    if os.path.isdir(os.path.join(cwd, top)) or os.path.isfile(os.path.join(cwd, top + ".py")):
        return (
            f"{top!r} is in the working directory {cwd}, which a script does not search; "
            f"run with PYTHONPATH={cwd} (in Python: sys.path.insert(0, {cwd!r}))"
        )
    return (
        f"put the folder that holds {top!r} on PYTHONPATH (PYTHONPATH=/path/to/folder before "
        "the command; in Python: sys.path.insert(0, '/path/to/folder')), or fix the name"
    )


def _is_part_of(missing: str | None, name: str) -> bool:
    """Whether the module that was not found is ``name`` or one of its parents."""
    return missing is not None and (name == missing or name.startswith(missing + "."))
