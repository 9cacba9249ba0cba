"""Mixed-precision training step for CUDA (fp16/bf16) and CPU (bf16)."""

from __future__ import annotations

import time

import torch

from detectron2.engine import SimpleTrainer

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class AMPTrainer(SimpleTrainer):
    """Like detectron2's AMPTrainer, on the device of the model and with a chosen dtype.

    detectron2's own (v0.6 and later) requires CUDA and fp16; bf16 needs no grad scaler and
    also runs on the CPU.
    """

    def __init__(self, model, data_loader, optimizer, *, dtype: str = "fp16") -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"SOLVER.AMP.DTYPE={dtype!r}; supported: {sorted(_DTYPES)}.")
        super().__init__(model, data_loader, optimizer)
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
