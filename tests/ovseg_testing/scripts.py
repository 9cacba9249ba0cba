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


def run_patched(
    patch: str, script: str, *args: str, datasets: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run ``python <script> <args>`` as a command after ``patch`` (Python source run first
    in the same interpreter, e.g. a ``torch.save`` that finds the disk full), from the
    repository root; returns the finished process (output captured as text), whatever its
    exit status."""
    code = (
        f"{patch}\nimport runpy, sys\n"
        f"sys.argv = [{script!r}, *sys.argv[1:]]\n"
        f"runpy.run_path({script!r}, run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=subprocess_env(datasets),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(script: str, argv: list[str]) -> int:
    """``main(argv)`` of a repository script imported into this process, as its
    ``__main__`` block runs it: log records at INFO to stderr in the scripts' format (read
    them with capsys), argparse's exits returned as the exit status.

    For a script's error paths, which end before any work: a subprocess pays a fresh
    ``import ovseg`` (seconds) per call. Keep at least one test per script that runs it as a
    command (:func:`run_script` or ``subprocess``).

    Args:
        script (str): a path relative to the repository root, e.g. ``"tools/plot_metrics.py"``.
    """
    import logging

    from ovseg_testing.demo import load_script

    main = load_script(script).main
    handler = logging.StreamHandler(sys.stderr)  # capsys's stderr, as set for this test
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # as in a fresh process: every record reaches the root logger, not the handlers (and
    # their streams, perhaps another test's) that earlier tests' setup_logger calls left
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    loggers = [lg for lg in loggers if isinstance(lg, logging.Logger)]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [], True
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's errors and --help
        status = e.code if isinstance(e.code, int) else 1
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
    return int(status or 0)
