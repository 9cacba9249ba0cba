"""Backbone weights that download on first use: a failed download (offline, a proxy, a
firewall) ends in one error that names the weights, their source, the config key and where a
copied file is found, instead of a network traceback (the CLIP teacher's own hint:
``ovseg/clip/build.py``)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional

__all__ = ["WeightsDownloadError", "explain_download_failure", "local_weights_problem"]


_WITHOUT = "builds the model without them (enough when MODEL.WEIGHTS holds the whole model)"


class WeightsDownloadError(OSError):
    """Weights could not be downloaded; the message says how to provide them by hand."""


@contextmanager
def explain_download_failure(
    what: str,
    source: str,
    key: str,
    local: Optional[str] = None,
    empty_means: str = _WITHOUT,
) -> Iterator[None]:
    """Turn an OSError (urllib's URLError, huggingface_hub's LocalEntryNotFoundError, ...)
    raised inside the block into a :class:`WeightsDownloadError` saying what to do.

    Args:
        what: the weights, e.g. "torchvision resnet101 IMAGENET1K_V1".
        source: where they download from (a URL or a Hugging Face repository).
        key: the config key that names them.
        local: the file the loader reads before downloading, if there is one.
        empty_means: what ``key`` set to '' does.
    """
    try:
        yield
    except WeightsDownloadError:
        raise
    except OSError as e:
        copy = f"copy it to {local} (read there before any download) or " if local else ""
        raise WeightsDownloadError(
            f"Could not download the {what} weights from {source} ({type(e).__name__}: {e}). "
            f"On a machine with network access download that file, then {copy}set {key} to "
            f"its path; {key} '' {empty_means}."
        ) from e


def local_weights_problem(path: str) -> Optional[str]:
    """What is wrong with a weight file named by a local path: "does not exist", "is a
    folder", or None when it is a file, empty (no weights) or a URL (fetched when read)."""
    if not path or "://" in path or os.path.isfile(path):
        return None
    return "is a folder" if os.path.isdir(path) else "does not exist"
