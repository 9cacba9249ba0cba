"""The one self-training schedule: from which iteration a student labels pixels itself.

ZegCLIP's transductive stage and MaskCLIP+'s second phase both switch, at a training
iteration, from their first source of targets to the student's own predictions. The
iteration comes from detectron2's EventStorage, which every trainer opens; outside one the
schedule cannot know where it is and says so, for every student alike.
"""

from __future__ import annotations

import logging
from typing import Optional

from detectron2.utils.events import get_event_storage

__all__ = ["SelfTrainingSchedule", "current_iteration"]

logger = logging.getLogger(__name__)


def current_iteration() -> Optional[int]:
    """The trainer's iteration, or None outside a trainer (no EventStorage open)."""
    try:
        return get_event_storage().iter
    except AssertionError:
        return None


class SelfTrainingSchedule:
    """Whether a training step uses the student's own labels.

    Args:
        start_iter (int): the first self-training iteration; < 0 = never.
        owner (str): the config key that sets it, named in messages.
    """

    def __init__(self, start_iter: int = -1, owner: str = "MODEL.OVSEG.SELF_TRAINING.START_ITER"):
        self.start_iter = int(start_iter)
        self.owner = owner
        self._last: Optional[bool] = None

    @property
    def enabled(self) -> bool:
        """Whether self-training ever starts."""
        return self.start_iter >= 0

    def active(self, iteration: Optional[int] = None) -> bool:
        """Whether ``iteration`` (default: the trainer's) self-trains; logs each switch.

        Raises:
            RuntimeError: self-training is enabled and no iteration is known (no trainer).
        """
        if not self.enabled:
            return False
        if iteration is None:
            iteration = current_iteration()
        if iteration is None:
            raise RuntimeError(
                f"{self.owner}={self.start_iter}: self-training reads the iteration from "
                "detectron2's EventStorage; train under a trainer or inside "
                "`with EventStorage(start_iter):`"
            )
        active = iteration >= self.start_iter
        if active != self._last:
            who = "the student's own predictions" if active else "the first-stage targets"
            logger.info(f"iteration {iteration}: training on {who} ({self.owner})")
            self._last = active
        return active
