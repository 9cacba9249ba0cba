"""``train_net.py`` runs in subprocesses that are reused while nothing about them changed.

``make demo`` (``tools/run_demo.py``) trains every student this way: a finished run leaves a
record (``demo_run.json``: its command, the sha256 of its merged config, its CLIP teacher's
weights, its final metrics) next to its outputs, and running the same command on the same
merged config and CLIP weights again returns the recorded metrics instead of training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from ..utils.io import atomic_write_json
from .defaults import load_config

__all__ = ["RECORD", "progress_line", "read_final_metrics", "run_key", "run_training"]

logger = logging.getLogger("ovseg.demo")

RECORD = "demo_run.json"  # the record of a finished run, in its OUTPUT_DIR


# the summary metrics of a panoptic test set's PQ and mask AP (per-class APs left out)
MASK_SUMMARY = re.compile(
    r"panoptic_seg/(PQ|SQ|RQ)(_th|_st|-seen|-unseen)?|segm/AP(50|75)?(-seen|-unseen)?"
)


# detectron2's periodic training line: "eta: 0:03:55  iter: 379  total_loss: 8.751  ..."
_PROGRESS = {k: re.compile(rf"\b{k}: (\S+)") for k in ("iter", "total_loss", "eta", "lr")}


def progress_line(line: str) -> Optional[str]:
    """What ``make demo`` echoes of a training run's output line: the iteration, total loss,
    ETA and learning rate of detectron2's metric lines (whatever the number of loss terms),
    and evaluation results (``copypaste:``); None for any other line."""
    if "copypaste:" in line:
        return "copypaste: " + line.split("copypaste:", 1)[1].strip()
    if " iter: " not in line:
        return None
    found = {k: p.search(line) for k, p in _PROGRESS.items()}
    return "  ".join(f"{k} {m.group(1)}" for k, m in found.items() if m)


def read_final_metrics(out_dir: Path) -> Dict[str, float]:
    """The last evaluation written to ``metrics.json`` by detectron2's EvalHook.

    Returns:
        dict: the ``sem_seg/*`` metrics without their prefix (mIoU, mIoU-seen, hIoU, ...),
        and, from a panoptic test set, the summary ``panoptic_seg/*`` (PQ, PQ-seen, ...) and
        ``segm/*`` (AP, AP50, AP-unseen, ...) metrics without theirs.
    """
    records = [json.loads(x) for x in (out_dir / "metrics.json").read_text().splitlines()]
    evals = [r for r in records if "sem_seg/mIoU" in r]
    if not evals:
        raise RuntimeError(f"{out_dir}/metrics.json holds no evaluation; see {out_dir}/log.txt")
    return {
        k.split("/", 1)[1]: v
        for k, v in evals[-1].items()
        if k.startswith("sem_seg/") or MASK_SUMMARY.fullmatch(k)
    }


def run_key(
    command: str, config: Path, opts: Sequence[str], root: Optional[Path] = None
) -> Dict[str, str]:
    """What identifies a finished run: its command line, the sha256 of its merged config
    (``opts`` include OUTPUT_DIR), so an edited config file or a new default counts, and its
    CLIP teacher's weights (``teacher_weights_id``: a file's content, a tag, random), so a CLIP
    file retrained in place counts too (its checkpoints would be refused with the new one).

    Args:
        root (Path): the run's working directory, where a relative CLIP file is read.
    """
    from ..pseudo.labeller import teacher_weights_id

    cfg = load_config(str(config), list(opts))
    merged = cfg.dump()
    pretrained = cfg.MODEL.CLIP.PRETRAINED
    local = Path(root or ".") / os.path.expanduser(pretrained) if pretrained else None
    if local is not None and local.is_file():
        pretrained = str(local)
    return {
        "command": command,
        "config_sha256": hashlib.sha256(merged.encode()).hexdigest(),
        "clip_weights": teacher_weights_id(pretrained),
    }


def _finished(out_dir: Path, key: Dict[str, str]) -> Optional[Dict[str, Any]]:
    """The metrics of the finished run in ``out_dir`` when its record matches ``key``."""
    done = out_dir / RECORD
    if not done.is_file():
        return None
    record = json.loads(done.read_text())
    if any(record.get(k) != v for k, v in key.items()):
        return None
    return record["metrics"]


def run_training(
    config: Path,
    out_dir: Path,
    opts: Sequence[str],
    *,
    root: Path,
    env: Dict[str, str],
    reuse: bool = True,
    tag: str = "",
    reader: Optional[Callable[[Path], Dict[str, Any]]] = None,
) -> Dict[str, Any]:
    """``train_net.py`` in a subprocess; progress lines are echoed; returns final metrics.

    A finished run with the same command, the same merged config (a config file edited since
    counts as a change) and the same CLIP weights is reused unless ``reuse`` is False; the
    metrics then carry ``"_reused": True``.

    Args:
        config (Path): the config file, under ``root``.
        out_dir (Path): the run's OUTPUT_DIR; stdout goes to ``stdout.txt`` there.
        opts: KEY VALUE overrides (OUTPUT_DIR is added).
        root (Path): the repository root holding ``train_net.py``.
        env (dict): the subprocess's environment.
        reuse (bool): return a matching finished run's metrics instead of training.
        tag (str): prefix of the echoed progress lines.
        reader: reads the final metrics from ``out_dir`` (default :func:`read_final_metrics`).

    Returns:
        dict: the final metrics (:func:`read_final_metrics`), plus ``seconds`` of training.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "train_net.py",
        "--config-file",
        str(config.relative_to(root)),
        *opts,
        "OUTPUT_DIR",
        str(out_dir),
    ]
    command = " ".join(shlex.quote(c) for c in cmd[1:])
    key = run_key(command, config, [*opts, "OUTPUT_DIR", str(out_dir)], root)
    finished = _finished(out_dir, key) if reuse else None
    if finished is not None:
        # the same run finished before (make demo after an interruption): reuse it
        logger.info("reusing the finished run in %s", out_dir)
        return {**finished, "_reused": True}
    # not reusable (interrupted, or its command or config changed): it starts over, which
    # train_net.py allows only in a folder without a run's last_checkpoint
    (out_dir / "last_checkpoint").unlink(missing_ok=True)
    logger.info("$ %s", command)
    start = time.time()
    with open(out_dir / "stdout.txt", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            log.write(line)
            shown = progress_line(line)
            if shown:
                print(f"    {tag}{shown}", flush=True)
        if proc.wait() != 0:
            raise RuntimeError(f"training failed ({' '.join(cmd)}); see {out_dir}/stdout.txt")
    metrics: Dict[str, Any] = (reader or read_final_metrics)(out_dir)
    metrics["seconds"] = round(time.time() - start, 1)
    atomic_write_json(out_dir / RECORD, {**key, "metrics": metrics}, indent=None, fsync=False)
    return metrics
