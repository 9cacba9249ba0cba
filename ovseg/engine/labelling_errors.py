"""How a pseudo-labelling process ends when it fails: in one line, and never alone.

Semantic labels (``pseudo_labelling.py``) and XPM's caption pseudo instances
(``pseudo_instances.py``) run their share of a dataset under the same rules: a dataset file
that cannot be used names the file, its dataset and what to do; running out of memory names
the settings to lower for the model at hand and says that the images labelled so far are kept;
and every process reaches the collective that tells the others, failed or not, so none waits
at a barrier, while a failed one raises its own error, not a ``RuntimeError`` copy of it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

from torch import nn

from detectron2.config import CfgNode
from detectron2.utils import comm

from ..data.bad_files import naming_data_files
from ..pseudo import all_ok
from ..utils.resources import naming_resources

__all__ = ["KEPT", "labelling_errors"]

KEPT = "The images labelled so far are kept: re-running the command labels the rest"


@contextmanager
def labelling_errors(cfg: CfgNode, dataset: str, model: Optional[nn.Module]) -> Iterator[None]:
    """Run this process's share of a labelling job (see the module's docstring).

    Args:
        cfg (CfgNode): the job's config (the memory settings and their values).
        dataset (str): the registered dataset labelled.
        model (nn.Module, optional): what runs the labels, for the memory settings that act on
            it (None: all of them).
    """
    try:
        with (
            naming_data_files([dataset]),
            naming_resources(cfg, "pseudo-labelling", lambda: KEPT, model),
        ):
            yield
    except Exception as e:
        comm.all_gather(f"rank {comm.get_rank()}: {type(e).__name__}: {e}")
        raise
    all_ok(None)  # another process failed: raise its error here too
