"""COCO segmentations (polygons, RLE with str, bytes or list counts) as boolean masks: the one
decoder of the instance mapper, the pseudo-instance quality report and the evaluation
baselines."""

from __future__ import annotations

import numpy as np

__all__ = ["decode_segmentation"]


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO annotation's ``"segmentation"`` as a bool (height, width) mask.

    Args:
        segmentation: a list of polygons (flat [x0, y0, x1, y1, ...] lists, merged), or an RLE
            dict ``{"size": [h, w], "counts": ...}``, its counts compressed (str as in json, or
            bytes) or uncompressed (a list of run lengths).
        height, width: the image's size (polygons and uncompressed RLE are rasterised at it).
    """
    from pycocotools import mask as mask_util

    if isinstance(segmentation, list):
        rles = mask_util.frPyObjects(segmentation, height, width)
        return mask_util.decode(mask_util.merge(rles)).astype(bool)
    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):
            segmentation = mask_util.frPyObjects(segmentation, height, width)
        return mask_util.decode(segmentation).astype(bool)
    raise ValueError(
        f"a COCO segmentation is a list of polygons or an RLE dict, not "
        f"{type(segmentation).__name__}: check the annotation file's 'segmentation' fields"
    )
