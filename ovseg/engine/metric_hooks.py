"""A run's periodic evaluations logged even when it is killed and resumed.

detectron2's DefaultTrainer saves a checkpoint, then evaluates (so a failing evaluation still
leaves the checkpoint), and its writers put the results in ``metrics.json`` and TensorBoard at
their next write (every 20 iterations). A run killed during the evaluation of a checkpoint's
iteration, or before that write, resumes after the checkpoint and never evaluated that
iteration again. Here, after the writers' hook:

- each periodic evaluation is written to the metric files at once (nothing is written twice:
  a writer skips what it wrote already) and its iteration recorded in
  ``OUTPUT_DIR/last_evaluation``, beside detectron2's ``last_checkpoint``;
- a resumed run whose checkpoint's iteration was due an evaluation that the record lacks
  evaluates that checkpoint first, logged at its iteration. The evaluation leaves the training
  RNGs as they were (``Trainer.test``), so the training after it is the uninterrupted run's.

detectron2's order stays: the checkpoint is saved before the evaluation.
"""

from __future__ import annotations

import logging
import os
from typing import List, Sequence

from detectron2.engine import HookBase
from detectron2.engine import hooks as d2_hooks
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter

from ..utils.io import atomic_write_text

__all__ = ["EVALUATION_RECORD", "keep_evaluations_across_kills"]

logger = logging.getLogger(__name__)

EVALUATION_RECORD = "last_evaluation"


def keep_evaluations_across_kills(hooks: Sequence[HookBase], output_dir: str) -> List[HookBase]:
    """DefaultTrainer's ``hooks`` with :class:`_RecordEvaluation` last (in every process:
    a resumed run's evaluation is collective)."""
    hooks = [h for h in hooks if h is not None]
    evals = [h for h in hooks if isinstance(h, d2_hooks.EvalHook)]
    if not evals:
        return hooks
    writes = [h for h in hooks if isinstance(h, d2_hooks.PeriodicWriter)]
    # the files; not the console printer, whose ETA divides by the iterations since its last
    files = [w for h in writes for w in h._writers if not isinstance(w, CommonMetricPrinter)]
    return [*hooks, _RecordEvaluation(evals[0], files, output_dir)]


class _RecordEvaluation(HookBase):
    """Each periodic evaluation written and recorded; a resumed run's checkpoint evaluated
    first when its due evaluation was not recorded."""

    def __init__(self, evaluation: d2_hooks.EvalHook, writers, output_dir: str):
        self._eval, self._writers = evaluation, list(writers)
        self._path = os.path.join(output_dir, EVALUATION_RECORD)

    def _due(self, iteration: int) -> bool:
        # EvalHook's periodic rule; the last iteration's evaluation is its after_train's
        period, next_iter = self._eval._period, iteration + 1
        return period > 0 and next_iter % period == 0 and next_iter != self.trainer.max_iter

    def _recorded(self) -> int:
        try:
            with open(self._path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return -1

    def _record(self, iteration: int) -> None:
        for writer in self._writers:  # the main process's (the others have none)
            writer.write()
        if comm.is_main_process():
            atomic_write_text(self._path, f"{iteration}\n")

    def after_step(self) -> None:
        if self._due(self.trainer.iter):
            self._record(self.trainer.iter)

    def before_train(self) -> None:
        checkpoint = self.trainer.start_iter - 1  # the resumed checkpoint's iteration
        if checkpoint < 0 or not self._due(checkpoint):
            return
        missing = comm.is_main_process() and self._recorded() < checkpoint
        if not comm.all_gather(missing)[0]:  # the main process's record decides for all
            return
        logger.warning(
            f"The evaluation of iteration {checkpoint} is not in {self._path} (the run "
            "stopped during it or before it was written): evaluating that checkpoint again"
        )
        storage = self.trainer.storage
        storage.iter = checkpoint
        try:
            self._eval._do_eval()
            self._record(checkpoint)
        finally:
            storage.iter = self.trainer.start_iter
