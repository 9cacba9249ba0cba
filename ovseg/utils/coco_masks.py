"""COCO segmentations (polygons, RLE with str, bytes or list counts) as boolean masks: the one
decoder of the instance mapper, the pseudo-instance quality report and the evaluation
baselines."""

from __future__ import annotations

import numpy as np

__all__ = ["decode_segmentation"]


def decode_segmentation(segmentation, height: int, width: int, file_name: str = "") -> np.ndarray:
    """A COCO annotation's ``"segmentation"`` as a bool (height, width) mask.

    Args:
        segmentation: a list of polygons (flat [x0, y0, x1, y1, ...] lists, merged; those of
            fewer than 3 points are dropped as detectron2's ``load_coco_json`` drops them, and
            none left is an empty mask), or an RLE dict ``{"size": [h, w], "counts": ...}``,
            its counts compressed (str as in json, or bytes) or uncompressed (run lengths).
        height, width: the image's size (polygons and uncompressed RLE are rasterised at it).
        file_name (str): the image, named in errors.
    """
    from pycocotools import mask as mask_util

    if isinstance(segmentation, list):
        if any(not isinstance(p, (list, tuple)) or len(p) % 2 for p in segmentation):
            raise ValueError(
                f"{file_name or 'an image'}: a polygon segmentation is a list of flat "
                f"[x0, y0, x1, y1, ...] coordinate lists, got {str(segmentation)[:80]}"
            )
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rles = mask_util.frPyObjects(polygons, height, width)
        return mask_util.decode(mask_util.merge(rles)).astype(bool)
    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):
            segmentation = mask_util.frPyObjects(segmentation, height, width)
        return mask_util.decode(segmentation).astype(bool)
    raise ValueError(
        f"{file_name or 'an image'}: a COCO segmentation is a list of polygons or an RLE dict, "
        f"not {type(segmentation).__name__}: check the annotation file's 'segmentation' fields"
    )
