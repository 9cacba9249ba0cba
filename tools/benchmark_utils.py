"""Helpers every ``tools/benchmark.py`` subcommand uses, in their own file so that the
subcommands kept in other files (``benchmark_zegclip.py``) import them without importing
``benchmark.py`` back."""

from __future__ import annotations

import torch

__all__ = ["default_device", "synchronize"]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA), so timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
