"""A launched worker's error raised again in its launcher, as itself.

torch's ``spawn`` hands the launcher only the text of a worker's traceback
(``ProcessRaisedException``), so an error the tools report in one line (a full disk, out of
memory, a checkpoint of another model, a file that cannot be decoded) ended a multi-process
run (``--num-gpus N``) in the worker's traceback, under the launcher's own. Each worker now
leaves its error as JSON (its class's module and name, its arguments and attributes) in a
private folder of its launcher (:func:`relaying`); the launcher rebuilds it and raises it from
torch's exception, whose text keeps the worker's traceback for log files
(:func:`relayed_errors`), so the tools' handlers see what a one-process run raises. No pickle:
only an ``Exception`` subclass of an importable module is rebuilt, without its ``__init__``,
and an error that JSON cannot hold, or that does not read back as it was said, is left to
torch's report. A worker that only saw another fail (gloo's "Connection closed by peer" in a
collective) marks its error ``peer_failed``, so the launcher raises the other's own error even
when torch reports the echo first, and logs it as one warning (:func:`quiet_peer_failures`).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional

__all__ = ["relayed_errors", "relaying", "is_peer_gone", "quiet_peer_failures"]

# the text gloo gives a process whose peer closed its connection (the peer failed and ended)
_PEER_GONE = ("closed by peer", "reset by peer")


def _path(folder: str, local_rank: int) -> str:
    return os.path.join(folder, f"rank{int(local_rank)}.json")


def _rebuild(record: Dict[str, Any]) -> Optional[Exception]:
    """The exception ``record`` describes (None: not an Exception class of a module)."""
    cls: Any = importlib.import_module(record["module"])
    for name in record["name"].split("."):
        cls = getattr(cls, name)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return None
    args = tuple(record["args"])
    # without __init__, which may take other arguments (DiskFullError's keyword-only fields)
    error = cls.__new__(cls, *args)
    error.args = args
    for name, value in record["state"].items():
        setattr(error, name, value)
    return error


def _record(error: Exception) -> Optional[str]:
    """``error`` as JSON text that rebuilds it (None: it cannot be said so)."""
    state = dict(vars(error))
    if isinstance(error, OSError):  # slots of OSError, not in its __dict__ (None: unset)
        slots = {k: getattr(error, k) for k in ("errno", "strerror", "filename")}
        state.update({k: v for k, v in slots.items() if v is not None})
    cls = type(error)
    record = {"module": cls.__module__, "name": cls.__qualname__, "args": list(error.args)}
    try:
        text = json.dumps({**record, "state": state})
        again = _rebuild(json.loads(text))
    except Exception:  # an argument JSON cannot hold, a class defined in a function, ...
        return None
    return text if again is not None and str(again) == str(error) else None


def relaying(folder: str, main_func: Callable[..., Any], *args: Any) -> Any:
    """``main_func(*args)`` in a launched worker; an error it raises is left in ``folder``
    for the launcher (one that cannot be said is not: torch's report stays)."""
    try:
        return main_func(*args)
    except Exception as e:
        if is_peer_gone(e):  # it only saw another worker fail: the launcher shows that one's
            e.peer_failed = True
        text = _record(e)
        if text is not None:
            from detectron2.utils import comm

            from .io import atomic_write_text

            try:  # a full disk may refuse it too: torch's report stays
                atomic_write_text(_path(folder, comm.get_local_rank()), text, fsync=False)
            except OSError:
                pass
        raise


def _relayed(folder: str, local_rank: Optional[int]) -> Optional[Exception]:
    """The error worker ``local_rank`` left in ``folder`` (None: none, or unreadable)."""
    try:
        with open(_path(folder, local_rank), encoding="utf-8") as f:
            return _rebuild(json.load(f))
    except Exception:
        return None


def _first_failure(folder: str, reported: Optional[int]) -> Optional[Exception]:
    """The error of the worker torch reported, unless it only repeats another's failure
    (``peer_failed``: it stopped because that one failed, and may have ended first): then the
    other's own error."""
    error = _relayed(folder, reported)
    if error is None or not getattr(error, "peer_failed", False):
        return error
    ranks = sorted(int(n[4:-5]) for n in os.listdir(folder) if n.startswith("rank"))
    for rank in ranks:
        own = _relayed(folder, rank)
        if own is not None and not getattr(own, "peer_failed", False):
            return own
    return error


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
        error = _first_failure(folder, getattr(e, "error_index", None))
        if error is None:
            raise
        raise error from e
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def is_peer_gone(error: BaseException) -> bool:
    """True for the error a process gets when a peer of its process group closed its
    connection: that peer failed first, and its error, not this echo, is the run's."""
    text = str(error)
    return any(part in text for part in _PEER_GONE)


class _PeerFailureFilter(logging.Filter):
    """Logs a peer's failure as one line, not as this process's traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and is_peer_gone(error):
            text = str(error).strip()
            first = text.splitlines()[0] if text else ""
            record.msg = (
                "Stopped: another process of this run failed and closed its connection "
                f"({first}); the launcher reports that process's error"
            )
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


@contextmanager
def quiet_peer_failures(*logger_names: str) -> Iterator[None]:
    """Inside: a traceback that ``logger_names`` would log for a peer's failure (detectron2's
    "Exception during training:" of a rank whose collective lost its peer) is one warning.

    The rank that failed first has its own error raised by the launcher; the others' echo,
    a gloo "Connection closed by peer" traceback, printed before the launcher ended them,
    read as a second failure and hid the first.
    """
    filt = _PeerFailureFilter()
    loggers = [logging.getLogger(name) for name in logger_names]
    for log in loggers:
        log.addFilter(filt)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(filt)
