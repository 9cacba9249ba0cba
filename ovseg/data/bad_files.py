"""A dataset's file that cannot be used, said in one line: the file, what is wrong with it, the
dataset it belongs to and what to do about it.

The mappers raise a :class:`~ovseg.data.image_io.DataFileError` naming the file, in the main
process or in a DataLoader worker, whose error torch re-raises with the worker's traceback as
its message. A mapper does not know which registered dataset a record came from (a training
run concatenates DATASETS.TRAIN): :func:`naming_data_files` finds it, in the process that
knows the run's datasets, from the folders the dataset is registered with.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog

from .image_io import DataFileError, original_message

__all__ = ["data_file_message", "naming_data_files"]

# label folders before image folders: a label folder may lie inside the image folder
_FOLDERS = (("sem_seg_root", "label"), ("panoptic_root", "label"), ("image_root", "image"))


def _owner(message: str, dataset_names: Sequence[str]) -> Optional[Tuple[str, str]]:
    """(dataset, "label" or "image") of the first of ``dataset_names`` with a folder holding
    the file ``message`` names, or None."""
    for field, kind in _FOLDERS:
        for name in dataset_names:
            folder = MetadataCatalog.get(name).get(field, None)
            if isinstance(folder, str) and folder and os.path.join(folder, "") in message:
                return name, kind
    return None


def _advice(name: str, kind: str) -> str:
    meta = MetadataCatalog.get(name)
    guide = meta.get("registration_guide", None)
    if guide:  # registered from DATASETS.CUSTOM: the user's own folders
        return (
            f"it is {'a label' if kind == 'label' else 'an image'} of the custom dataset "
            f"{name!r}: fix or replace it, or move it and its {_other(kind)} out of the "
            f"dataset's folders; see {guide}"
        )
    script = meta.get("prepare_script", None)
    if kind == "label" and script:
        return (
            f"it is a label of dataset {name!r}, which python datasets/{script} converts: "
            "delete it and run that script again (it converts the labels that are missing); "
            "if it fails again, check the dataset's download"
        )
    return (
        f"it is {'a label' if kind == 'label' else 'an image'} of dataset {name!r}: check the "
        "dataset's download (download or extract the file again), or move it and its "
        f"{_other(kind)} out of the split's folders"
    )


def _other(kind: str) -> str:
    return "image" if kind == "label" else "label"


def data_file_message(error: DataFileError, dataset_names: Sequence[str]) -> str:
    """``error``'s one-line message (without a DataLoader worker's traceback), followed by the
    dataset of ``dataset_names`` its file belongs to and what to do, when one holds it.

    Args:
        error: a mapper's error, as raised or as torch re-raised it from a worker.
        dataset_names: the datasets the job reads (a config's DATASETS.TRAIN and TEST).

    Returns:
        str: the message.
    """
    message = original_message(error)
    owner = _owner(message, dataset_names)
    if owner is None:
        return message
    advice = _advice(*owner)
    return f"{message}. {advice[0].upper()}{advice[1:]}"


@contextmanager
def naming_data_files(dataset_names: Sequence[str]) -> Iterator[None]:
    """Run a job that reads ``dataset_names``; a :class:`DataFileError` it raises is raised
    again (the same class, from the original) with :func:`data_file_message`'s message.

    Args:
        dataset_names: the datasets the job reads.
    """
    try:
        yield
    except DataFileError as e:
        if getattr(e, "names_dataset", False):  # an inner job's, already said
            raise
        said = type(e)(data_file_message(e, dataset_names))
        said.names_dataset = True
        raise said from e
