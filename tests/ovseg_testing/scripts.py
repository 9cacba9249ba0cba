"""Running the repository's scripts (train_net.py, demo/demo.py, tools/) in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ovseg_testing.paths import ROOT


def subprocess_env(datasets_root: Path | None = None) -> dict[str, str]:
    """Environment for running repo scripts in a subprocess (CPU only, quiet, 1 thread)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["OMP_NUM_THREADS"] = "1"
    if datasets_root is not None:
        env["DETECTRON2_DATASETS"] = str(datasets_root)
    return env


def run_script(script: str, *args: str, datasets: Path | None = None, timeout: int = 300) -> str:
    """Run ``python <script> <args>`` from the repository root and return its log (stdout
    then stderr); fail with the log's tail unless it exits 0.

    Args:
        script (str): a path relative to the repository root, e.g. ``"train_net.py"``.
        datasets (Path, optional): DETECTRON2_DATASETS for the run.
    """
    proc = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        env=subprocess_env(datasets),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{log[-5000:]}"
    return log
