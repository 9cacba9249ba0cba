"""Reading checkpoint files without running their code, and telling an intact one.

:class:`~ovseg.engine.checkpoint.AtomicCheckpointer` reads every file through
:func:`read_checkpoint` (a data-only unpickler for ``.pkl``, ``torch.load(weights_only=True)``
for the rest); ``--resume`` takes the newest intact one of a run (:func:`read_intact`: it
reads, and its contents match the record of :mod:`.checkpoint_digest`) among the run's saves
(:func:`earlier_checkpoints`).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any, Dict, List, Optional, Tuple

from ..utils.safe_load import UnsafeWeightsError, load_pickle_weights, torch_load_weights
from .checkpoint_digest import changed_entries, describe_changed
from .checkpoint_fit import META_KEY

__all__ = [
    "UNREADABLE",
    "CheckpointCorruptedError",
    "CheckpointReadError",
    "earlier_checkpoints",
    "first_sentence",
    "read_checkpoint",
    "read_intact",
]

# what reading a damaged (truncated, emptied) checkpoint raises; refusals are not among them
UNREADABLE = (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError)
# a save's iteration, or model_final
_SAVED = re.compile(r"(?:_(\d+)|^model_final)\.pth$")


class CheckpointReadError(RuntimeError, ValueError):
    """A checkpoint file cannot be read (truncated or damaged); a ValueError too, so the
    tools report it as the user's bad input in one line."""


class CheckpointCorruptedError(CheckpointReadError):
    """A checkpoint's contents differ from the digest it recorded when it was saved
    (:mod:`.checkpoint_digest`): disk or copy corruption."""


def read_intact(path: str, logger) -> Tuple[Optional[Dict[str, Any]], str]:
    """Read a checkpoint that must be whole and unchanged (the one ``--resume`` continues).

    Args:
        path (str): the file.
        logger: where :func:`read_checkpoint` says what it reads.

    Returns:
        tuple: (its contents, "") when it reads and matches its record, else (None, why it
        is refused).

    Raises:
        UnsafeWeightsError: the file would run code.
    """
    try:
        data = read_checkpoint(path, logger)
    except UnsafeWeightsError:
        raise
    except UNREADABLE as e:
        return None, f"it cannot be read (truncated or damaged?): {first_sentence(e)}"
    changed = changed_entries(data, META_KEY)
    if changed:
        return None, f"{describe_changed(changed)} (disk or copy corruption)"
    return data, ""


def earlier_checkpoints(folder: str, latest: str) -> List[str]:
    """The saves of a run before its ``latest`` one, newest first.

    Args:
        folder (str): the run's OUTPUT_DIR.
        latest (str): the file last_checkpoint names.

    Returns:
        list[str]: the ``model_*.pth`` of ``folder`` before ``latest`` by iteration (all but
        it when its name tells none), ``model_final`` first.
    """
    order = _save_order(os.path.basename(latest))
    found = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        key = _save_order(name)
        if key is None or os.path.abspath(path) == os.path.abspath(latest):
            continue
        if order is None or key < order:
            found.append((key, path))
    return [path for _, path in sorted(found, reverse=True)]


def _save_order(name: str) -> Optional[float]:
    """The iteration of a checkpoint's file name, model_final's last (None: no save of a
    run)."""
    match = _SAVED.search(name)
    if match is None:
        return None
    return float("inf") if match.group(1) is None else int(match.group(1))


def first_sentence(error: BaseException) -> str:
    """The first sentence of ``error``'s message (its type's name when it has none): torch's
    for a truncated file goes on for five more about what may have caused it."""
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(error).__name__


def read_checkpoint(filename: str, logger) -> Dict[str, Any]:
    """Read a weight file as detectron2's ``_load_file`` does, without executing pickles.

    Args:
        filename (str): a ``.pth`` / ``.pkl`` / ``.pyth`` file.
        logger: where the writer of a model-zoo file is said.

    Returns:
        dict: the checkpoint, its weights under "model".
    """
    if filename.endswith(".pkl"):
        data = load_pickle_weights(filename)
        if not isinstance(data, dict):
            raise CheckpointReadError(f"{filename} holds a {type(data).__name__}, not a dict")
        if "model" in data and "__author__" in data:  # detectron2 model-zoo format
            logger.info(f"Reading a file from '{data['__author__']}'")
            return data
        # Caffe2 / Detectron1 model zoo, as detectron2/checkpoint/detection_checkpoint.py reads it
        data = data.get("blobs", data)
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
    try:
        loaded = torch_load_weights(filename)
    except UnsafeWeightsError:
        raise
    except ValueError as e:  # no checkpoint at all: unreadable, as a truncated one is
        raise CheckpointReadError(str(e)) from None
    if filename.endswith(".pyth"):  # pycls, as detectron2 reads it
        state = loaded.get("model_state") if isinstance(loaded, dict) else None
        if state is None:
            raise CheckpointReadError(f"{filename}: pycls checkpoints must contain 'model_state'")
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}
    if not isinstance(loaded, dict):
        raise CheckpointReadError(f"{filename} holds a {type(loaded).__name__}, not a dict")
    return loaded if "model" in loaded else {"model": loaded}
