"""Atomic file writes: readers never see half a file, and a crash leaves the old one intact."""

from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Any, Callable, Union

__all__ = ["TMP_PREFIX", "atomic_write", "atomic_write_json", "atomic_write_text"]

# temporaries are hidden siblings of their destination; stores remove stale ones by prefix
TMP_PREFIX = ".tmp-"

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(
    path: PathLike, write: Callable[[IO[bytes]], Any], *, fsync: bool = True, by_name: bool = False
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
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=os.path.basename(path))
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
        # mkstemp creates the file 0600; give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: PathLike, text: str, *, fsync: bool = True) -> None:
    """Write a UTF-8 text file atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), fsync=fsync)


def atomic_write_json(
    path: PathLike, obj: Any, *, indent: int = 2, sort_keys: bool = False, fsync: bool = True
) -> None:
    """Write ``obj`` as JSON (with a trailing newline) atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
    atomic_write_text(path, text, fsync=fsync)
