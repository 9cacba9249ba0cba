"""docs/custom_dataset.md, followed literally: a tiny folder on disk, the guide's files
written from its YAML blocks, its commands run from its bash blocks (training shortened to a
few iterations), and the evaluation must print mIoU."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from ovseg_testing import ROOT, subprocess_env
from PIL import Image

from ovseg.data.datasets.toy_world import generate_sample

pytestmark = pytest.mark.slow

GUIDE = ROOT / "docs" / "custom_dataset.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
SHORT = ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0",
         "SOLVER.CHECKPOINT_PERIOD", "3"]  # fmt: skip


def guide_blocks() -> list[tuple[str, str]]:
    """(language, text) of the guide's fenced blocks, in order."""
    return BLOCK.findall(GUIDE.read_text(encoding="utf-8"))


def guide_commands() -> list[str]:
    """The commands of the guide's bash blocks, continuation lines joined."""
    commands = []
    for lang, text in guide_blocks():
        if lang == "bash":
            joined = text.replace("\\\n", " ")
            commands += [line.strip() for line in joined.splitlines() if line.strip()]
    return commands


def write_guide_files(where: Path) -> list[str]:
    """Write each YAML block whose first line is ``# <path>`` to that path under ``where``."""
    written = []
    for lang, text in guide_blocks():
        first = text.splitlines()[0]
        if lang == "yaml" and first.startswith("# "):
            path = where / first[2:].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(first[2:].strip())
    return written


def write_tiny_folder(root: Path) -> None:
    """my_data/{train,val}/{images,labels}: toy-world scenes, labels in toy9's order (the
    guide's vocabulary)."""
    for split, stream, n in (("train", "training", 4), ("val", "validation", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(n):
            image, label, _, _ = generate_sample(7, stream, i)
            Image.fromarray(image).save(root / split / "images" / f"{i:04d}.jpg", quality=95)
            Image.fromarray(label).save(root / split / "labels" / f"{i:04d}.png")


def test_guide_from_folder_to_evaluated_model(tmp_path):
    write_tiny_folder(tmp_path / "my_data")
    assert write_guide_files(tmp_path) == ["my_data/dataset.yaml", "my_data/lseg.yaml"]
    for name in ("train_net.py", "tools", "configs", "checkpoints"):  # run from the repo root
        os.symlink(ROOT / name, tmp_path / name)
    commands = guide_commands()
    assert len(commands) == 4, commands
    logs = []
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "python", command
        argv[0] = sys.executable
        if "train_net.py" in argv:
            argv += SHORT
        proc = subprocess.run(argv, cwd=tmp_path, env=subprocess_env(), capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{command} exited {proc.returncode}:\n{log[-4000:]}"
        logs.append(log)
    assert "my_data_train: 4 images, 9 classes, unseen ['triangle', 'ring']" in logs[0]
    assert "my_data_val: 2 images" in logs[0]
    # the labels drawn over the images, one picture each
    assert len(list((tmp_path / "vis" / "my_data").glob("*.png"))) == 4, logs[1][-3000:]
    assert (tmp_path / "output" / "my_data" / "model_final.pth").is_file()
    for log in logs[2:]:
        assert re.search(r"copypaste: mIoU", log), log[-3000:]
        assert "hIoU" in log
