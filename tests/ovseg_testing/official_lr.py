"""The official learning-rate schedules written out plainly, the references
SOLVER.POLY_FORMULA and SOLVER.POLY_STEP_ITERS are tested against: each a direct
transcription of what the official code computes for one iteration."""

from __future__ import annotations

import math


def mmcv_poly_lr(
    it: int,
    base_lr: float,
    max_iters: int,
    power: float,
    min_lr: float,
    warmup_iters: int = 0,
    warmup_ratio: float = 0.1,
    warmup: str = "linear",
) -> float:
    """The lr mmcv 1.4.4 sets before iteration ``it`` (0-based: ``runner.iter`` counts the
    finished iterations, ``mmcv/runner/iter_based_runner.py:60, :69``) for a group of
    ``base_lr``: ``PolyLrUpdaterHook.get_lr`` with ``by_epoch=False``
    (``mmcv/runner/hooks/lr_updater.py:236-241``), scaled by the linear or constant warm-up
    while ``it < warmup_iters`` (``:88-93, :137-145``)."""
    coeff = (1 - it / max_iters) ** power
    regular = (base_lr - min_lr) * coeff + min_lr
    if warmup_iters == 0 or it >= warmup_iters:
        return regular
    if warmup == "constant":
        return regular * warmup_ratio
    k = (1 - it / warmup_iters) * (1 - warmup_ratio)
    return regular * (1 - k)


def lightning_epoch_poly_lr(
    it: int, base_lr: float, steps_per_epoch: int, max_epochs: int, power: float = 0.9
) -> float:
    """The lr of lang-seg's ``LambdaLR(opt, lambda x: pow(1.0 - x / self.epochs, 0.9))``
    (``modules/lsegmentation_module.py:172-174``) at optimizer step ``it``: Lightning steps
    it once per epoch (the default ``interval="epoch"``), so x is the epoch of that step."""
    epoch = math.floor(it / steps_per_epoch)
    return base_lr * pow(1.0 - epoch / max_epochs, power)


def lightning_steps_per_epoch(images: int, gpus: int, batch: int, accumulate: int) -> int:
    """Optimizer steps in one epoch of PyTorch Lightning 1.3 under DDP: the
    ``DistributedSampler`` pads the images to a multiple of the GPUs, the loader keeps the last
    partial batch (no ``drop_last``, lang-seg ``modules/lsegmentation_module.py:177-184``), and
    the last batch of an epoch steps the optimizer even mid-accumulation
    (``TrainLoop.should_accumulate``, ``pytorch_lightning/trainer/training_loop.py``)."""
    per_gpu = math.ceil(images / gpus)
    batches = math.ceil(per_gpu / batch)
    return math.ceil(batches / accumulate)
