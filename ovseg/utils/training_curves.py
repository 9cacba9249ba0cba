"""Training curves from a run's metrics.json (detectron2's JSONWriter), drawn to a PNG.

Behind ``tools/plot_metrics.py``. Panels: the losses (``total_loss`` and every ``loss*``
key), the learning rate, and, when the run evaluated, mIoU / mIoU-seen / mIoU-unseen / hIoU
per test dataset (the evaluator's ``sem_seg`` results as detectron2 flattens them:
``sem_seg/mIoU``, or ``<dataset>/sem_seg/mIoU`` with several test datasets). A resumed run
appends iterations it had already logged; the later lines win.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .figures import save_image

__all__ = ["EVAL_METRICS", "PlotSummary", "collect", "load_metrics", "plot", "plot_metrics"]

logger = logging.getLogger(__name__)

EVAL_METRICS = ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU")
_EVAL_KEY = re.compile(r"^(?:(?P<dataset>.+)/)?sem_seg/(?P<metric>[^/]+)$")

Series = Dict[str, Tuple[List[int], List[float]]]


@dataclass(frozen=True)
class PlotSummary:
    """What was drawn: panel title -> the series names in it, and the picture's size."""

    panels: Dict[str, Tuple[str, ...]]
    size: Tuple[int, int]


# unparsable lines named one by one before the rest are only counted
_NAMED_BAD_LINES = 3


def load_metrics(path: str) -> List[Dict[str, float]]:
    """The records of a metrics.json, one per iteration, in iteration order.

    Lines of the same iteration are merged, later values winning (a resumed run re-logs
    the iterations after its last checkpoint). Unparsable lines (a run killed mid-write)
    are skipped with a warning naming them.

    Args:
        path (str): the metrics.json file.

    Returns:
        list[dict]: records with an "iteration" key.
    """
    by_iter: Dict[int, Dict[str, float]] = {}
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
                iteration = int(record["iteration"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                skipped += 1
                # a few names are enough; a wrong file would otherwise warn once per line
                if skipped <= _NAMED_BAD_LINES:
                    logger.warning("%s:%d is not a JSONWriter record; skipped", path, number)
                continue
            by_iter.setdefault(iteration, {}).update(record)
    if skipped > _NAMED_BAD_LINES:
        logger.warning("%s: %d lines in all are not JSONWriter records; skipped", path, skipped)
    return [by_iter[i] for i in sorted(by_iter)]


def _series(records: Sequence[Dict[str, float]], keys: Sequence[str]) -> Series:
    """{key: (iterations, values)} of the keys with finite numbers; keys without any left out."""
    out: Series = {}
    for key in keys:
        points = [
            (int(r["iteration"]), float(r[key]))
            for r in records
            if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))
        ]
        if points:
            out[key] = ([p[0] for p in points], [p[1] for p in points])
    return out


def collect(records: Sequence[Dict[str, float]]) -> Dict[str, Series]:
    """Group the recorded scalars into panels.

    Args:
        records: from :func:`load_metrics`.

    Returns:
        dict: panel title -> {series name: (iterations, values)}; panels without data are
        left out.
    """
    keys = sorted({k for r in records for k in r})
    losses = [k for k in keys if k == "total_loss" or k.startswith("loss")]
    evals: Dict[str, List[str]] = {}
    for key in keys:
        match = _EVAL_KEY.match(key)
        if match and match["metric"] in EVAL_METRICS:
            evals.setdefault(match["dataset"] or "", []).append(key)
    panels: Dict[str, Series] = {}
    if losses:
        panels["losses"] = _series(records, losses)
    if "lr" in keys:
        panels["learning rate"] = _series(records, ["lr"])
    for dataset, dataset_keys in sorted(evals.items()):
        order = sorted(dataset_keys, key=lambda k: EVAL_METRICS.index(_EVAL_KEY.match(k)["metric"]))
        title = f"evaluation{' on ' + dataset if dataset else ''} (%)"
        panels[title] = _series(records, order)
    return {title: series for title, series in panels.items() if series}


def plot(panels: Dict[str, Series], title: str = "") -> Tuple[np.ndarray, PlotSummary]:
    """Draw the panels one above the other, on one iteration axis.

    Args:
        panels: from :func:`collect`.
        title (str): above the panels; none when empty.

    Returns:
        tuple: (picture (h, w, 3) uint8 RGB, :class:`PlotSummary`).
    """
    if not panels:
        raise ValueError("nothing to plot")
    fig = Figure(figsize=(8, 3 * len(panels)), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    # one iteration axis for all, so an evaluation lines up with the losses around it
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    for ax, (name, series) in zip(axes, panels.items()):
        for key, (iters, values) in series.items():
            label = _EVAL_KEY.match(key)["metric"] if _EVAL_KEY.match(key) else key
            evaluated = name.startswith("evaluation")
            ax.plot(iters, values, marker="o" if evaluated else None, ms=4, label=label)
        values = np.concatenate([np.asarray(v) for _, v in series.values()])
        # losses spanning decades read better on a log axis
        if name == "losses" and values.min() > 0 and values.max() / values.min() > 20:
            ax.set_yscale("log")
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if len(series) > 1 or name.startswith("evaluation"):
            ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    canvas.draw()
    picture = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    summary = PlotSummary(
        panels={name: tuple(series) for name, series in panels.items()},
        size=(picture.shape[1], picture.shape[0]),
    )
    return picture, summary


def plot_metrics(path: str, output: str = "") -> Tuple[str, PlotSummary]:
    """Read a run's metrics.json and write its curves.

    Args:
        path (str): OUTPUT_DIR or the metrics.json itself.
        output (str): the picture (.png, .jpg or .jpeg); default ``metrics.png`` next to
            the metrics.json.

    Returns:
        tuple: (the PNG's path, :class:`PlotSummary`).
    """
    if output and os.path.splitext(output)[1].lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(
            f"--output {output!r} must end in .png, .jpg or .jpeg: the curves are a picture, "
            "written in the format its suffix names"
        )
    metrics = os.path.join(path, "metrics.json") if os.path.isdir(path) else path
    if not os.path.isfile(metrics):
        raise FileNotFoundError(
            f"{metrics} does not exist; give a training OUTPUT_DIR (detectron2 writes "
            "metrics.json there while training) or the file itself"
        )
    records = load_metrics(metrics)
    panels = collect(records)
    if not panels:
        raise ValueError(
            f"{metrics} holds no losses, learning rate or sem_seg evaluation "
            f"({len(records)} records); is it a detectron2 metrics.json?"
        )
    output = output or os.path.join(os.path.dirname(os.path.abspath(metrics)), "metrics.png")
    # the folder is made by the atomic write, whose error names the file when it cannot be
    picture, summary = plot(
        panels, title=os.path.basename(os.path.dirname(os.path.abspath(metrics)))
    )
    save_image(output, picture)
    drawn = "; ".join(f"{t}: {', '.join(names)}" for t, names in summary.panels.items())
    logger.info("Wrote %s (%s)", output, drawn)
    return output, summary
