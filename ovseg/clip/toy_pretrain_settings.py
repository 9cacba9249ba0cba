"""The settings of a toy CLIP pretraining run (``tools/pretrain_toy_clip.py``'s options),
checked before any training."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..utils.io import check_output_file

__all__ = ["RESUME_KEYS", "ToyPretrainSettings"]

# a run resumes only with the settings that decide its batches and its model
RESUME_KEYS = ("model_config", "batch_size", "seed", "size", "hard_negatives")


@dataclasses.dataclass
class ToyPretrainSettings:
    """A pretraining run; the fields are ``tools/pretrain_toy_clip.py``'s options."""

    model_config: str  # open_clip JSON model config
    output: str  # checkpoint to write (.pt)
    work_dir: str = ""  # resume state and metrics; "" = output/pretrain_toy_clip/<stem>
    steps: int = 800
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    seed: int = 0  # seed of the pretrain stream and init
    world_seed: int = 0  # seed of the evaluated world
    size: int = 64  # image side in pixels
    hard_negatives: bool = True
    num_eval: int = 256  # validation images to evaluate
    eval_period: int = 100
    checkpoint_period: int = 100
    threads: int = 1  # torch CPU threads (1 is fastest on busy cores)
    stop_after: int = 0  # train at most this many steps in this call, save, exit (0 = all)
    device: str = "cpu"  # where to train (evaluation runs on the CPU)
    workers: int = 0  # processes drawing batches (0 = one background thread)
    max_seconds: float = 0  # stop after the step that passes this many seconds (0 = no limit)
    export_partial: bool = False  # when stopping early, also write output
    resume: bool = False  # continue from <work_dir>/last.pt
    no_progress: bool = False  # no tqdm bar

    @property
    def run_dir(self) -> Path:
        """The work dir: ``work_dir``, else output/pretrain_toy_clip/<output stem>."""
        return Path(self.work_dir or Path("output", "pretrain_toy_clip", Path(self.output).stem))

    def check(self) -> None:
        """Refuse settings that cannot run here, naming the option and what to do: before
        any training (a bad output or work dir used to fail after it, or at its first save).
        """
        if self.batch_size < 2 or (self.hard_negatives and self.batch_size % 2):
            raise ValueError(
                f"--batch-size {self.batch_size}: need >= 2, and even with hard negatives"
            )
        for field, low in _AT_LEAST:
            value = getattr(self, field)
            if not value >= low:
                option = "--" + field.replace("_", "-")
                raise ValueError(f"{option} {value}: need >= {low}")
        if not os.path.isfile(self.model_config):
            raise ValueError(f"--model-config {self.model_config!r} does not exist")
        if os.path.isdir(self.output):
            raise ValueError(f"--output {self.output!r} is a folder; give a .pt file name")
        try:
            check_output_file(self.output, ".pt")
            check_output_file(self.run_dir / "last.pt", ".pt", "--work-dir")
        except OSError as e:
            raise ValueError(str(e)) from None
        last = self.run_dir / "last.pt"
        if not self.resume and last.is_file():
            raise ValueError(
                f"--work-dir {self.run_dir} holds a run's {last.name}; continue it with "
                "--resume, or give another --work-dir (or remove that one) to start over"
            )
        try:
            device = torch.device(self.device)
        except RuntimeError as e:
            raise ValueError(f"--device {self.device!r}: {e}") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"--device {self.device}: CUDA is not available here; use --device cpu"
            )


# (field, smallest value): an option below it cannot run
_AT_LEAST = (
    ("steps", 1), ("lr", 0), ("weight_decay", 0), ("warmup", 0), ("size", 16),
    ("num_eval", 1), ("eval_period", 1), ("checkpoint_period", 1), ("threads", 1),
    ("stop_after", 0), ("workers", 0), ("max_seconds", 0),
)  # fmt: skip
