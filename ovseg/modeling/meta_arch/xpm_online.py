# Follows XPM's online pseudo-labelling (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423,
# maskrcnn_benchmark/modeling/detector/st_generalized_rcnn.py:218-323), re-written.
"""The XPM student's caption pseudo instances made online (MODEL.XPM.PSEUDO_LABEL_SOURCE
"online"), as the official student makes them at every training step:

- only the inputs whose captions have nouns are labelled (``idxs_cap``, :310);
- on the shared frozen backbone features, the frozen RPN's test-mode proposals (:313-314),
  every one a candidate with MODEL.XPM.PROPOSE_TOPK 0 (as the paper leaf);
- the frozen copy of the teacher's RoI heads (the official ``roi_heads``, frozen at :66-67,
  in eval at :221) refines them and gives each one's region embedding, the projection of its
  average-pooled RoI feature (``emb_pred``, :225-229);
- :class:`~ovseg.pseudo.PseudoInstanceLabeller` matches each noun to its best proposal, as
  the store's generation does (:243-255; BERT space with the BERT classes), and the mask
  head runs at the winners alone, pasted at the image size (the mask pass, :264-272);
- the labels are of the augmented training image itself (the official ``images`` of the
  step), at the sample's (padded) input size; they then train the student exactly as
  store-read ones (:333).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import torch
from torch import Tensor, nn

from detectron2.structures import BitMasks, Boxes, ImageList, Instances

from ...clip.templates import get_templates
from ...data.captions.settings import (
    build_caption_matcher,
    matches_in_bert_space,
    xpm_store_vocabulary,
)
from ...pseudo.instances import PseudoInstanceLabeller
from ...vocab import normalize_name
from ..host_copy import batch_index
from ..xpm.bert import BertClassEmbeddings

__all__ = ["LabellingStudent", "build_online_labeller", "online_pseudo_targets"]


class LabellingStudent(Protocol):
    """What online labelling reads of the student (XPMStudent has it): the labeller, the
    frozen teacher's RoI heads and the region detection of :class:`~.xpm.XPM`."""

    online_labeller: PseudoInstanceLabeller
    teacher_roi_heads: nn.Module
    device: torch.device

    def regions_of(
        self,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        sizes: Sequence[Tuple[int, int]],
        topk: Optional[int] = None,
        masks: bool = True,
        roi_heads: Optional[nn.Module] = None,
    ) -> List[Instances]: ...


def build_online_labeller(cfg, clip=None) -> PseudoInstanceLabeller:
    """The labeller of a config's online pseudo-labels: its caption matcher over the
    pseudo-label vocabulary (the LVIS names with MODEL.XPM.CAPTION_VOCABULARY "lvis", else
    the training vocabulary), the teacher's region embeddings, nouns in BERT's space with the
    BERT classes (the student gives it its BERT), else ``clip``'s (the student's CLIP)."""
    if not cfg.DATASETS.TRAIN:
        raise ValueError(
            "MODEL.XPM.PSEUDO_LABEL_SOURCE 'online' labels the training set's captions; "
            "DATASETS.TRAIN is empty: name the captioned training set"
        )
    names = xpm_store_vocabulary(cfg, cfg.DATASETS.TRAIN[0])[0].names
    bert = BertClassEmbeddings(cfg.MODEL.XPM.BERT_NAME) if matches_in_bert_space(cfg) else None
    xpm = cfg.MODEL.XPM
    return PseudoInstanceLabeller(
        None if bert is not None else clip,
        build_caption_matcher(cfg, names),
        names,
        templates=get_templates(cfg.MODEL.CLIP.TEMPLATES),
        region_embedding=xpm.REGION_EMBEDDING,
        text=xpm.PSEUDO_TEXT,
        mask_threshold=xpm.PSEUDO_MASK_THRESHOLD,
        score_threshold=xpm.PSEUDO_SCORE_THRESHOLD,
        bert=bert,
    )


def _targets(size, masks: Tensor, boxes: Tensor, classes: List[int], scores: Tensor):
    """Pseudo targets as the XPM mapper gives them: boxes clamped to the image, the empty
    masks left out."""
    h, w = size
    limit = boxes.new_tensor([w, h, w, h])
    boxes = torch.minimum(boxes.float().clamp(min=0), limit)
    kept = masks.flatten(1).any(dim=1)
    out = Instances(tuple(size))
    out.gt_masks = BitMasks(masks[kept].bool())
    out.gt_boxes = Boxes(boxes[kept])
    out.gt_classes = torch.tensor(classes, dtype=torch.int64, device=boxes.device)[kept]
    out.gt_is_pseudo = torch.ones(int(kept.sum()), dtype=torch.bool, device=boxes.device)
    out.gt_scores = scores.float()[kept]
    return out


def _empty(size, device) -> Instances:
    h, w = size
    none = torch.zeros(0, dtype=torch.bool, device=device)
    return _targets(
        size, none.new_zeros((0, h, w)), torch.zeros((0, 4), device=device), [], none.float()
    )


@torch.no_grad()
def online_pseudo_targets(
    model: LabellingStudent,
    images: ImageList,
    features: Dict[str, Tensor],
    proposals: List[Instances],
    batched_inputs: List[dict],
    names: Sequence[str],
) -> List[Instances]:
    """Per input, the pseudo instances of its image labelled now (none without nouns).

    Args:
        model (LabellingStudent): the XPMStudent, its ``online_labeller`` and
            ``teacher_roi_heads``.
        images (ImageList): the step's batch; ``features`` the frozen backbone's of it.
        proposals (list[Instances]): the frozen RPN's test-mode proposals of each image.
        batched_inputs: the training inputs; their ``"captions"`` (missing: none).
        names: the names pseudo ``gt_classes`` index (the inputs' pseudo vocabulary).

    Returns:
        list[Instances]: at each image's input size, ``gt_masks`` (BitMasks), ``gt_boxes``,
        ``gt_classes``, ``gt_is_pseudo`` (all True) and ``gt_scores`` (sigmoid of the match).
    """
    labeller = model.online_labeller
    out = [_empty(size, model.device) for size in images.image_sizes]
    nouns = [labeller.nouns(x.get("captions") or ()) for x in batched_inputs]
    idx = [i for i, found in enumerate(nouns) if found]
    if not idx:
        return out
    index = {normalize_name(n): k for k, n in enumerate(names)}
    at = batch_index(idx, len(batched_inputs), images.tensor.device)
    sub = {k: v[at] for k, v in features.items()}
    sizes = [tuple(images.image_sizes[i]) for i in idx]
    regions = model.regions_of(
        sub, [proposals[i] for i in idx], sizes, masks=False, roi_heads=model.teacher_roi_heads
    )
    for i, size, det in zip(idx, sizes, regions):
        image = batched_inputs[i]["image"]
        found = labeller.match(image, batched_inputs[i]["captions"], det, nouns=nouns[i])
        if found is None:
            continue
        classes = [_pseudo_class(index, labeller.vocabulary[c], names) for _, c in found.nouns]
        out[i] = _targets(size, found.masks, found.boxes, classes, found.scores)
    return out


def _pseudo_class(index: Dict[str, int], name: str, names: Sequence[str]) -> int:
    k: Optional[int] = index.get(normalize_name(name))
    if k is None:
        raise ValueError(
            f"online pseudo instance class {name!r} is not in the pseudo-label vocabulary "
            f"{list(names)[:10]}... of the inputs (MODEL.XPM.CAPTION_VOCABULARY)"
        )
    return k
