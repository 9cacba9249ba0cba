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
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_file",
    "make_output_folder",
    "publish_folder",
    "remove_temporaries",
]

# temporaries are hidden siblings of their destination; stores remove stale ones by prefix
TMP_PREFIX = ".tmp-"

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(
    path: PathLike, write: Callable[[Any], Any], *, fsync: bool = True, by_name: bool = False
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
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
