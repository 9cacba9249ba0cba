"""A warning when training waits for its data: the input pipeline is slower than the step.

detectron2 logs ``data_time`` (how long a step waited for its batch) beside ``time`` (the
whole step), and a researcher reads a slow run as a slow model. On one H200 the ZegCLIP VOC
step takes 46-66 ms for 16 images while its mapper takes about 18 ms per image on that
machine's CPU: 4 loader processes give the GPU a batch every 74 ms (docs/performance.md).
The watch reads the values the writers already recorded (no extra device synchronisation)
and warns once when, over its last ``window`` steps, the median wait is more than
``threshold`` of the median step, naming DATALOADER.NUM_WORKERS and the machine's CPUs.
"""

from __future__ import annotations

import logging
import os
import statistics
from typing import Dict

from detectron2.engine import HookBase

__all__ = ["LoaderWatch"]

logger = logging.getLogger(__name__)


def _by_iteration(histories, name: str) -> Dict[int, float]:
    history = histories.get(name)
    return {} if history is None else {it: v for v, it in history.values()}


class LoaderWatch(HookBase):
    """Warns once when the step's median wait for data exceeds ``threshold`` of the median
    step over ``window`` steps (each step's ``data_time`` and ``time`` as logged).

    Args:
        window (int): steps the medians are taken over (the iteration timer's first few
            steps are not timed, so a shorter run is never judged).
        threshold (float): the share of the step spent waiting that is warned about.
        workers (int): DATALOADER.NUM_WORKERS, named in the warning.
    """

    def __init__(self, window: int = 100, threshold: float = 0.2, workers: int = 0):
        if window < 1:
            raise ValueError(f"window must be at least 1 step, got {window}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be a share in (0, 1), got {threshold}")
        self.window, self.threshold, self.workers = window, threshold, int(workers)
        self._seen = 0  # 'time' entries at the last look
        self._reported = False

    def after_step(self) -> None:
        if self._reported:
            return
        histories = self.trainer.storage.histories()
        if "time" not in histories or len(histories["time"].values()) == self._seen:
            return  # not the main process, nothing new, or the timer's warm-up
        self._seen = len(histories["time"].values())
        waits, steps = _by_iteration(histories, "data_time"), _by_iteration(histories, "time")
        common = sorted(set(waits) & set(steps))[-self.window :]
        if len(common) < self.window:
            return
        wait = statistics.median(waits[i] for i in common)
        step = statistics.median(steps[i] for i in common)
        if step <= 0 or wait / step <= self.threshold:
            return
        self._reported = True
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        logger.warning(
            "Training waits for its data: over iterations %d-%d each step waited %.0f ms of "
            "%.0f ms (median, %.0f%%) for its batch, so the model runs slower than it can. "
            "DATALOADER.NUM_WORKERS is %d per process on a machine with %s CPUs: raise it "
            "while CPUs are free (each worker maps whole images: docs/performance.md gives "
            "the mappers' cost per image), or lighten the input pipeline.",
            common[0], common[-1], wait * 1000, step * 1000, 100 * wait / step,
            self.workers, cpus,
        )  # fmt: skip
