"""Training steps: detectron2's, with the loss metrics read back every few steps instead of
every step, and a mixed-precision step for CUDA (fp16/bf16) and CPU (bf16)."""

from __future__ import annotations

import time
from typing import List, Optional, Tuple

import torch

from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

__all__ = ["AMPTrainer", "DeferredMetrics", "OvsegSimpleTrainer"]


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
            SimpleTrainer.write_metrics(loss_dict, data_time, prefix)
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

    def flush_metrics(self) -> None:
        """Write the pending steps' metrics (one device-to-host copy for all of them)."""
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
                SimpleTrainer.write_metrics(read, data_time, prefix)
        finally:
            storage.iter = current

    def after_train(self) -> None:
        self.flush_metrics()
        super().after_train()


class OvsegSimpleTrainer(DeferredMetrics, SimpleTrainer):
    """detectron2's ``SimpleTrainer`` with :class:`DeferredMetrics`."""

    def __init__(self, model, data_loader, optimizer, *, metrics_period: int = 1) -> None:
        super().__init__(model, data_loader, optimizer)
        self.metrics_period = int(metrics_period)


class AMPTrainer(DeferredMetrics, SimpleTrainer):
    """Like detectron2's AMPTrainer, on the device of the model and with a chosen dtype.

    detectron2's own (v0.6 and later) requires CUDA and fp16; bf16 needs no grad scaler and
    also runs on the CPU. Metrics as :class:`DeferredMetrics`.
    """

    def __init__(
        self, model, data_loader, optimizer, *, dtype: str = "fp16", metrics_period: int = 1
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"SOLVER.AMP.DTYPE={dtype!r}; supported: {sorted(_DTYPES)}.")
        super().__init__(model, data_loader, optimizer)
        self.metrics_period = int(metrics_period)
        self.dtype = _DTYPES[dtype]
        param = next(model.parameters())
        self.device_type = param.device.type
        if self.device_type == "cpu" and self.dtype == torch.float16:
            raise ValueError("fp16 autocast needs CUDA; use SOLVER.AMP.DTYPE bf16 on the CPU.")
        self.grad_scaler = torch.amp.GradScaler(
            self.device_type, enabled=self.dtype == torch.float16
        )

    def run_step(self) -> None:
        assert self.model.training, "[AMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
            losses = loss_dict if isinstance(loss_dict, torch.Tensor) else sum(loss_dict.values())
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
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
