"""Detectron2's catalogs for every split: (re-)registration and the hint after an unknown name.

:func:`register_split` is what every registration (``common.py``, the region, instance and
few-shot sets, custom folders, the toy world) ends in.
"""

from __future__ import annotations

import difflib

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["closest_datasets", "register_split"]


def closest_datasets(name: str) -> str:
    """The hint after an unknown dataset name: the registered names spelt most like it."""
    registered = DatasetCatalog.list()
    close = difflib.get_close_matches(name, registered, n=5, cutoff=0.5)
    if close:
        return f"the closest registered names are {close}"
    return f"none of the {len(registered)} registered names is close"


def register_split(name: str, loader, **metadata) -> None:
    """Register (or register again) a split: its loader and its metadata.

    Args:
        name (str): the split's name in DatasetCatalog/MetadataCatalog.
        loader: ``() -> list[dict]``, the dataset dicts.
        metadata: the MetadataCatalog fields.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
