"""Training steps: detectron2's, with the loss metrics read back every few steps instead of
every step, a mixed-precision step for CUDA (fp16/bf16) and CPU (bf16), and gradient
accumulation (SOLVER.ACCUMULATE_STEPS)."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..compat import write_metrics
from ..modeling.mask_count import step_normalizer

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

__all__ = ["AMPTrainer", "Accumulation", "DeferredMetrics", "OvsegSimpleTrainer"]


class DeferredMetrics:
    """Loss metrics written ``metrics_period`` steps at a time, in one device read-back.

    detectron2's step reads every loss back to the host (``.item()``) every iteration, which
    waits for the device to finish the step before the next can be queued. Here the detached
    losses wait on the device and are read back together when ``(iter + 1)`` is a multiple
    of ``metrics_period`` (the writers' period, 20, by default) or the iteration is the last
    (``max_iter``); each is then written at its own iteration, so the event storage, the
    writers and the non-finite check see what they would have seen (the check fires up to
    ``metrics_period - 1`` steps late). ``metrics_period`` 1 is detectron2's behaviour.
    """

    metrics_period: int = 1
    #: the training's iteration count, so its last step writes what is pending
    max_iter: Optional[int] = None

    def _write_metrics(self, loss_dict, data_time: float, prefix: str = "") -> None:
        if self.metrics_period <= 1:
            write_metrics(loss_dict, data_time, prefix)
            return
        it = get_event_storage().iter
        pending = self.__dict__.setdefault("_pending_metrics", [])
        # one fresh tensor per step: a loss computed by a CUDA graph (MODEL.COMPILE_MODE
        # "reduce-overhead") lives in memory the graph's next replay overwrites
        values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()])
        pending.append((it, prefix, data_time, tuple(loss_dict), values))
        last = self.max_iter is not None and it + 1 >= self.max_iter
        if (it + 1) % self.metrics_period == 0 or last:
            self.flush_metrics()

    def flush_metrics(self, gather: bool = True) -> None:
        """Write the pending steps' metrics (one device-to-host copy for all of them).

        ``gather`` False writes the main process's own losses without a collective: a run
        stopped by an error in one process must not wait for the others in a gather."""
        pending: List[Tuple[int, str, float, Tuple[str, ...], torch.Tensor]]
        pending = self.__dict__.pop("_pending_metrics", [])
        if not pending:
            return
        values = iter(torch.cat([v for *_, v in pending]).cpu().tolist())
        storage = get_event_storage()
        current = storage.iter
        try:
            for it, prefix, data_time, names, _ in pending:
                storage.iter = it
                read = {k: torch.tensor(next(values)) for k in names}
                if gather or comm.get_world_size() == 1:
                    write_metrics(read, data_time, prefix)
                else:
                    _write_local_metrics(read, data_time, prefix)
        finally:
            storage.iter = current

    def write_pending_metrics(self, gather: bool = True) -> None:
        """Write what a run stopped between read-backs left pending (an exception, Ctrl-C):
        the losses that led up to the stop reach the writers' last write. A non-finite loss
        among them is logged, not raised over the error that stopped the run. ``gather``
        False (a multi-process run stopped early): the main process's own losses, with no
        collective, since the other processes may be stopped or waiting elsewhere."""
        try:
            self.flush_metrics(gather=gather)
        except FloatingPointError as e:
            logging.getLogger(__name__).error("%s", e)

    def after_train(self) -> None:
        self.write_pending_metrics()
        super().after_train()


def _write_local_metrics(loss_dict, data_time: float, prefix: str = "") -> None:
    """``SimpleTrainer.write_metrics`` of this process's values alone (no gather)."""
    if not comm.is_main_process():
        return
    storage = get_event_storage()
    metrics = {k: float(v) for k, v in loss_dict.items()}
    storage.put_scalar("data_time", data_time)
    total = sum(metrics.values())
    if not np.isfinite(total):
        raise FloatingPointError(
            f"Loss became infinite or NaN at iteration={storage.iter}!\nloss_dict = {metrics}"
        )
    storage.put_scalar(f"{prefix}total_loss", total)
    if len(metrics) > 1:
        storage.put_scalars(**metrics)


class Accumulation:
    """One optimizer step over ``accumulate_steps`` batches of the loader (its batch size is
    SOLVER.IMS_PER_BATCH / steps), which stands in for that many times the processes: each
    batch's forward and backward with its loss divided by the steps, so that a loss that is a
    mean per forward (LSeg, MaskCLIP+, XPM: a mean per process under DDP) gets the gradient
    DDP's mean over the processes gives, as PyTorch Lightning's ``accumulate_grad_batches``
    (LSeg's official runs); a loss over masks (ZegCLIP, FreeSeg) is divided by the masks of
    all the step's forwards and processes, as the official criteria all-reduce their count
    (ovseg/modeling/mask_count.py). Batch-dependent layers (BN, SyncBN) see one batch per
    forward; DDP synchronises gradients on the last backward only. The metrics are the
    batches' means. 1: detectron2's step, unchanged."""

    accumulate_steps: int = 1

    def _set_accumulation(self, steps: int) -> None:
        if int(steps) < 1:
            raise ValueError(f"SOLVER.ACCUMULATE_STEPS must be >= 1, got {steps}")
        self.accumulate_steps = int(steps)

    def _no_sync(self, last: bool):
        if not last and isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _accumulate(
        self, forward: Callable[[list], Dict[str, torch.Tensor]], backward: Callable
    ) -> Tuple[Dict[str, torch.Tensor], float]:
        """The step's forwards and backwards; (mean loss dict, summed data time)."""
        steps = self.accumulate_steps
        self.optimizer.zero_grad()
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        count = getattr(model, "mask_count", None)
        batches, data_time = [], 0.0
        if count is not None and count.prefetch:  # the step's mask count before its forwards
            batches, data_time = self._next_batches(steps)
            count.fixed = step_normalizer([model.count_masks(b) for b in batches], steps)
        elif count is not None:  # recorded by the forwards, divided out afterwards
            count.recorded = []
        means: Dict[str, torch.Tensor] = {}
        try:
            for i in range(steps):
                if not batches:
                    data, seconds = self._next_batches(1)
                    data, data_time = data[0], data_time + seconds
                else:
                    data = batches[i]
                with self._no_sync(last=i == steps - 1):
                    loss_dict = forward(data)
                    backward(sum(loss_dict.values()) / steps)
                for name, value in loss_dict.items():
                    means[name] = means.get(name, 0) + value.detach() / steps
            if count is not None and count.recorded is not None:
                divisor = step_normalizer(count.recorded, steps) / float(count.provisional)
                means = _divide_gradients(self.model, means, divisor)
        finally:
            if count is not None:
                count.fixed, count.recorded, count.provisional = None, None, None
        after_backward(self)
        return means, data_time

    def _next_batches(self, n: int) -> Tuple[list, float]:
        start = time.perf_counter()
        batches = [next(self._data_loader_iter) for _ in range(n)]
        return batches, time.perf_counter() - start


def _divide_gradients(model, losses: Dict[str, torch.Tensor], divisor: float):
    """Divide the gradients (all-reduced already) and the losses of a step by ``divisor``."""
    if divisor != 1.0:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(divisor)
    return {k: v / divisor for k, v in losses.items()}


def after_backward(trainer) -> None:
    """The hooks' ``after_backward`` once the step's gradients are in, as detectron2's own
    steps call it after v0.6 (``SimpleTrainer.run_step``); v0.6 has no such hook."""
    call = getattr(trainer, "after_backward", None)
    if call is not None:
        call()


def _loss_dict(out) -> Dict[str, torch.Tensor]:
    return {"total_loss": out} if isinstance(out, torch.Tensor) else out


class OvsegSimpleTrainer(Accumulation, DeferredMetrics, SimpleTrainer):
    """detectron2's ``SimpleTrainer`` with :class:`DeferredMetrics` and
    :class:`Accumulation`."""

    def __init__(
        self, model, data_loader, optimizer, *, metrics_period: int = 1, accumulate_steps: int = 1
    ) -> None:
        super().__init__(model, data_loader, optimizer)
        self.metrics_period = int(metrics_period)
        self._set_accumulation(accumulate_steps)

    def run_step(self) -> None:
        if self.accumulate_steps == 1:
            super().run_step()
            return
        assert self.model.training, "[OvsegSimpleTrainer] model was changed to eval mode!"
        loss_dict, data_time = self._accumulate(
            lambda data: _loss_dict(self.model(data)), lambda loss: loss.backward()
        )
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


class AMPTrainer(Accumulation, DeferredMetrics, SimpleTrainer):
    """Like detectron2's AMPTrainer, on the device of the model and with a chosen dtype.

    detectron2's own (v0.6 and later) requires CUDA and fp16; bf16 needs no grad scaler and
    also runs on the CPU. Metrics as :class:`DeferredMetrics`, steps as :class:`Accumulation`.
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        dtype: str = "fp16",
        metrics_period: int = 1,
        accumulate_steps: int = 1,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"SOLVER.AMP.DTYPE={dtype!r}; supported: {sorted(_DTYPES)}.")
        super().__init__(model, data_loader, optimizer)
        self.metrics_period = int(metrics_period)
        self._set_accumulation(accumulate_steps)
        self.dtype = _DTYPES[dtype]
        param = next(model.parameters())
        self.device_type = param.device.type
        if self.device_type == "cpu" and self.dtype == torch.float16:
            raise ValueError("fp16 autocast needs CUDA; use SOLVER.AMP.DTYPE bf16 on the CPU.")
        self.grad_scaler = torch.amp.GradScaler(
            self.device_type, enabled=self.dtype == torch.float16
        )

    def _forward(self, data) -> Dict[str, torch.Tensor]:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return _loss_dict(self.model(data))

    def _backward(self, loss: torch.Tensor) -> None:
        self.grad_scaler.scale(loss).backward()

    def run_step(self) -> None:
        assert self.model.training, "[AMPTrainer] model was changed to eval mode!"
        if self.accumulate_steps > 1:
            loss_dict, data_time = self._accumulate(self._forward, self._backward)
        else:
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time = time.perf_counter() - start
            loss_dict = self._forward(data)
            self.optimizer.zero_grad()
            self._backward(sum(loss_dict.values()))
            after_backward(self)
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self):
        ret = super().state_dict()
        ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
