"""Config set-up shared by train_net.py, the demo and the tools."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
from typing import Any

import torch
import yaml

from detectron2.config import CfgNode, get_cfg
from detectron2.utils.logger import setup_logger

from ..config import add_ovseg_config
from ..utils.io import atomic_write_text
from .checks import check_config, check_meta_architecture, trained_unseen_warning
from .extensions import import_extensions, requested_extensions, shipped_base

logger = logging.getLogger(__name__)

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
# a file every copy of the repository's configs holds
_ROOT_MARKER = os.path.join("configs", "Base-ovseg.yaml")


def find_repo_root(package_dir: str = _PACKAGE_DIR) -> str:
    """The folder holding the shipped ``configs/`` and ``checkpoints/``: the copy a built
    ovseg carries inside its package (``ovseg/_shipped``, written by setup.py), else the
    checkout around the package (a source tree or an editable install)."""
    shipped = os.path.join(package_dir, "_shipped")
    if os.path.isfile(os.path.join(shipped, _ROOT_MARKER)):
        return shipped
    return os.path.dirname(package_dir)


# where configs/ and checkpoints/ are: the checkout, or an installed package's own copy
REPO_ROOT = find_repo_root()
# config keys naming files that shipped configs give relative to the repository root
_REPO_RELATIVE_KEYS = (("CLIP", "MODEL_NAME"), ("CLIP", "PRETRAINED"), ("WEIGHTS",))


def load_config(config_file: str, opts: list[str] | None = None) -> CfgNode:
    """detectron2 defaults + ovseg's keys + a YAML file (with ``_BASE_``) + KEY VALUE pairs."""
    if not config_file:
        raise ValueError("No --config-file given; pick one under configs/ (see README).")
    config_file = repo_file(config_file)
    if not os.path.isfile(config_file):
        what = "is a folder, not a file" if os.path.isdir(config_file) else "does not exist"
        raise FileNotFoundError(
            f"Config file {config_file!r} {what}; pick a .yaml file under configs/ (see README)."
        )
    cfg = get_cfg()
    add_ovseg_config(cfg)
    # EXTENSIONS first: the modules register what the config names and may add its keys
    extensions: list[str] = []
    where = f"config file {config_file}"

    def read() -> None:
        extensions.extend(requested_extensions(config_file, opts or [], REPO_ROOT))

    _merge(cfg, read, where)
    import_extensions(extensions, cfg, REPO_ROOT)
    group = lambda key: _a_mapping_in(config_file, key)  # noqa: E731
    _merge(cfg, lambda: _merge_from_file(cfg, config_file), where, group)
    if opts:
        options = [o for o in opts[::2] if str(o).startswith("--")]
        if options:
            raise ValueError(
                f"{options[0]} comes after the config overrides (KEY VALUE pairs), where it "
                "would be read as a config key; put the tool's options before the overrides"
            )
        if len(opts) % 2:
            raise ValueError(f"--opts/overrides must be KEY VALUE pairs, got an odd list: {opts}")
        _merge(cfg, lambda: cfg.merge_from_list(_custom_as_list(list(opts))), "the overrides")
    cfg.EXTENSIONS = extensions  # the whole chain's and the overrides', which yacs replaces
    check_meta_architecture(cfg)  # a class of a module not named: refused here, not at build
    if cfg.DATASETS.CUSTOM:
        from ..data.datasets.custom import absolute_spec, register_from_config

        register_from_config(cfg)  # before DATASETS.TRAIN/TEST are looked up
        # absolute, so the run's saved config.yaml loads from any working directory
        custom = cfg.DATASETS.CUSTOM
        custom = [custom] if isinstance(custom, (str, dict)) else list(custom)
        cfg.DATASETS.CUSTOM = [
            os.path.abspath(e) if isinstance(e, str) else absolute_spec(e) for e in custom
        ]
    anchor_repo_paths(cfg)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is unavailable: running on cpu.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


class _ShippedBases(CfgNode):
    """detectron2's CfgNode whose ``_BASE_`` files that do not exist are looked for among
    the shipped configs (:func:`~.extensions.shipped_base`); their own bases then resolve
    from where they were found."""

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False):
        return super().load_yaml_with_base(shipped_base(filename, REPO_ROOT), allow_unsafe)


def _merge_from_file(cfg: CfgNode, config_file: str) -> None:
    """``cfg.merge_from_file`` with :class:`_ShippedBases`' ``_BASE_`` resolution."""
    # merge_from_file reads the chain through self.load_yaml_with_base: this cfg's own for
    # the call (yacs takes attributes set the plain way for config keys)
    cfg.__dict__["load_yaml_with_base"] = _ShippedBases.load_yaml_with_base
    try:
        cfg.merge_from_file(config_file)
    finally:
        del cfg.__dict__["load_yaml_with_base"]


def anchor_repo_paths(cfg: CfgNode) -> None:
    """Relative file paths that do not exist from the working directory but do from the
    repository root (the toy configs' "configs/clip/toy_rn.json", "checkpoints/toy_clip_rn.pt")
    are made absolute, so a shipped config runs from any folder, as train_net.py, the tools,
    the demo and :class:`ovseg.Predictor` read it."""
    for keys in _REPO_RELATIVE_KEYS:
        node = cfg.MODEL
        for key in keys[:-1]:
            node = node.get(key)
        value = node.get(keys[-1]) if node is not None else None
        if isinstance(value, str) and value:
            node[keys[-1]] = repo_file(value)


def repo_file(path: str) -> str:
    """``path`` when it is absolute or exists from the working directory, else the file of
    that path under the repository root when there is one (a shipped
    "configs/toy/maskclip.yaml" named from another folder, or by an installed ovseg's
    modules: ``python -m ovseg.benchmark.suite``), else ``path`` unchanged."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    anchored = os.path.join(REPO_ROOT, path)
    return anchored if os.path.isfile(anchored) else path


# yacs: "Type mismatch (<class 'float'> vs. <class 'int'>) with values (0.01 vs. 0) for config
# key: SOLVER.WEIGHT_DECAY"
_TYPE_MISMATCH = re.compile(
    r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values \((.*) vs\. (.*)\) "
    r"for config key: (\S+)$",
    re.S,
)


def _merge(cfg: CfgNode, merge, where: str, is_group=lambda key: False) -> None:
    """Run a yacs merge; a misspelt key, broken YAML or a missing _BASE_ says so plainly
    (``is_group(key)``: whether an unknown key is a whole group, which a module may add)."""
    try:
        merge()
    except (KeyError, AssertionError) as e:
        # yacs: KeyError "Non-existent config key: X" (files), AssertionError (KEY VALUE lists)
        message = str(e.args[0] if e.args else e)
        if " was renamed to " in message:  # yacs: a key of RENAMED_KEYS (ovseg/config.py)
            raise ValueError(f"{message.rstrip('.')} (set in {where})") from None
        if "Non-existent" not in message:
            raise
        key = message.rsplit(":", 1)[-1].strip()
        hint = _close_keys(cfg, key, is_group(key))
        raise ValueError(f"{key} (set in {where}) is not a config key; {hint}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{where} is not valid YAML: {e}") from e
    except ValueError as e:
        mismatch = _TYPE_MISMATCH.match(str(e))
        if mismatch is None:
            raise
        want, got, default, value, key = mismatch.groups()
        hint = f"; write {value}.0" if (want, got) == ("float", "int") else ""
        article = "an" if got[0] in "aeiou" else "a"
        raise ValueError(
            f"{key} (set in {where}) takes a {want}, as its default {default or repr('')}; "
            f"got {value} ({article} {got}){hint}"
        ) from None
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{where} (or a _BASE_ it chains to) names {e.filename}, which does not exist; "
            "fix the _BASE_ path (relative to the file that names it)"
        ) from e


def _a_mapping_in(config_file: str, key: str) -> bool:
    """Whether ``key`` holds a mapping in ``config_file`` (with its bases): from a file, yacs
    names a whole unknown group by itself (MODEL.MY_STUDENT)."""
    try:
        data = _ShippedBases.load_yaml_with_base(config_file, allow_unsafe=True)
    except Exception:  # the error being reported is the one to show
        return False
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return isinstance(data, dict)


def _close_keys(cfg: CfgNode, key: str, group: bool = False) -> str:
    """The hint after an unknown key (``group``: a whole group of them): the existing keys
    spelt most like it."""
    known = []

    def walk(node: CfgNode, prefix: str) -> None:
        for name, value in node.items():
            known.append(prefix + name)
            if isinstance(value, CfgNode):
                walk(value, prefix + name + ".")

    walk(cfg, "")
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    own = ""
    # a whole group unknown (from a file yacs names the group itself): maybe your module's
    if group or key.rsplit(".", 1)[0] not in known:
        own = (
            "; a key of your own module is added by its add_config(cfg), with the module "
            "named in EXTENSIONS (docs/new_student.md)"
        )
    if close:
        return f"did you mean {' or '.join(close)}? (ovseg's keys are in ovseg/config*.py){own}"
    return f"check its spelling against ovseg/config*.py and detectron2's defaults{own}"


def _custom_as_list(opts: list[str]) -> list[str]:
    """``DATASETS.CUSTOM my_data.yaml`` or ``EXTENSIONS my_module`` on a command line means
    a one-item list."""
    for i in range(0, len(opts), 2):
        value = opts[i + 1]
        listed = opts[i] in ("DATASETS.CUSTOM", "EXTENSIONS")
        if listed and isinstance(value, str) and not value.lstrip().startswith(("[", "(")):
            opts[i + 1] = repr([value])
    return opts


# the config an --eval-only run saves in OUTPUT_DIR (a training run's is config.yaml)
EVAL_CONFIG = "config_eval.yaml"


def setup(args: argparse.Namespace) -> CfgNode:
    """Build the frozen config of a run and set up logging and the output folder (the
    config saved as OUTPUT_DIR/config.yaml, or :data:`EVAL_CONFIG` with --eval-only)."""
    # detectron2's default_setup reads the file again: the name load_config resolved
    args.config_file = repo_file(args.config_file) if args.config_file else args.config_file
    cfg = load_config(args.config_file, args.opts)
    check_config(cfg)  # bad dataset names and solver values stop here, before any output
    cfg.freeze()
    eval_only = getattr(args, "eval_only", False)
    if getattr(args, "resume", False):
        from .resume import check_resume_target

        # before OUTPUT_DIR/config.yaml is written again
        check_resume_target(cfg, training=not eval_only)
    # an evaluation writes its own config beside a training run's, whose config.yaml is the
    # only record of how that run was trained (OUTPUT_DIR is often the run's folder)
    setup_run_folder(cfg, args, EVAL_CONFIG if eval_only else "config.yaml")
    logger = setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=_rank(), name="ovseg")
    warning = "" if eval_only else trained_unseen_warning(cfg)
    if warning:
        logger.warning(warning)
    return cfg


# keys naming files (or, DATASETS.PSEUDO_LABELS, a store's folder) that a run's config.yaml
# records absolute when they were given relative: each is read from the working directory
# (after load_config's repo_file), where another file of that name may be. MODEL.CLIP.
# MODEL_NAME only when it is a JSON model config's path (else an open_clip name)
_SAVED_ABSOLUTE = (
    ("MODEL", "CLIP", "PRETRAINED"), ("MODEL", "CLIP", "MODEL_NAME"), ("MODEL", "WEIGHTS"),
    ("MODEL", "XPM", "TEACHER_WEIGHTS"), ("MODEL", "FREESEG", "PROMPT_CHECKPOINT"),
    ("MODEL", "OVSEG", "TEXT_EMBEDDINGS_FILE"), ("DATASETS", "PSEUDO_LABELS"),
)  # fmt: skip


def _absolute(keys: tuple, value: Any) -> Any:
    """``value`` of ``keys`` made absolute where it is a relative path that exists."""
    if isinstance(value, (list, tuple)):  # a list of entries, each its own path
        return type(value)(_absolute(keys, v) for v in value)
    if not isinstance(value, str) or not value or os.path.isabs(value):
        return value
    if keys[-1] == "MODEL_NAME" and not value.lower().endswith(".json"):
        return value
    path = os.path.expanduser(value)
    found = os.path.isdir(path) if keys[-1] == "PSEUDO_LABELS" else os.path.isfile(path)
    return os.path.abspath(path) if found else value


def saved_config(cfg: CfgNode) -> str:
    """The text of a run's config.yaml: ``cfg`` with the files it names relative
    (:data:`_SAVED_ABSOLUTE`) made absolute where they exist, so the file names the files
    this run read, from any working directory."""
    cfg = cfg.clone()
    cfg.defrost()
    for keys in _SAVED_ABSOLUTE:
        node = cfg
        for key in keys[:-1]:
            node = node.get(key) if node is not None else None
        if node is not None and keys[-1] in node:
            node[keys[-1]] = _absolute(keys, node[keys[-1]])
    return cfg.dump()


def setup_run_folder(cfg: CfgNode, args: argparse.Namespace, config_name: str = "config.yaml"):
    """detectron2's ``default_setup``: loggers, environment and arguments logged, the config
    saved (:func:`saved_config`, written atomically as ``OUTPUT_DIR/<config_name>``), the
    seed of each process, cudnn's benchmark when training."""
    from detectron2.engine.defaults import _highlight
    from detectron2.utils import comm
    from detectron2.utils.collect_env import collect_env_info
    from detectron2.utils.env import seed_all_rng

    out, rank = cfg.OUTPUT_DIR, comm.get_rank()
    if comm.is_main_process() and out:
        os.makedirs(out, exist_ok=True)
    setup_logger(out, distributed_rank=rank, name="fvcore")
    log = setup_logger(out, distributed_rank=rank)
    log.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    log.info("Environment info:\n" + collect_env_info())
    log.info(f"Command line arguments: {args}")
    if getattr(args, "config_file", ""):
        with open(args.config_file, encoding="utf-8") as f:
            text = _highlight(f.read(), args.config_file)
        log.info(f"Contents of args.config_file={args.config_file}:\n{text}")
    if comm.is_main_process() and out:
        text = saved_config(cfg)
        log.info("Running with full config:\n" + _highlight(text, ".yaml"))
        path = os.path.join(out, config_name)
        atomic_write_text(path, text)
        log.info(f"Full config saved to {path}")
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def _rank() -> int:
    from detectron2.utils import comm

    return comm.get_rank()
