"""Your own student, heads or datasets in your own module, named by the config that needs it.

A config's ``EXTENSIONS`` lists Python modules (dotted names, e.g.
``projects.dense_adapter.dense_adapter``). :func:`ovseg.engine.defaults.load_config` imports
each before it reads the config's other keys, so whatever the module registers (a
META_ARCH_REGISTRY class, a dense head, a dataset) exists when the config is built, and a
module's ``add_config(cfg)``, when it has one, adds its keys first. Every program that reads a
config goes through ``load_config``: train_net.py and each of its processes, the demo,
:class:`ovseg.Predictor`, the web app, the export and the benchmark. The list is part of the
config, so the run's saved ``config.yaml`` imports the same code when it is evaluated again.

A module is looked up on ``sys.path`` first, then under the repository root (where
``projects/`` lives), so a shipped project runs from any folder. See docs/new_student.md.
"""

from __future__ import annotations

import ast
import importlib
import logging
import os
import re
import sys
from typing import List, Sequence

from detectron2.config import CfgNode

__all__ = ["KEY", "import_extensions", "requested_extensions"]

logger = logging.getLogger(__name__)

KEY = "EXTENSIONS"
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def requested_extensions(config_file: str, opts: Sequence[str] = ()) -> List[str]:
    """The modules a config and its overrides ask for: the ``EXTENSIONS`` that merging the
    file's ``_BASE_`` chain and then the KEY VALUE overrides would leave, read before the
    merge (whose other keys may be the extensions' own).

    Raises:
        ValueError: the file is not a mapping, or EXTENSIONS is not a list of module names.
    """
    merged = CfgNode.load_yaml_with_base(config_file, allow_unsafe=True)
    if not isinstance(merged, dict):
        raise ValueError(
            f"{config_file} is not a config: its YAML is a {type(merged).__name__}, not "
            "KEY: value pairs; pick a .yaml file under configs/ (see README)"
        )
    value, where = merged.get(KEY, []), f"config file {config_file}"
    for key, item in zip(opts[::2], opts[1::2]):
        if key == KEY:
            value, where = _literal(item), "the overrides"
    return _check_names(value, where)


def _literal(text):
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _check_names(value, where: str) -> List[str]:
    if isinstance(value, str):
        value = [value] if value else []
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"{KEY} (set in {where}) must be a list of Python module names, got {value!r}; "
            'e.g. EXTENSIONS: ["projects.dense_adapter.dense_adapter"]'
        )
    names = [str(v) for v in value]
    for name in names:
        if not _DOTTED.match(name):
            hint = ""
            if name.endswith(".py") or "/" in name or os.sep in name:
                dotted = re.sub(r"\.py$", "", name).replace(os.sep, ".").replace("/", ".")
                hint = f" (a module name, not a file: {dotted.strip('.')!r})"
            raise ValueError(
                f"{KEY} (set in {where}) names {name!r}, which is not a dotted Python module "
                f"name{hint}"
            )
    return names


def import_extensions(names: Sequence[str], cfg: CfgNode, repo_root: str) -> None:
    """Import each module (once per process) and call its ``add_config(cfg)``, if any;
    a module not on ``sys.path`` is looked for under ``repo_root``.

    Raises:
        ValueError: a module found neither on ``sys.path`` nor under ``repo_root``, with
            what to do (an import that fails inside the module is the module's own error).
    """
    for name in names:
        module = _import(name, repo_root)
        add_config = getattr(module, "add_config", None)
        if callable(add_config):
            add_config(cfg)


def _import(name: str, repo_root: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if not _is_part_of(e.name, name):
            raise  # the extension itself imports something that is missing
    top = name.split(".")[0]
    if repo_root not in sys.path and os.path.exists(os.path.join(repo_root, top)):
        sys.path.append(repo_root)
        logger.info("Importing %s from the repository root %s", name, repo_root)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not _is_part_of(e.name, name):
                raise
    raise ValueError(
        f"{KEY} names the module {name!r}, which cannot be imported (from {os.getcwd()}, "
        f"nor from the repository root {repo_root}); put the folder that holds "
        f"{top!r} on PYTHONPATH (PYTHONPATH=/path/to/folder python train_net.py ...), or "
        "fix the name in the config"
    )


def _is_part_of(missing: str | None, name: str) -> bool:
    """Whether the module that was not found is ``name`` or one of its parents."""
    return missing is not None and (name == missing or name.startswith(missing + "."))
