"""Advisory locks that keep a second job from writing where one job must write alone.

A :class:`FolderLock` is an exclusive ``fcntl.flock`` on a file in the folder it guards,
taken without waiting: a second job is refused at once in one line naming the job that holds
it (pid, host, start time, command), read from the lock file, which the holder fills in. The
kernel drops the lock when its holder exits or is killed, so a dead job never blocks the
next one, and the file left behind means nothing; a forked child (a DataLoader worker) does
not share it. Within one process a lock is taken once per
folder (a second ``acquire`` there reuses it): it keeps other jobs out, not this job's threads.
On systems without ``fcntl`` (Windows) locks are not taken.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import socket
import sys
import threading
from datetime import datetime, timezone
from typing import Dict, Optional, Tuple

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FolderInUseError", "FolderLock"]

logger = logging.getLogger(__name__)

# what flock says when another holder has the lock; any other error is a file system that
# cannot lock (NFS without a lock daemon: ENOLCK; some FUSE mounts: EINVAL, ENOTSUP)
_HELD_ELSEWHERE = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}

# realpath of a lock file -> (pid that took it, fd, holders in this process)
_HELD: Dict[str, Tuple[int, int, int]] = {}
_GUARD = threading.Lock()


def _forget_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the lock descriptors copied from the
    parent. A flock belongs to the open file, which the copies share, so a worker that
    outlived its killed trainer (or a parent that gave a lock back while its workers ran) kept
    the folder locked, refusing the next job in the dead job's name; the parent's own
    descriptors still hold its locks."""
    global _GUARD
    _GUARD = threading.Lock()  # another thread may have held it at the fork
    for _, fd, _ in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_locks)


class FolderInUseError(OSError):
    """Another job holds the folder's lock (an OSError: a user's mistake, reported in one
    line by the command-line tools, not a crash)."""


def _holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        return (
            f"pid {info['pid']} on {info['host']}, started {info['started']} "
            f"({info['command']})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a job that has not said which yet"


class FolderLock:
    """An exclusive lock on ``folder`` for one job.

    Args:
        folder (str): the folder guarded (created when missing).
        what (str): the kind of job, for messages ("pseudo-label generation", "training").
        name (str): the lock file's name in ``folder``.
        hint (str): what the refused job should do instead, appended to the error.
    """

    def __init__(self, folder: str, what: str, name: str = ".lock", hint: str = ""):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, name)
        self.what = what
        self.hint = hint
        self._key: Optional[str] = None

    def acquire(self) -> FolderLock:
        """Take the lock, or raise :class:`FolderInUseError` naming the job that holds it."""
        if fcntl is None or self._key is not None:
            return self
        os.makedirs(self.folder, exist_ok=True)
        key = os.path.realpath(self.path)
        with _GUARD:
            pid, fd, count = _HELD.get(key, (-1, -1, 0))
            if pid == os.getpid():  # this process holds it already (not a forked parent's)
                _HELD[key] = (pid, fd, count + 1)
                self._key = key
                return self
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in _HELD_ELSEWHERE:
                    logger.warning(
                        f"Cannot lock {self.path} ({e}): this file system takes no locks, so "
                        f"a second {self.what} there at once would not be refused"
                    )
                    self._key = ""  # not held: release does nothing
                    return self
                hint = f"; {self.hint}" if self.hint else ""
                raise FolderInUseError(
                    f"{self.folder} is in use by another {self.what}: {_holder(self.path)}. "
                    f"Two jobs writing there at once would mix or lose each other's files; "
                    f"wait for that job to end or stop it{hint}"
                ) from None
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": shlex.join(sys.argv) or sys.executable,
            }
            # written in place, not renamed: the lock belongs to this very file
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
            _HELD[key] = (os.getpid(), fd, 1)
            self._key = key
        return self

    def release(self) -> None:
        """Give the lock back (the last holder in this process unlocks the file)."""
        if not self._key:
            self._key = None
            return
        with _GUARD:
            # absent in a forked child: the parent's locks are not the child's to give back
            pid, fd, count = _HELD.pop(self._key, (-1, -1, 0))
            if count > 1:
                _HELD[self._key] = (pid, fd, count - 1)
            elif fd >= 0:
                os.close(fd)  # closing the only descriptor drops the flock
        self._key = None

    def refuse_if_held(self) -> None:
        """Raise :class:`FolderInUseError` when another job holds the lock now, without
        taking it; a folder without the lock file (no job ever held it) is not made."""
        if os.path.isfile(self.path):
            self.acquire().release()

    @property
    def held(self) -> bool:
        return bool(self._key)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
