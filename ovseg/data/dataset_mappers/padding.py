"""How training mappers pad images (``INPUT.IMAGE_PAD``), as each official pipeline pads.

- ``"black"``: the mapper pads images with 0 before normalisation (ovseg's default; the
  official LSeg loader's ``ImageOps.expand(..., fill=0)`` of the crop);
- ``"gray"``: with 128, as Mask2Former's and FreeSeg's mappers
  (``mask_former_semantic_dataset_mapper.py:154`` of Mask2Former, FreeSeg's
  ``coco_full_task_new_baseline_dataset_mapper.py:248``);
- ``"normalized_zero"``: the mapper pads nothing and the model pads the normalised batch with
  0, i.e. the pixel mean, as mmseg's ``Pad`` after ``Normalize`` (ZegCLIP
  ``configs/_base_/datasets/voc12_20_512x512.py:14-15``). Every student pads its batch to
  its own size divisibility (ZegCLIP: ``INPUT.SIZE_DIVISIBILITY`` and the patch size), labels
  with ignore.

Labels are padded with the ignore label and masks with False in every mode.
"""

from __future__ import annotations

from typing import Tuple

from ...utils.choices import check_choice

__all__ = ["IMAGE_PADS", "image_padding"]

# INPUT.IMAGE_PAD -> the value the mapper pads images with; None: the model pads
IMAGE_PADS = {"black": 0, "gray": 128, "normalized_zero": None}


def image_padding(cfg) -> Tuple[int, int]:
    """The training mapper's (size_divisibility, image pad value) for ``cfg``:
    ``INPUT.SIZE_DIVISIBILITY`` and ``INPUT.IMAGE_PAD``'s value, or (-1, 0) (no padding in
    the mapper) for ``"normalized_zero"``."""
    hint = ("'black' (0), 'gray' (128) pad images in the mapper, 'normalized_zero' leaves it "
            "to the model (the pixel mean, as mmseg)")  # fmt: skip
    mode = check_choice(
        cfg.INPUT.get("IMAGE_PAD", "black"), tuple(IMAGE_PADS), "INPUT.IMAGE_PAD", hint
    )
    value = IMAGE_PADS[mode]
    if value is None:
        return -1, 0
    return int(cfg.INPUT.SIZE_DIVISIBILITY), value
