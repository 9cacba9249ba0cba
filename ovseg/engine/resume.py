"""What ``--resume`` needs beyond weights: RNG states, the data position, a safe target folder.

A run killed and resumed with ``SEED`` set trains on exactly what the uninterrupted run would
have: checkpoints hold the python/numpy/torch RNG states of the process that saves them and
the data stream's seed (:class:`DataPosition`), and the loader restarts at the resumed
iteration
(``ovseg.data.resumable_loader``). Before anything is written, a resumed run refuses an
``OUTPUT_DIR`` that another meta-architecture's run wrote, or whose checkpoint holds another
SOLVER.OPTIMIZER's state, and a training run removes the temporary files an interrupted
checkpoint save left behind. A resume names the SOLVER values of its config that the saved
optimizer and schedule override (:func:`resumed_solver_warning`), and what it resumes from
past a damaged latest checkpoint (:func:`fell_back_warning`, :func:`no_intact_checkpoint`).
"""

from __future__ import annotations

import logging
import os
import random
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.utils import comm

from ..data.resumable_loader import resumable_sampler_of
from ..utils.io import remove_temporaries
from .checkpoint_record import plain, recorded_config

__all__ = [
    "DataPosition",
    "check_resume_target",
    "check_resumed_optimizer",
    "check_saved_parameters",
    "fell_back_warning",
    "last_checkpoint_name",
    "no_intact_checkpoint",
    "optimizer_kind",
    "remove_stale_temporaries",
    "restore_training_position",
    "resumed_solver_warning",
    "rng_state",
    "saved_optimizer",
    "set_rng_state",
    "solver_state",
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


def check_resume_target(cfg: CfgNode, training: bool = True) -> None:
    """Refuse to resume into an OUTPUT_DIR whose saved config has another meta-architecture,
    or (``training``) whose latest checkpoint holds another SOLVER.OPTIMIZER's state (torch
    failed at the first step: KeyError 'step' or 'momentum').

    Called before the run's ``config.yaml`` is written again, so a refused run writes nothing.
    """
    saved = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if os.path.isfile(saved):
        with open(saved, encoding="utf-8") as f:
            text = f.read()
        match = re.search(r"^\s+META_ARCHITECTURE:\s*(\S+)\s*$", text, re.MULTILINE)
        theirs = match.group(1).strip("'\"") if match else None
        ours = cfg.MODEL.META_ARCHITECTURE
        if theirs is not None and theirs != ours:
            raise ValueError(
                f"--resume into {cfg.OUTPUT_DIR}: its run was a {theirs} ({saved}), this "
                f"config is a {ours}. Resume with that run's config, or pick another "
                "OUTPUT_DIR; nothing was written."
            )
    if training:  # after the architecture: another model may well use another optimizer
        check_resumed_optimizer(cfg)


def last_checkpoint_name(out: str) -> Optional[str]:
    """The checkpoint file OUTPUT_DIR ``out``'s ``last_checkpoint`` names (None: no such
    file, nothing to resume)."""
    last = os.path.join(out, "last_checkpoint")
    if not os.path.isfile(last):
        return None
    with open(last, encoding="utf-8") as f:
        return f.read().strip()


def fell_back_warning(
    refused: List[Tuple[str, str]], path: str, iteration: Any, last: str, training: bool = True
) -> str:
    """What ``--resume`` says when it loads ``path`` instead of ``last``'s checkpoint.

    Args:
        refused: (file, why it was refused) of last_checkpoint's file, then of any earlier
            one refused too.
        path (str): the intact checkpoint loaded.
        iteration: its "iteration".
        last (str): the ``last_checkpoint`` file.
        training (bool): a training resumes (False: ``--eval-only --resume`` evaluates it).

    Returns:
        str: one line naming the refused files and why, the file loaded instead, and, when
        training, that the iterations since are trained again.
    """
    (latest, why), others = refused[0], refused[1:]
    also = "".join(f" {p} was refused too: {w}." for p, w in others)
    kept = f"The refused file{'s are' if others else ' is'} kept as found, for inspection"
    if not training:
        return (
            f"--resume: {latest}, named by {last}, was refused: {why}.{also} Evaluating {path} "
            f"(iteration {iteration}) instead. {kept}"
        )
    return (
        f"--resume: {latest}, named by {last}, was refused: {why}.{also} Resuming from {path} "
        f"(iteration {iteration}) instead: the iterations after it are trained again. {kept} "
        f"(a save of the same name first moves it to <name>.pth.damaged), and last_checkpoint "
        f"names {os.path.basename(latest)} until the next save"
    )


def no_intact_checkpoint(refused: List[Tuple[str, str]], last: str) -> str:
    """The error of a ``--resume`` that found no intact checkpoint.

    Args:
        refused, last: as :func:`fell_back_warning`, every file tried in ``refused``.

    Returns:
        str: one line naming the files tried and why each was refused, and what to do.
    """
    tried = "; ".join(f"{p}: {w}" for p, w in refused)
    return (
        f"--resume found no intact checkpoint to continue from (last_checkpoint {last}, then "
        f"the earlier model_*.pth): {tried}. They are left as they are. Start the run again "
        "without --resume into a new OUTPUT_DIR, from MODEL.WEIGHTS <a checkpoint you trust> "
        "(a copy of one of these from where it was saved) or from its initial weights"
    )


def check_resumed_optimizer(cfg: CfgNode, optimizer=None) -> None:
    """Refuse a resume whose latest checkpoint holds another SOLVER.OPTIMIZER's state (read
    without loading its tensors): torch failed at the first step (KeyError 'step' for SGD's
    state in AdamW, 'momentum' for AdamW's in SGD); with ``optimizer`` (the run's, built),
    also one of other trainable parameters (:func:`check_saved_parameters`)."""
    name = last_checkpoint_name(cfg.OUTPUT_DIR)
    if name is None:
        return
    path = os.path.join(cfg.OUTPUT_DIR, name)
    try:  # the pickle only: tensors stay on disk
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable: the resume falls back to an earlier one, or says so
        return
    from .checkpoint_files import read_intact
    from .checkpoint_fit import CheckpointMismatchError

    try:
        saved, ours = saved_optimizer(checkpoint), cfg.SOLVER.OPTIMIZER.upper()
        if saved is not None and saved != ours:
            raise CheckpointMismatchError(
                f"--resume into {cfg.OUTPUT_DIR}: its checkpoint {os.path.basename(path)} "
                f"holds the state of SOLVER.OPTIMIZER {saved}, and this config's is {ours}; one "
                f"cannot continue the other's state. Resume with SOLVER.OPTIMIZER {saved}, or "
                f"start a new run from its weights (MODEL.WEIGHTS {path}, another OUTPUT_DIR); "
                "nothing was written."
            )
        if optimizer is not None:
            check_saved_parameters(checkpoint, optimizer, path)
    except CheckpointMismatchError:
        # read from a file changed since it was saved, the state is no run's: the resume
        # falls back past the file, and says why (the whole file is read on this path only)
        if read_intact(path, logger)[0] is None:
            return
        raise


def check_saved_parameters(checkpoint: Dict[str, Any], optimizer, path: str) -> None:
    """Refuse an optimizer state saved for other trainable parameters than ``optimizer``'s
    (another freezing, e.g. MODEL.BACKBONE.FREEZE_AT): torch's load_state_dict failed on the
    group count, or, with as many parameters, gave one parameter's state to another. Groups
    are compared by the parameter names ovseg's optimizer records (by count and sizes when
    a group has none)."""
    from .checkpoint_fit import CheckpointMismatchError

    try:
        saved = checkpoint["trainer"]["_trainer"]["optimizer"]["param_groups"]
    except (KeyError, TypeError):
        return
    ours = optimizer.param_groups
    names = [g.get("name") for g in saved], [g.get("name") for g in ours]
    if all(isinstance(n, str) for n in names[0] + names[1]):
        if names[0] == names[1]:
            return
        gone = [n for n in names[0] if n not in set(names[1])]
        new = [n for n in names[1] if n not in set(names[0])]
        parts = [f"{len(new)} trained here, not in the run ({_first(new)})"] if new else []
        if gone:
            parts.append(f"{len(gone)} trained in the run, not here ({_first(gone)})")
        what = "; ".join(parts) or "the same parameters in another order"
    elif [len(g["params"]) for g in saved] != [len(g["params"]) for g in ours]:
        what = f"{len(saved)} parameter groups in the run, {len(ours)} here"
    else:
        return
    raise CheckpointMismatchError(
        f"--resume: {path} holds the optimizer state of other trainable parameters than this "
        f"config's: {what}. A change of what is frozen (MODEL.*.FREEZE*, SOLVER "
        "multipliers of 0) cannot continue the run's optimizer state. Resume with the run's "
        f"config (its config.yaml), or start a new run from its weights (MODEL.WEIGHTS {path}, "
        "another OUTPUT_DIR)"
    )


def _first(names: List[str], shown: int = 3) -> str:
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def saved_optimizer(checkpoint: Dict[str, Any]) -> Optional[str]:
    """The SOLVER.OPTIMIZER whose state ``checkpoint`` holds: its recorded config's, else
    told from its hyper-parameters (None: no optimizer state, or not known)."""
    meta = checkpoint.get("ovseg_meta")
    config = meta.get("config") if isinstance(meta, dict) else None
    name = (recorded_config(config).get("SOLVER") or {}).get("OPTIMIZER")
    if isinstance(name, str):
        return name.upper()
    try:
        groups = checkpoint["trainer"]["_trainer"]["optimizer"]["param_groups"]
    except (KeyError, TypeError):
        return None
    return optimizer_kind(groups[0]) if groups else None


def optimizer_kind(group: Dict[str, Any]) -> Optional[str]:
    """SGD or ADAMW (ovseg's SOLVER.OPTIMIZER names), from a parameter group's keys."""
    if "momentum" in group:
        return "SGD"
    return "ADAMW" if "betas" in group else None


# SOLVER keys whose values the optimizer's parameter groups and the schedule's base learning
# rates carry: a resumed run continues with the checkpoint's (the schedule's shape, MAX_ITER,
# STEPS, warm-up, comes from the config)
SOLVER_STATE_KEYS = (
    "BASE_LR", "BACKBONE_MULTIPLIER", "LR_MULTIPLIER", "LR_MULTIPLIER_KEYS", "BIAS_LR_FACTOR",
    "WEIGHT_DECAY", "WEIGHT_DECAY_NORM", "WEIGHT_DECAY_EMBED", "WEIGHT_DECAY_BIAS",
    "MOMENTUM", "NESTEROV",
)  # fmt: skip
_GROUP_KEYS = ("weight_decay", "momentum", "nesterov")


def solver_state(optimizer, scheduler) -> Dict[str, Any]:
    """What of SOLVER the optimizer and schedule hold: the schedule's base learning rates and
    each parameter group's weight decay (and momentum)."""
    return {
        "base_lrs": [float(lr) for lr in getattr(scheduler, "base_lrs", [])],
        "groups": [{k: g[k] for k in _GROUP_KEYS if k in g} for g in optimizer.param_groups],
    }


def resumed_solver_warning(
    cfg: CfgNode, fresh: Dict[str, Any], used: Dict[str, Any], meta: Any, path: str
) -> Tuple[str, Dict[str, Any]]:
    """After a resume: a warning ("" if none) naming the SOLVER values that the checkpoint's
    optimizer and schedule state override, with the values in use.

    Args:
        cfg (CfgNode): the resumed run's config.
        fresh: :func:`solver_state` of the config's optimizer and schedule, before loading.
        used: :func:`solver_state` after loading the checkpoint.
        meta: the checkpoint's ``ovseg_meta`` (its recorded config names what changed).
        path (str): the checkpoint resumed from.

    Returns:
        tuple: the warning, and {SOLVER key: the value in effect} of the keys it names.
    """
    if used == fresh:
        return "", {}
    config = meta.get("config") if isinstance(meta, dict) else None
    recorded = recorded_config(config).get("SOLVER") or {}
    kept = {
        key: recorded[key]
        for key in SOLVER_STATE_KEYS
        if key in recorded and plain(recorded[key]) != plain(cfg.SOLVER.get(key))
    }
    named = "; ".join(
        f"SOLVER.{key} {plain(cfg.SOLVER.get(key))} here, {plain(value)} in the run"
        for key, value in kept.items()
    )
    decays = [g["weight_decay"] for g in used["groups"] if "weight_decay" in g]
    warning = (
        f"--resume continues the optimizer and learning-rate state of {path}, which overrides "
        f"this config's {named or 'SOLVER values (BASE_LR, its multipliers, weight decays)'}. "
        f"In use: learning rates after multipliers {_values(used['base_lrs'])}, weight decays "
        f"{_values(decays)} (config.yaml records this config's values). To train with the new "
        f"values, start a new run from the checkpoint: MODEL.WEIGHTS {path} with another "
        "OUTPUT_DIR"
    )
    return warning, kept


def _values(values: List[float]) -> str:
    return ", ".join(f"{v:g}" for v in sorted(set(values), reverse=True)) or "none"


def remove_stale_temporaries(folder: str) -> List[str]:
    """Remove checkpoint temporaries an interrupted save left in ``folder``; return them."""
    removed = remove_temporaries(folder, r".+\.pth|last_checkpoint|last_evaluation")
    if removed:
        logger.warning("removed %d stale checkpoint temporaries: %s", len(removed), removed)
    return removed
