"""Instance and panoptic predictions drawn over images (detectron2's Visualizer conventions).

A model's output ``{"instances": Instances(pred_masks, pred_classes, scores)}`` is drawn with
``Visualizer.draw_instance_predictions``'s steps (class colours not jittered) and
``{"panoptic_seg": (ids, segments_info)}`` with ``Visualizer.draw_panoptic_seg``. Classes
index the vocabulary for things and stuff alike (Mask2Former's convention, as ovseg's
datasets), so the drawing metadata gives both ``thing_classes`` and ``stuff_classes`` the
vocabulary. Unseen classes are hatched and named with " (unseen)", as
:func:`ovseg.utils.visualization.draw_semantic` draws them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from detectron2.data import Metadata
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, VisImage, _create_text_labels

from .colors import deterministic_colors
from .visualization import UNSEEN_SUFFIX, OverlayVisualizer, _stripes

__all__ = ["draw_instance_predictions", "draw_panoptic_prediction", "mask_metadata"]


def mask_metadata(
    names: Sequence[str], unseen: Sequence[str] = (), colors: Optional[Sequence] = None
) -> Metadata:
    """Drawing metadata of a vocabulary: things and stuff both named by it, unseen suffixed."""
    unseen_set = set(unseen)
    shown = [n + UNSEEN_SUFFIX if n in unseen_set else n for n in names]
    colors = [list(c) for c in colors] if colors is not None else deterministic_colors(len(names))
    return Metadata(
        name="ovseg-masks",
        thing_classes=shown,
        stuff_classes=shown,
        thing_colors=colors,
        stuff_colors=colors,
    )


def _hatch(vis: VisImage, masks: Sequence[np.ndarray], colors, scale: float) -> None:
    for mask, color in zip(masks, colors):
        vis.ax.imshow(
            _stripes(mask, [c / 255 for c in color], scale),
            extent=(0, vis.width, vis.height, 0),
            interpolation="nearest",
        )


def draw_instance_predictions(
    image: np.ndarray,
    instances: Instances,
    names: Sequence[str],
    *,
    unseen: Sequence[str] = (),
    score_threshold: float = 0.5,
    scale: float = 1.0,
) -> VisImage:
    """Draw instances (``pred_masks``, ``pred_classes`` indexing ``names``, ``scores``).

    Instances scoring below ``score_threshold`` are left out; class colours are the
    vocabulary's (``ColorMode.SEGMENTATION``); unseen classes' masks are hatched.
    """
    meta = mask_metadata(names, unseen)
    instances = instances.to("cpu")
    if instances.has("scores"):
        instances = instances[instances.scores >= score_threshold]
    classes = instances.pred_classes.tolist() if instances.has("pred_classes") else []
    if any(not 0 <= c < len(names) for c in classes):
        raise ValueError(f"pred_classes {classes} index outside the {len(names)}-name vocabulary")
    vis = OverlayVisualizer(image, meta, scale=scale, instance_mode=ColorMode.SEGMENTATION)
    # draw_instance_predictions' own steps, with the class colours unjittered (deterministic)
    scores = instances.scores.tolist() if instances.has("scores") else None
    out = vis.overlay_instances(
        masks=instances.pred_masks.numpy() if instances.has("pred_masks") else None,
        boxes=None if instances.has("pred_masks") else instances.get("pred_boxes"),
        labels=_create_text_labels(classes, scores, meta.thing_classes),
        assigned_colors=[[v / 255 for v in meta.thing_colors[c]] for c in classes],
        alpha=0.5,
    )
    unseen_set = set(unseen)
    hatched = [i for i, c in enumerate(classes) if names[c] in unseen_set]
    if hatched and instances.has("pred_masks"):
        masks = instances.pred_masks.numpy().astype(bool)
        _hatch(out, [masks[i] for i in hatched], [meta.thing_colors[classes[i]] for i in hatched],
               scale)  # fmt: skip
    return out


def draw_panoptic_prediction(
    image: np.ndarray,
    panoptic_seg: torch.Tensor,
    segments_info: Sequence[dict],
    names: Sequence[str],
    *,
    unseen: Sequence[str] = (),
    scale: float = 1.0,
) -> VisImage:
    """Draw a panoptic prediction: (H, W) segment ids (0 = VOID) and per segment ``id``,
    ``category_id`` (indexing ``names``) and ``isthing``; unseen classes are hatched."""
    meta = mask_metadata(names, unseen)
    ids = torch.as_tensor(panoptic_seg).cpu()
    for s in segments_info:
        if not 0 <= s["category_id"] < len(names):
            raise ValueError(
                f"segment {s['id']} has category_id {s['category_id']}, outside the "
                f"{len(names)}-name vocabulary"
            )
    vis = OverlayVisualizer(image, meta, scale=scale)
    # things in their class colour, unjittered: detectron2 jitters them with np.random, so two
    # drawings of one prediction differed (and a test comparing them failed by chance)
    vis._jitter = lambda color: color
    out = vis.draw_panoptic_seg(ids, [dict(s) for s in segments_info])
    unseen_set = set(unseen)
    hatched = [s for s in segments_info if names[s["category_id"]] in unseen_set]
    _hatch(out, [(ids == s["id"]).numpy() for s in hatched],
           [meta.stuff_colors[s["category_id"]] for s in hatched], scale)  # fmt: skip
    return out
