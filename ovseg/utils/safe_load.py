"""Read weight files without running code from them.

``pickle.load`` calls whatever callable a file names, so a crafted weight file runs code on
load. ovseg reads every weight file a user passes through one of two readers that admit data
only:

- ``.pkl`` (detectron2 / Detectron model-zoo format: ``{"model": {name: ndarray}, ...}``):
  :func:`load_pickle_weights`, an unpickler that admits dicts, lists, tuples, sets, numbers,
  strings, bytes, None, bools and numpy arrays, and refuses every other global;
- ``.pth``/``.pt``/``.pyth``: :func:`torch_load_weights`, ``torch.load(weights_only=True)``
  (tensors, plain containers and numbers).
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Union

import torch

__all__ = [
    "UnsafeWeightsError",
    "load_pickle_weights",
    "looks_like_a_checkpoint",
    "torch_load_weights",
]

PathLike = Union[str, "os.PathLike[str]"]

# the globals a numpy array (or numpy scalar) needs to be rebuilt; numpy 2 renamed
# numpy.core to numpy._core and still reads files that name either
_NUMPY_GLOBALS = {
    (core, name)
    for core in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}
# Python 3's protocol-2 pickles rebuild bytes as _codecs.encode(text, "latin1"); the
# collections are plain containers
_PLAIN_GLOBALS = {
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("__builtin__", "set"),
}
ALLOWED_GLOBALS = frozenset(_NUMPY_GLOBALS | _PLAIN_GLOBALS)


class UnsafeWeightsError(pickle.UnpicklingError):
    """A weight file names code or objects beyond plain data; it was not loaded."""


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str, **kwargs):
        super().__init__(file, **kwargs)
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeWeightsError(
                f"{self._path} names {module}.{name}, which is not plain data (dicts, lists, "
                "numbers, strings, numpy arrays): refused, as loading it could run code. A "
                "detectron2 model-zoo .pkl holds only numpy arrays; if you trust this file, "
                "convert it to a .pth of tensors with torch.save yourself."
            )
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise UnsafeWeightsError(f"{self._path} uses persistent ids ({pid!r}): not plain data")


def load_pickle_weights(path: PathLike) -> Any:
    """Unpickle a ``.pkl`` weight file, admitting plain data and numpy arrays only.

    Args:
        path: the file (Python 2 pickles are read with ``encoding="latin1"``, as detectron2
            reads its model zoo).

    Returns:
        The unpickled object (a detectron2 model-zoo file gives a dict).

    Raises:
        UnsafeWeightsError: the file names a global outside :data:`ALLOWED_GLOBALS`.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        return _DataOnlyUnpickler(f, path, encoding="latin1").load()


_NOT_A_CHECKPOINT = (
    "{path} is not a PyTorch checkpoint (neither the zip archive torch.save writes nor a "
    "pickle); give the .pth file a run saved (model_final.pth) or tools/convert_checkpoint.py "
    "wrote"
)


def looks_like_a_checkpoint(path: str) -> bool:
    """torch.save's zip archive (``PK``) or a legacy pickle (protocol byte 0x80)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def torch_load_weights(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with an error that names the file.

    Raises:
        UnsafeWeightsError: the file holds objects beyond tensors and plain containers.
        ValueError: the file is no checkpoint at all (a text file, an image).
    """
    path = os.fspath(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (KeyError, ValueError, EOFError, IndexError) as e:  # what text makes of unpickling
        if not looks_like_a_checkpoint(path):
            raise ValueError(_NOT_A_CHECKPOINT.format(path=path)) from None
        raise e
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise  # not a refusal (e.g. a truncated legacy file): the caller names it
        if not looks_like_a_checkpoint(path):
            raise ValueError(_NOT_A_CHECKPOINT.format(path=path)) from None
        raise UnsafeWeightsError(
            f"{path} holds objects beyond tensors, numbers and plain containers: refused, as "
            "loading it could run code (torch.load weights_only=True). If you trust this "
            "file, re-save just its tensors with torch.save. Reason: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
