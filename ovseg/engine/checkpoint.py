"""A DetectionCheckpointer whose files are written atomically (temp file + rename)."""

from __future__ import annotations

import os

import torch

from detectron2.checkpoint import DetectionCheckpointer

from ..utils.io import atomic_write, atomic_write_text


class AtomicCheckpointer(DetectionCheckpointer):
    """A kill while saving leaves the previous checkpoint and ``last_checkpoint`` intact."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write_text(path, last_filename_basename)
