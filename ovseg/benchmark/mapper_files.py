"""Synthetic files in the layouts the training mappers read, for :func:`mapper_rate`.

Per image: a JPEG and a few rectangles of the dataset's label ids, written as the config's
mapper reads them (:data:`ovseg.benchmark.synthetic.MAPPER_TARGETS`): a label PNG
(``sem_seg_file_name``, semantic mappers); plus a panoptic PNG of segment ids and its
``segments_info`` (``ovseg_panoptic``, COCO panoptic's layout); or instance
``annotations`` as polygons (``ovseg_instance``); and, for ``ovseg_xpm_instance``, one
caption pseudo instance per image in an instance pseudo-label store (its records attached
to the dicts as the training loader attaches them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from detectron2.config import CfgNode

__all__ = ["synthetic_files", "write_instance_store"]

# (y0, x0, y1, x1, dataset label id)
Rect = Tuple[int, int, int, int, int]


def _rects(rng: np.random.Generator, h: int, w: int, ids: Sequence[int]) -> List[Rect]:
    """A background over the whole image, then four rectangles."""
    out = [(0, 0, h, w, ids[0])]
    for _ in range(4):
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        out.append((y, x, y + h // 3, x + w // 3, ids[int(rng.integers(len(ids)))] % 256))
    return out


def _panoptic(rects: List[Rect], h: int, w: int) -> Tuple[np.ndarray, List[dict]]:
    """An RGB panoptic PNG (id = R + 256 G + 65536 B) and its segments, segment k+1 for
    rectangle k; segments hidden under later rectangles are left out."""
    ids = np.zeros((h, w), dtype=np.int64)
    for k, (y0, x0, y1, x1, _) in enumerate(rects):
        ids[y0:y1, x0:x1] = k + 1
    present = set(np.unique(ids).tolist())
    segments = [
        {"id": k + 1, "category_id": int(r[4]), "iscrowd": 0, "isthing": int(k > 0)}
        for k, r in enumerate(rects)
        if k + 1 in present
    ]
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    return rgb, segments


def _annotations(rects: List[Rect]) -> List[dict]:
    """The rectangles after the background as COCO instance annotations (polygons)."""
    return [
        {"category_id": int(c), "iscrowd": 0, "bbox": [x0, y0, x1 - x0, y1 - y0],
         "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}
        for y0, x0, y1, x1, c in rects[1:]
    ]  # fmt: skip


def synthetic_files(
    folder: str, kind: str, images: int, size: Tuple[int, int], ids: Sequence[int]
) -> List[Dict[str, Any]]:
    """Write ``images`` synthetic samples into ``folder`` for a mapper of ``kind``.

    Args:
        folder (str): an existing folder.
        kind (str): the mapper's targets ("", "semantic", "panoptic", "instance", "xpm").
        images (int): samples.
        size ((int, int)): their (height, width).
        ids: dataset label ids the files may hold.

    Returns:
        list[dict]: dataset dicts in the dataset's layout (no pseudo records yet).
    """
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = size
    dicts = []
    for i in range(images):
        base = os.path.join(folder, f"{i:06d}")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            base + ".jpg", quality=90
        )
        rects = _rects(rng, h, w, ids)
        d: Dict[str, Any] = {"file_name": base + ".jpg", "height": h, "width": w, "image_id": i}
        if kind in ("instance", "xpm"):
            d["annotations"] = _annotations(rects)
            dicts.append(d)
            continue
        label = np.zeros((h, w), dtype=np.uint8)
        for y0, x0, y1, x1, c in rects:
            label[y0:y1, x0:x1] = c
        Image.fromarray(label).save(base + ".png")
        d["sem_seg_file_name"] = base + ".png"
        if kind == "panoptic":
            rgb, d["segments_info"] = _panoptic(rects, h, w)
            Image.fromarray(rgb).save(base + "_panoptic.png")
            d["pan_seg_file_name"] = base + "_panoptic.png"
        dicts.append(d)
    return dicts


def write_instance_store(
    root: str, cfg: CfgNode, dicts: Sequence[Dict[str, Any]]
) -> List[Dict[str, Any]]:
    """An XPM instance store at ``root`` over the config's pseudo-label vocabulary (its full
    training vocabulary, or XPM's LVIS names) with one pseudo instance per image (the last
    unseen class, the image's left half), and the dicts with their records attached.

    Returns:
        list[dict]: copies of ``dicts`` with "pseudo_instances_file_name" and its digest.
    """
    from ..data.captions.settings import xpm_store_vocabulary
    from ..pseudo import InstancePseudoLabelStore
    from ..pseudo.instance_store import attach_pseudo_instances
    from ..pseudo.instances import encode_mask
    from ..pseudo.store import image_id_of

    dataset = cfg.DATASETS.TRAIN[0]
    vocab, extra = xpm_store_vocabulary(cfg, dataset)
    name = (vocab.unseen or vocab.names)[-1]
    store = InstancePseudoLabelStore.create(
        str(Path(root)),
        {"fingerprint": "0" * 64, "teacher": {"clip": "0" * 64, "settings": {}},
         "vocabulary": list(vocab.names), "unseen": list(vocab.unseen), "threshold": 0.0,
         "dataset": dataset, **extra},
    )  # fmt: skip
    for d in dicts:
        h, w = d["height"], d["width"]
        mask = np.zeros((h, w), bool)
        mask[:, : max(w // 2, 1)] = True
        inst = {"noun": name, "category": name, "category_id": list(vocab.names).index(name),
                "box": [0, 0, max(w // 2, 1), h], "mask": encode_mask(mask), "cosine": 0.3,
                "score": 0.57, "proposal": 0}  # fmt: skip
        store.write(image_id_of(d), {"height": h, "width": w, "instances": [inst]})
    store.finalize()
    return attach_pseudo_instances(dicts, store)
