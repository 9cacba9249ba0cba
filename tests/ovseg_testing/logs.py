"""A logger's records in a test, whatever detectron2's set-up did to propagation."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, List


@contextmanager
def records(name: str, level: int = logging.WARNING) -> Iterator[List[logging.LogRecord]]:
    """Records of logger ``name`` at ``level`` and above, on a handler of its own: detectron2's
    ``setup_logger``, run by other tests in the process, stops "ovseg" records from reaching
    the root logger (and so pytest's ``caplog``)."""
    got: List[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = got.append
    log = logging.getLogger(name)
    old_level = log.level
    if log.getEffectiveLevel() > level:
        log.setLevel(level)
    log.addHandler(handler)
    try:
        yield got
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
