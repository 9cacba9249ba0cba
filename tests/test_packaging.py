"""ovseg as an installed package: the sdist and the wheel built from it carry the configs and
toy CLIPs, and the README's Python API config runs from another folder with only the wheel's
files on the path (no checkout beside the package)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from ovseg_testing import ROOT

from detectron2.engine import default_argument_parser

from ovseg.benchmark.teacher import _build_teacher
from ovseg.engine.defaults import find_repo_root, load_config, setup

# what a build reads (setup.py, MANIFEST.in) and what it packs
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "ovseg",
                "configs", "checkpoints")  # fmt: skip
PEP517 = "import sys; from setuptools import build_meta as b; print(b.{}(sys.argv[1]))"


def test_repo_root_is_the_shipped_copy_in_a_built_package(tmp_path):
    package = tmp_path / "site-packages" / "ovseg"
    package.mkdir(parents=True)
    assert find_repo_root(str(package)) == str(tmp_path / "site-packages")  # a checkout
    marker = package / "_shipped" / "configs" / "Base-ovseg.yaml"
    marker.parent.mkdir(parents=True)
    marker.write_text("MODEL: {}\n")
    assert find_repo_root(str(package)) == str(package / "_shipped")


def test_repository_relative_names_load_from_any_folder(tmp_path, monkeypatch):
    # an installed ovseg's own modules name shipped files so (python -m ovseg.benchmark.suite)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/toy/maskclip.yaml")
    assert cfg.MODEL.CLIP.MODEL_NAME == str(ROOT / "configs/clip/toy_rn.json")
    teacher = _build_teacher("configs/clip/tiny_vit.json", "", "", "cpu", "fp32", "single")
    assert teacher.model.visual is not None
    with pytest.raises(FileNotFoundError, match="'configs/toy/no_such.yaml' does not exist"):
        load_config("configs/toy/no_such.yaml")


def test_a_run_set_up_from_another_folder_names_its_config_by_repository_path(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # train_net.py's set-up: detectron2 reads the file again
    out = tmp_path / "run"
    args = default_argument_parser().parse_args(
        ["--config-file", "configs/toy/maskclip.yaml", "OUTPUT_DIR", str(out)]
    )
    setup(args)
    assert args.config_file == str(ROOT / "configs/toy/maskclip.yaml")
    assert (out / "config.yaml").is_file()


def test_license_is_an_spdx_expression():
    # a TOML table is deprecated: setuptools warns at every build that such builds stop
    # being supported after 2027-02-18
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license = "Apache-2.0"$', text, re.M), "license is no SPDX string"
    assert re.search(r'^license-files = \["LICENSE"\]$', text, re.M)


def _pep517(hook: str, source: Path, out: Path) -> Path:
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", PEP517.format(hook), str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{hook} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return out / proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_wheel_from_the_sdist_runs_a_shipped_config_from_any_folder(tmp_path):
    source = tmp_path / "checkout"
    source.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in BUILD_INPUTS:
        if not (ROOT / name).exists():
            continue  # a build input this checkout does not have
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=skip)
        else:
            shutil.copy2(ROOT / name, source / name)
    sdist = _pep517("build_sdist", source, tmp_path / "sdist")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    [unpacked] = (tmp_path / "unpacked").iterdir()
    wheel = _pep517("build_wheel", unpacked, tmp_path / "wheel")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("configs/toy/maskclip.yaml", "configs/clip/toy_rn.json",
                    "checkpoints/toy_clip_rn.pt", "configs/Base-ovseg.yaml"):  # fmt: skip
        assert f"ovseg/_shipped/{shipped}" in names, f"the wheel lacks {shipped}"
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "from ovseg.api import resolve_config_path; from ovseg.engine.defaults import "
        "load_config; cfg = load_config(resolve_config_path('toy/maskclip.yaml')); "
        "print(cfg.MODEL.CLIP.MODEL_NAME); print(cfg.MODEL.CLIP.PRETRAINED)"
    )
    env = dict(os.environ, PYTHONPATH=str(site), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_name, pretrained = proc.stdout.strip().splitlines()[-2:]
    assert Path(model_name) == site / "ovseg/_shipped/configs/clip/toy_rn.json"
    assert Path(pretrained) == site / "ovseg/_shipped/checkpoints/toy_clip_rn.pt"
