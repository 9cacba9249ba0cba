"""A launched worker's error raised again in its launcher, as itself.

torch's ``spawn`` hands the launcher only the text of a worker's traceback
(``ProcessRaisedException``), so an error the tools report in one line (a full disk, out of
memory, a checkpoint of another model, a file that cannot be decoded) ended a multi-process
run (``--num-gpus N``) in the worker's traceback, under the launcher's own. Each worker now
leaves its error, pickled, in a folder its launcher made (:func:`relaying`); the launcher
raises that error from torch's exception, whose text keeps the worker's traceback for log
files (:func:`relayed_errors`), so the tools' handlers see what a one-process run raises.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional

__all__ = ["relayed_errors", "relaying"]


def _path(folder: str, local_rank: int) -> str:
    return os.path.join(folder, f"rank{local_rank}.pickle")


def _rebuild(cls: type, args: tuple, state: Dict[str, Any]) -> BaseException:
    """An exception of ``cls`` with ``args`` and attributes ``state``, without its
    ``__init__`` (which may take keyword-only fields, as ``DiskFullError``'s does)."""
    error = cls.__new__(cls, *args)
    error.args = args
    for name, value in state.items():
        setattr(error, name, value)
    return error


def _packed(error: Exception) -> Optional[bytes]:
    """``error`` pickled so that its launcher can load it again (None: it cannot be)."""
    try:
        data = pickle.dumps(error)
        pickle.loads(data)  # a class whose __init__ takes other arguments fails here
        return data
    except Exception:
        pass
    state = dict(vars(error))
    if isinstance(error, OSError):  # slots of OSError, not in its __dict__
        state.update(errno=error.errno, strerror=error.strerror, filename=error.filename)
    try:
        data = pickle.dumps((_rebuild, type(error), error.args, state))
        pickle.loads(data)
        return data
    except Exception:  # e.g. an attribute that cannot be pickled
        return None


def relaying(folder: str, main_func: Callable[..., Any], *args: Any) -> Any:
    """``main_func(*args)`` in a launched worker; an error it raises is left in ``folder``
    for the launcher (an error that cannot be pickled is not: torch's report stays)."""
    try:
        return main_func(*args)
    except Exception as e:
        data = _packed(e)
        if data is not None:
            from detectron2.utils import comm

            from .io import atomic_write

            try:  # a full disk may refuse it too: torch's report stays
                atomic_write(_path(folder, comm.get_local_rank()), lambda f: f.write(data))
            except OSError:
                pass
        raise


def _relayed(folder: str, local_rank: Optional[int]) -> Optional[BaseException]:
    """The error worker ``local_rank`` left in ``folder`` (None: none, or unreadable)."""
    try:
        with open(_path(folder, int(local_rank)), "rb") as f:
            error = pickle.load(f)  # written by this launcher's own workers, in its folder
        if isinstance(error, tuple) and error and error[0] is _rebuild:
            error = _rebuild(*error[1:])
    except Exception:
        return None
    return error if isinstance(error, Exception) else None


@contextmanager
def relayed_errors() -> Iterator[str]:
    """Launch workers inside: yields the folder to pass :func:`relaying`; a worker's error
    reported by torch's spawn is raised as the worker's own exception (when it left one).

    Yields:
        str: a new private folder, removed on exit.
    """
    import torch.multiprocessing as mp

    folder = tempfile.mkdtemp(prefix="ovseg-worker-errors-")
    try:
        yield folder
    except mp.ProcessRaisedException as e:
        error = _relayed(folder, getattr(e, "error_index", None))
        if error is None:
            raise
        raise error from e
    finally:
        shutil.rmtree(folder, ignore_errors=True)
