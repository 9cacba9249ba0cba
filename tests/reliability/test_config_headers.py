"""Commands shown in config headers write to their own output folder, never over the
config's own run (its config.yaml and log)."""

from __future__ import annotations

import shlex

import pytest
from ovseg_testing import ROOT, header_commands

from ovseg.engine.defaults import load_config
from ovseg.modeling.meta_arch.maskclip_plus_build import generate_command

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def _output_dir(argv, default):
    """OUTPUT_DIR as the command sets it (its last KEY VALUE pair wins), else ``default``."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "OUTPUT_DIR"]
    return values[-1] if values else default


GENERATING = [p for p in CONFIGS if "generate_pseudo_labels.py" in p.read_text()]


def test_some_headers_show_a_generate_command():
    assert any("toy" in str(p) for p in GENERATING) and len(GENERATING) >= 4


@pytest.mark.parametrize("path", GENERATING, ids=lambda p: p.name)
def test_generate_command_writes_to_its_own_folder(path):
    run_dir = load_config(str(path)).OUTPUT_DIR
    generate = [c for c in header_commands(path) if "generate_pseudo_labels.py" in c[1]]
    assert generate, path
    for argv in generate:
        out = _output_dir(argv, default=run_dir)
        assert out != run_dir, f"{path.name}: {' '.join(argv)} writes into {run_dir}"
        store = argv[argv.index("--output") + 1]
        assert out != store  # the store folder holds only the store


def test_generate_hint_in_errors_writes_to_its_own_folder():
    # the hint of MaskCLIP+'s store errors (XPM configs write instance stores)
    cfg = load_config(str(next(p for p in GENERATING if "maskclip_plus" in p.name)))
    argv = shlex.split(generate_command(cfg, "output/pseudo_labels/x"))
    assert _output_dir(argv, cfg.OUTPUT_DIR) == "output/pseudo_labels/x_generation"
