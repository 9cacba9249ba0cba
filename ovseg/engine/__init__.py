"""Training and evaluation machinery shared by train_net.py and the tools."""

from .checkpoint import AtomicCheckpointer
from .defaults import setup
from .trainer import Trainer

__all__ = ["AtomicCheckpointer", "Trainer", "setup"]
