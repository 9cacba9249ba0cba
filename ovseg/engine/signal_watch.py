"""A warning when training has no signal: ``total_loss`` exactly 0 step after step.

A semantic student's losses are exactly 0 on a batch without one labelled pixel (every label
the ignore value, or only classes the zero-shot setting removes). One such batch is normal
(an image of unseen classes only); a run of them trains nothing, and a run made only of such
images finishes with ``total_loss 0.0`` and evaluates to mIoU 0 without a word. The watch
reads the losses the writers already read back (no extra device synchronisation) and warns
once when ``window`` logged losses in a row are zero, again only after a signal.
"""

from __future__ import annotations

import logging

from detectron2.engine import HookBase

__all__ = ["ZeroLossWatch"]

logger = logging.getLogger(__name__)


class ZeroLossWatch(HookBase):
    """Warns when the last ``window`` logged ``total_loss`` values are all exactly 0."""

    def __init__(self, window: int = 100):
        if window < 1:
            raise ValueError(f"window must be at least 1 step, got {window}")
        self.window = window
        self._logged = 0  # history length at the last look (the losses arrive in groups)
        self._reported = False  # whether the current run of zeros was warned about

    def after_step(self) -> None:
        histories = self.trainer.storage.histories()
        if "total_loss" not in histories:  # not the main process, or nothing written yet
            return
        values = histories["total_loss"].values()
        if len(values) == self._logged:
            return
        if any(v != 0.0 for v, _ in values[self._logged :]):
            self._reported = False  # a signal: a later run of zeros is news again
        self._logged = len(values)
        tail = values[-self.window :]
        if self._reported or len(tail) < self.window or any(v != 0.0 for v, _ in tail):
            return
        self._reported = True
        logger.warning(
            "total_loss has been exactly 0 for %d logged steps in a row (iterations %d-%d): "
            "the batches give no training signal. Usually no pixel of them is labelled: "
            "every label is the ignore value, or only classes that MODEL.OVSEG."
            "ZERO_SHOT_SETTING removes (the unseen ones) are. Check DATASETS.TRAIN's label "
            "files and the zero-shot setting.",
            self.window,
            tail[0][1],
            tail[-1][1],
        )
