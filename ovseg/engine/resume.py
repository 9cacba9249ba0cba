"""What ``--resume`` needs beyond weights: RNG states, the data position, a safe target folder.

A run killed and resumed with ``SEED`` set trains on exactly what the uninterrupted run would
have: checkpoints hold the python/numpy/torch RNG states of the process that saves them and
the data stream's seed (:class:`DataPosition`), and the loader restarts at the resumed
iteration
(``ovseg.data.resumable_loader``). Before anything is written, a resumed run refuses an
``OUTPUT_DIR`` that another meta-architecture's run wrote, and a training run removes the
temporary files an interrupted checkpoint save left behind.
"""

from __future__ import annotations

import logging
import os
import random
import re
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.utils import comm

from ..data.resumable_loader import resumable_sampler_of
from ..utils.io import remove_temporaries

__all__ = [
    "DataPosition",
    "check_resume_target",
    "remove_stale_temporaries",
    "restore_training_position",
    "rng_state",
    "set_rng_state",
]

logger = logging.getLogger(__name__)


def rng_state() -> Dict[str, Any]:
    """This process's python, numpy and torch (and CUDA) RNG states, as plain tensors/tuples
    (they load with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class DataPosition:
    """A checkpointable holding the training stream's seed (the position is the iteration)."""

    def __init__(self, data_loader) -> None:
        self.sampler = resumable_sampler_of(data_loader)
        self.loaded_seed: Optional[int] = None

    def state_dict(self) -> Dict[str, Any]:
        if self.sampler is None:
            return {}
        return {"seed": self.sampler.seed, "batch_size": self.sampler.batch_size}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.loaded_seed = state.get("seed")


def restore_training_position(trainer, extra: Dict[str, Any], data: DataPosition) -> None:
    """After a resume: restart the loader at ``trainer.start_iter``, then restore RNG states.

    The loader's iterator is re-created before the RNG states are set, because creating it
    draws from the torch RNG, as the interrupted run did once before its first iteration.
    """
    loop = trainer._trainer
    if data.sampler is not None:
        # the loader's batches so far: ACCUMULATE_STEPS per finished iteration
        steps = getattr(loop, "accumulate_steps", 1)
        data.sampler.set_start(trainer.start_iter * steps, data.loaded_seed)
        # the iterator of detectron2 v0.6 is made in SimpleTrainer.__init__, later ones lazily
        name = "_data_loader_iter_obj" if hasattr(loop, "_data_loader_iter_obj") else None
        setattr(loop, name or "_data_loader_iter", iter(loop.data_loader))
    else:
        logger.warning("this training loader cannot resume at an iteration: it restarts")
    states = extra.get("rng_states")
    rank, world = comm.get_rank(), comm.get_world_size()
    if isinstance(states, list) and len(states) == world:
        set_rng_state(states[rank])
    else:
        found = "none" if states is None else f"{len(states)} process(es)"
        logger.warning(
            "the checkpoint holds RNG states of %s, this run has %d process(es): the data "
            "position is restored, the random streams are not (the result is not "
            "bit-identical to an uninterrupted run)",
            found,
            world,
        )


def check_resume_target(cfg: CfgNode) -> None:
    """Refuse to resume into an OUTPUT_DIR whose saved config has another meta-architecture.

    Called before ``default_setup`` writes ``config.yaml``, so a refused run writes nothing.
    """
    saved = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if not os.path.isfile(saved):
        return
    with open(saved, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"^\s+META_ARCHITECTURE:\s*(\S+)\s*$", text, re.MULTILINE)
    theirs, ours = (match.group(1).strip("'\"") if match else None), cfg.MODEL.META_ARCHITECTURE
    if theirs is not None and theirs != ours:
        raise ValueError(
            f"--resume into {cfg.OUTPUT_DIR}: its run was a {theirs} ({saved}), this config "
            f"is a {ours}. Resume with that run's config, or pick another OUTPUT_DIR; nothing "
            "was written."
        )


def remove_stale_temporaries(folder: str) -> List[str]:
    """Remove checkpoint temporaries an interrupted save left in ``folder``; return them."""
    removed = remove_temporaries(folder, r".+\.pth|last_checkpoint|last_evaluation")
    if removed:
        logger.warning("removed %d stale checkpoint temporaries: %s", len(removed), removed)
    return removed
