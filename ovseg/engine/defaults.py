"""Config set-up shared by train_net.py, the demo and the tools."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re

import torch
import yaml

from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils.logger import setup_logger

from ..config import add_ovseg_config
from .checks import check_config

logger = logging.getLogger(__name__)


def load_config(config_file: str, opts: list[str] | None = None) -> CfgNode:
    """detectron2 defaults + ovseg's keys + a YAML file (with ``_BASE_``) + KEY VALUE pairs."""
    if not config_file:
        raise ValueError("No --config-file given; pick one under configs/ (see README).")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file {config_file!r} does not exist.")
    cfg = get_cfg()
    add_ovseg_config(cfg)
    with _unknown_keys_named(cfg, f"config file {config_file}"):
        cfg.merge_from_file(config_file)
    if opts:
        if len(opts) % 2:
            raise ValueError(f"--opts/overrides must be KEY VALUE pairs, got an odd list: {opts}")
        with _unknown_keys_named(cfg, "the KEY VALUE overrides"):
            cfg.merge_from_list(_custom_as_list(list(opts)))
    if cfg.DATASETS.CUSTOM:
        from ..data.datasets.custom import register_from_config

        register_from_config(cfg)  # before DATASETS.TRAIN/TEST are looked up
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is unavailable: running on cpu.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: ([\w.]+)")


class _unknown_keys_named:
    """Turn detectron2's bare "Non-existent key" (a KeyError or AssertionError) into a
    ValueError naming where the key came from and the closest existing keys; a missing
    _BASE_ file and invalid YAML name the config they were met in."""

    def __init__(self, cfg: CfgNode, where: str):
        self.cfg, self.where = cfg, where

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, FileNotFoundError) and error.filename:
            raise FileNotFoundError(
                f"{self.where}: a _BASE_ in its chain names {error.filename}, which does not "
                "exist (a _BASE_ path is relative to the file that names it)"
            ) from None
        if isinstance(error, yaml.YAMLError):
            raise ValueError(f"{self.where} is not valid YAML: {error}") from None
        match = _UNKNOWN_KEY.search(str(error)) if error is not None else None
        if match is None or not isinstance(error, (KeyError, AssertionError)):
            return False
        key = match.group(1)
        close = difflib.get_close_matches(key, _all_keys(self.cfg), n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ValueError(
            f"Unknown config key {key} in {self.where}: {hint}Every key, with its meaning, is "
            "in ovseg/config.py (ovseg's) and detectron2/config/defaults.py"
        ) from None


def _all_keys(node: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        keys += _all_keys(value, f"{prefix}{name}.") if isinstance(value, CfgNode) else []
        keys.append(f"{prefix}{name}")
    return keys


def _custom_as_list(opts: list[str]) -> list[str]:
    """``DATASETS.CUSTOM my_data.yaml`` on a command line means a one-file list."""
    for i in range(0, len(opts), 2):
        value = opts[i + 1]
        if opts[i] == "DATASETS.CUSTOM" and not value.lstrip().startswith(("[", "(")):
            opts[i + 1] = repr([value])
    return opts


def setup(args: argparse.Namespace) -> CfgNode:
    """Build the frozen config of a run and set up logging and the output folder."""
    cfg = load_config(args.config_file, args.opts)
    check_config(cfg)  # bad dataset names and solver values stop here, before any output
    cfg.freeze()
    if getattr(args, "resume", False):
        from .resume import check_resume_target

        check_resume_target(cfg)  # before default_setup overwrites OUTPUT_DIR/config.yaml
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=_rank(), name="ovseg")
    return cfg


def _rank() -> int:
    from detectron2.utils import comm

    return comm.get_rank()
