"""Atomic file writes: readers never see half a file, and a crash leaves the old one intact."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import tempfile
from typing import Any, Callable, List, Optional, Tuple, Union

__all__ = [
    "TMP_PREFIX",
    "DiskFullError",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "as_disk_full",
    "check_output_file",
    "make_output_folder",
    "publish_folder",
    "remove_temporaries",
]

# temporaries are hidden siblings of their destination; stores remove stale ones by prefix
TMP_PREFIX = ".tmp-"

PathLike = Union[str, "os.PathLike[str]"]

# out of disk space, or of the user's quota: the write fails partway, whatever the writer
_FULL = {errno.ENOSPC: "no space left on device"}
if hasattr(errno, "EDQUOT"):  # not on Windows
    _FULL[errno.EDQUOT] = "disk quota exceeded"


class DiskFullError(OSError):
    """A write ran out of disk space (or quota). Its message names the file, how much it
    needed and how much is free in its folder; ``path``, ``needed`` (bytes, None when not
    known) and ``free`` (bytes) hold them. The file's previous version, if any, is intact."""

    def __init__(self, message: str, *, path: str, needed: Optional[int], free: int, code: int):
        super().__init__(message)
        self.errno, self.strerror = code, _FULL.get(code, "no space left on device")
        self.path, self.needed, self.free = path, needed, free

    def __str__(self) -> str:  # the message alone, not OSError's "[Errno 28] ..."
        return self.args[0]


def atomic_write(
    path: PathLike,
    write: Callable[[Any], Any],
    *,
    fsync: bool = True,
    by_name: bool = False,
    size: Optional[int] = None,
) -> None:
    """Write ``path`` through a temporary sibling, then ``os.replace`` it into place.

    The temporary file lives in the destination's folder (so the rename is atomic), gets the
    permissions a plain ``open()`` would give, and is removed if ``write`` fails. The folder
    is created when missing.

    Args:
        path: the destination.
        write: called with a binary file object open on the temporary file, or with the
            temporary file's path when ``by_name`` (for writers that take a file name, such
            as PIL's ``Image.save`` with a format or ``shutil.copyfile``).
        fsync (bool): flush the data to disk before the rename (checkpoints, stores).
        by_name (bool): pass the temporary path instead of an open file.
        size (int): about how many bytes the file takes, when known: a full disk's error
            says so (otherwise it says how much was written before the disk was full).

    Raises:
        DiskFullError: the disk (or quota) ran out while writing; the temporary is removed.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; give a file name to write")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = _create_temporary(folder, os.path.basename(path))
    except OSError as e:
        # name the file the user asked for, not the hidden temporary beside it
        reason = e.strerror or str(e)
        if isinstance(e, (FileExistsError, NotADirectoryError)):
            reason = "a part of its folder path is a file, not a folder"
        raise type(e)(
            f"cannot write {path}: {reason} (in {folder}); give a path in a folder you can write"
        ) from e
    try:
        if by_name:
            os.close(fd)
            write(tmp)
            if fsync:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
        else:
            with os.fdopen(fd, "wb") as f:
                write(f)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = os.path.getsize(tmp) if os.path.isfile(tmp) else 0
        if os.path.exists(tmp):
            os.remove(tmp)
        full = _disk_full_cause(e)
        if full is None or full.filename not in (None, tmp, path):  # another file's disk
            raise
        raise _disk_full_error(path, folder, full, written, size) from e


def as_disk_full(error: BaseException, path: PathLike) -> Optional[DiskFullError]:
    """``error`` as a :class:`DiskFullError` on ``path`` (a file or folder that could not be
    written) when a full disk or quota caused it, else None (an earlier DiskFullError
    behind it is returned as it is)."""
    cause: Optional[BaseException] = error
    while cause is not None and not isinstance(cause, DiskFullError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return cause
    full = _disk_full_cause(error)
    if full is None:
        return None
    path = os.fspath(full.filename or path)  # the file named by the error, if it names one
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return _disk_full_error(path, folder, full, 0, None)


def _disk_full_cause(exc: Optional[BaseException]) -> Optional[OSError]:
    """The ENOSPC / EDQUOT error behind ``exc``, if any: writers often raise their own error
    while handling it (torch.save's zip writer: "unexpected pos")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _disk_full_error(
    path: str, folder: str, cause: OSError, written: int, size: Optional[int]
) -> DiskFullError:
    free = shutil.disk_usage(folder).free  # the temporary is gone: what the file may use
    needed = max(size, written) if size else None  # the estimate leaves out a format's own
    if needed:
        what = f"it needs about {_mb(needed)}; "
    else:
        what = f"it needs more than {_mb(written)}; " if written else ""
    return DiskFullError(
        f"cannot write {path}: {_FULL[cause.errno]} ({what}{_mb(free)} free in {folder}); "
        "free space there or write elsewhere",
        path=path,
        needed=needed,
        free=free,
        code=cause.errno,
    )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} kB"


def _create_temporary(folder: str, name: str) -> Tuple[int, str]:
    """Create a new, empty ``<folder>/<TMP_PREFIX><random><name>``; return (fd, path).

    Unlike ``tempfile.mkstemp`` (mode 0600), the file is created with mode 0666 so the
    umask (and a folder's default ACL) give it exactly the permissions of a plain
    ``open()``, without reading the process-wide umask, which is not thread-safe.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f"{TMP_PREFIX}{secrets.token_hex(4)}{name}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name!r} in {folder}")


def remove_temporaries(folder: PathLike, names: str) -> List[str]:
    """Remove the temporaries that atomic writes killed midway left in ``folder``: the
    ``<TMP_PREFIX><8 hex digits><name>`` files of :func:`atomic_write` whose destination name
    matches the regular expression ``names`` (whole); return their paths, sorted. Call it only
    where no other process is writing those destinations.
    """
    folder = os.fspath(folder)
    if not folder or not os.path.isdir(folder):
        return []
    pattern = re.compile(re.escape(TMP_PREFIX) + f"[0-9a-f]{{8}}(?:{names})")
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if pattern.fullmatch(name) and os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
            removed.append(path)
    return removed


def atomic_write_text(path: PathLike, text: str, *, fsync: bool = True) -> None:
    """Write a UTF-8 text file atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), fsync=fsync)


def atomic_write_json(
    path: PathLike, obj: Any, *, indent: int = 2, sort_keys: bool = False, fsync: bool = True
) -> None:
    """Write ``obj`` as JSON (with a trailing newline) atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
    atomic_write_text(path, text, fsync=fsync)


def check_output_file(path: Optional[PathLike], suffix: str, option: str = "--output") -> None:
    """Refuse a tool's output file that is a folder, or that no file can be written at,
    before the work (the atomic write would refuse it only when writing, after the work).

    Raises:
        IsADirectoryError: naming ``option`` and the kind of file to give (``suffix``).
        OSError: naming ``option`` and the path that cannot be written.
    """
    if not path:
        return
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{option} {path} is a folder; give a {suffix} file name")
    # the nearest folder that exists must take a new file (as root, os.access says yes even
    # where writing fails, /proc or /sys): a file made and removed there at once
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    try:
        if not os.path.isdir(folder):
            raise NotADirectoryError(errno.ENOTDIR, "a part of its folder path is a file")
        fd, tmp = _create_temporary(folder, ".probe")
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise type(e)(
            f"{option}: cannot write {path}: {e.strerror or e} (in {folder}); give a path in a "
            "folder you can write"
        ) from None


def make_output_folder(path: PathLike) -> None:
    """Create a tool's output folder (and its parents), or say clearly why it cannot be.

    Raises:
        OSError: of the class the system gave, naming ``path`` and what to do (a file of
            that name, or a folder that cannot be written).
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"output {path} is a file; give a folder name for the output")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise type(e)(
            f"cannot create output folder {path}: {e.strerror or e}; give a folder you can write"
        ) from e


def publish_folder(tmp: PathLike, dest: PathLike, is_current: Callable[[], bool]) -> None:
    """Move the finished folder ``tmp`` to ``dest``, replacing a folder already there.

    ``tmp`` must be a sibling of ``dest`` (same file system, so the rename is atomic). An old
    ``dest`` is first renamed aside and then deleted, so a reader sees the old folder or the
    new one, never a mix. When another process published first (the rename fails because
    ``dest`` exists again), that is accepted if ``is_current()`` says its folder is the one
    wanted; otherwise the error is raised.

    Args:
        tmp: the complete new folder.
        dest: where it goes.
        is_current: whether the folder now at ``dest`` is the wanted one.
    """
    dest = os.fspath(dest)
    parent, name = os.path.split(os.path.abspath(dest))
    if os.path.exists(dest):
        old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
        os.replace(dest, os.path.join(old, name))
        shutil.rmtree(old)
    try:
        os.rename(tmp, dest)
    except OSError:
        if not is_current():
            raise
