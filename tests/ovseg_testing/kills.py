"""A kill at a chosen iteration, as a hook: deterministic where a timed signal is not."""

from __future__ import annotations

from detectron2.engine import HookBase


class Killed(Exception):
    """Stands in for SIGKILL: raised by :class:`KillAfter` and caught by the test."""


class KillAfter(HookBase):
    """Ends training right after iteration ``last``, once the hooks registered before it
    (the checkpoint, the evaluation and the writers) have run."""

    def __init__(self, last: int):
        self.last = last

    def after_step(self):
        if self.trainer.iter == self.last:
            raise Killed
