# Follows XPM's teacher detector (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423,
# configs/coco_cap_det/zeroshot_mask.yaml), re-written on detectron2 with CLIP text.
"""XPM's teacher: a class-agnostic Mask R-CNN (C4) whose classes are CLIP text embeddings.

The proposal-and-mask teacher of the XPM-style student (ovseg/modeling/meta_arch/
xpm_student.py): detectron2's ResNet backbone and RPN, then :class:`~ovseg.modeling.xpm.
roi_heads.XPMROIHeads` (res5 RoI features, one class-agnostic box regression and one
class-agnostic mask, logits ``tau * cos(projected RoI feature, text embedding)`` with a
background logit 0 and background CE weight 0.2). Trained on the seen classes' ground truth
only; at test it detects the test vocabulary's things. :meth:`XPMTeacher.propose` gives the
class-agnostic proposals that caption nouns are matched to when pseudo-labels are made.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, ImageList, Instances

from ...clip import build_clip_teacher, get_templates
from ...pseudo.lazy_masks import LazyMasks
from ..host_copy import instances_to_device
from ..text_classifier import TextClassifier
from ..xpm.bert import BertClassEmbeddings
from ..xpm.legacy import paste_masks_legacy, to_exclusive, to_inclusive
from ..xpm.outputs import (
    class_subset,
    paste_probabilities,
    polygon_targets,
    remap_classes,
    semantic_from_instances,
    to_output_size,
    training_targets,
)
from ..xpm.roi_heads import XPMROIHeads
from .base import OpenVocabSegmentor, group_inputs
from .xpm_build import (
    build_xpm_parts,
    check_pseudo_mask_refine,
    class_embedding,
    stuff_names_by_dataset,
)

__all__ = ["XPMTeacher"]

logger = logging.getLogger(__name__)


def _held_on(inp: dict) -> torch.device:
    """The device an input's instances are on (the host where it has none: it is refused)."""
    classes = getattr(inp.get("instances"), "gt_classes", None)
    return classes.device if isinstance(classes, Tensor) else torch.device("cpu")


@META_ARCH_REGISTRY.register()
class XPMTeacher(OpenVocabSegmentor):
    """XPM's detector: trains on the seen classes' instances, detects any vocabulary.

    Training inputs: "image", "vocabulary" and "instances" (``gt_classes`` indexing the
    vocabulary, ``gt_masks``, optional ``gt_boxes``; instances whose ``gt_is_pseudo`` is
    True are left out: the teacher learns from ground truth only). In eval, per input
    ``{"instances", "sem_seg"}``: detections whose ``pred_classes`` index the input's
    vocabulary (its stuff classes are never predicted), bool ``pred_masks`` at the image's
    size; "sem_seg" (K, H, W) holds per class the best ``score * mask probability``.
    """

    sem_seg_scores = "probabilities"
    # masks are pasted into boxes at the output size itself (paste_probabilities)
    resizes_outputs_last = False
    noise_head = False  # the student's mask head adds one
    # the official teacher scores the BERT class embeddings unnormalised (data/datasets/
    # coco.py:74-91, engine/inference.py:124-127), the student normalised (st_generalized_
    # rcnn.py:164-177, 413-415)
    normalize_bert = False
    export_unsupported = (
        "its test path is a detector's: region proposals, per-box classes, NMS and masks "
        "pasted per detection (a data-dependent number of instances); use ovseg.Predictor"
    )

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        proposal_generator: nn.Module,
        roi_heads: XPMROIHeads,
        templates: Sequence[str],
        logit_scale: float = 1 / 0.07,
        stuff_names: Sequence[str] = (),
        dataset_stuff_names: Optional[Mapping[str, Sequence[str]]] = None,
        seen_names: Optional[Sequence[str]] = None,
        propose_topk: int = 100,
        bert_name: str = "",
        legacy_boxes: bool = False,
        freeze_projection: bool = False,
        pseudo_mask_refine: bool = False,
        **kwargs,
    ):
        """
        Args:
            backbone, proposal_generator: detectron2's (C4: res4 out, RPN on res4).
            roi_heads (XPMROIHeads): the box and mask heads.
            templates: prompt templates of the text embeddings.
            logit_scale (float): tau of the cosine logits.
            stuff_names: vocabulary names never detected (the training sets' stuff classes).
            dataset_stuff_names: per test set, its own such names, for test inputs carrying
                its "dataset_name" (ovseg's test mappers give it); others: ``stuff_names``.
            seen_names: the names training classifies over (None: every training name).
            propose_topk (int): proposals per image :meth:`propose` keeps (0: all).
            bert_name (str): classes are the official BERT class embeddings of this BERT
                (:mod:`~ovseg.modeling.xpm.bert`) instead of CLIP text ("": CLIP's).
            legacy_boxes (bool): the detector computes with inclusive-corner boxes
                (:mod:`~ovseg.modeling.xpm.legacy`): masks are pasted as the official
                ``Masker`` and outputs turned exclusive (x2 + 1, y2 + 1) as the official
                COCO results' ``x2 - x1 + 1`` widths (``coco_eval.py:82-83``).
            freeze_projection (bool): the box predictor's projection gets no gradient (the
                official FREEZE_EMB_PRED: OVR-CNN's pretrained projection kept fixed).
            pseudo_mask_refine (bool): :meth:`lazy_masks` runs the mask head at its boxes
                refined once more (the official mask pass), pasting at the boxes themselves.
            kwargs: :class:`OpenVocabSegmentor`'s (teacher, pixel_mean, pixel_std, ...); the
                teacher is None with BERT classes (no CLIP is read), required with CLIP's.
        """
        super().__init__(**kwargs)
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        if not bert_name and self.teacher is None:
            raise ValueError(
                f"{type(self).__name__} with CLIP classes needs the CLIP teacher (got None); "
                "pass one, or the BERT classes (MODEL.XPM.CLASS_EMBEDDING 'bert')"
            )
        # BERT classes: no CLIP text, and the dot product has no temperature
        self.classifier = None
        if not bert_name:
            self.classifier = TextClassifier(
                self.teacher, templates, logit_scale=logit_scale, prompt_names=self.prompt_names
            )
        self.stuff_names = tuple(stuff_names)
        self.dataset_stuff_names = {k: tuple(v) for k, v in (dataset_stuff_names or {}).items()}
        self.seen_names = None if seen_names is None else tuple(seen_names)
        self.propose_topk = int(propose_topk)
        self.bert = BertClassEmbeddings(bert_name) if bert_name else None
        self.legacy_boxes = bool(legacy_boxes)
        self.pseudo_mask_refine = bool(pseudo_mask_refine)
        if freeze_projection:
            self.roi_heads.box_predictor.projection.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        # BERT classes read no CLIP: none is built (a random tower would only cost memory)
        teacher = build_clip_teacher(cfg) if class_embedding(cfg) == "clip" else None
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
        seen = meta.get("seen_classes", None) if meta is not None else None
        base = OpenVocabSegmentor.base_config(cfg)
        base.pop("test_aug")  # detections are not merged across scales
        return {
            **base,
            **build_xpm_parts(cfg, teacher, cls.noise_head),
            "teacher": teacher,
            "templates": get_templates(cfg.MODEL.CLIP.TEMPLATES),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "logit_scale": cfg.MODEL.XPM.LOGIT_SCALE,
            **dict(zip(("stuff_names", "dataset_stuff_names"), stuff_names_by_dataset(cfg))),
            "seen_names": list(seen) if seen else None,
            "propose_topk": cfg.MODEL.XPM.PROPOSE_TOPK,
            "bert_name": cfg.MODEL.XPM.BERT_NAME if class_embedding(cfg) == "bert" else "",
            "legacy_boxes": cfg.MODEL.XPM.LEGACY_BOXES,
            "freeze_projection": cfg.MODEL.XPM.FREEZE_PROJECTION,
            "pseudo_mask_refine": check_pseudo_mask_refine(cfg),
        }

    # ------------------------------------------------------------------ shared pieces
    @property
    def logit_scale(self) -> Optional[float]:
        """tau of the CLIP classes' cosine logits; None with the BERT classes (raw dot)."""
        return None if self.classifier is None else self.classifier.logit_scale

    def images(self, batched_inputs: List[dict]) -> ImageList:
        """Normalised images padded into one batch."""
        return ImageList.from_tensors(
            self.normalize([x["image"] for x in batched_inputs]), self.size_divisibility
        )

    def batch_vocabulary(self, batched_inputs: List[dict]) -> Tuple[str, ...]:
        """The one vocabulary of a training batch."""
        groups = self.vocabulary_groups(batched_inputs)
        if len(groups) != 1:
            raise ValueError(
                f"{type(self).__name__} trains on batches of one vocabulary, got {len(groups)} "
                "(the dataset mapper gives every sample of a dataset the same one)"
            )
        return next(iter(groups))

    def text(self, names: Sequence[str]) -> Tensor:
        """(K, D) class embeddings of ``names``: CLIP text (prompt-ensembled, memoised by the
        teacher) or the official BERT ones (the names as they are, without prompts)."""
        if self.bert is None:
            return self.classifier(names)
        embeddings = self.bert(names).to(self.device)
        return F.normalize(embeddings, dim=-1) if self.normalize_bert else embeddings

    def gt_targets(
        self, batched_inputs: List[dict], names: Sequence[str], table: Tensor
    ) -> Tuple[List[Instances], List[Instances]]:
        """Per input, its ground-truth targets (classes mapped through ``table``) on the
        device and its pseudo-label targets (classes still indexing ``names``) where the
        input holds them (the host for a mapper's; the student moves them after its own
        mapping). Split, checked and mapped before the copy: on the device each boolean split
        and check waited for it."""
        # where each input's instances are (the online labeller's are on the device already)
        targets = [training_targets(x, _held_on(x)) for x in batched_inputs]
        if self.legacy_boxes:  # official targets: COCO x + w - 1 (bounding_box.py:75-87)
            for t in targets:
                t.gt_boxes = Boxes(to_inclusive(t.gt_boxes.tensor))
        gt = [remap_classes(t[~t.gt_is_pseudo], table, names, "ground truth") for t in targets]
        # ground truth trains on its COCO polygons where the mapper kept them (GT_POLYGONS)
        gt = [instances_to_device(polygon_targets(g), self.device) for g in gt]
        return gt, [t[t.gt_is_pseudo] for t in targets]

    # ------------------------------------------------------------------ training
    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        """RPN and RoI losses on the seen classes' ground truth."""
        names = self.batch_vocabulary(batched_inputs)
        seen, table = class_subset(names, self.seen_names, self.stuff_names)
        gt, _ = self.gt_targets(batched_inputs, names, table)
        images = self.images(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, rpn_losses = self.proposal_generator(images, features, gt)
        losses, _ = self.roi_heads.losses(
            features, proposals, gt, self.text(seen), self.logit_scale
        )
        return {**rpn_losses, **losses}

    # ------------------------------------------------------------------ inference
    def inference(self, batched_inputs: List[dict]) -> List[Dict[str, object]]:
        """Detections over each input's vocabulary, one forward per vocabulary."""
        results: List[Optional[Dict[str, object]]] = [None] * len(batched_inputs)
        own = self.dataset_stuff_names  # an input's test set's own stuff, else the training's
        stuff = [own.get(x.get("dataset_name", ""), self.stuff_names) for x in batched_inputs]
        keys = [(self.input_vocabulary(x), s) for x, s in zip(batched_inputs, stuff)]
        for (names, stuff_names), idx in group_inputs(keys).items():
            things, table = class_subset(names, None, stuff_names)
            if not things:
                raise ValueError(
                    f"the vocabulary {list(names)[:8]} has only stuff classes, which "
                    f"{type(self).__name__} does not detect"
                )
            inputs = [batched_inputs[i] for i in idx]
            images = self.images(inputs)
            features = self.backbone(images.tensor)
            proposals, _ = self.proposal_generator(images, features, None)
            dets = self.roi_heads.inference(
                features, proposals, self.text(things), self.logit_scale
            )
            back = (table >= 0).nonzero()[:, 0].to(self.device)  # thing index -> names index
            for i, inp, det in zip(idx, inputs, dets):
                results[i] = self.output(det, inp, back, len(names))
        return results

    def output(self, det: Instances, inp: dict, back: Tensor, num_names: int) -> dict:
        """One input's detections at its "height" x "width" (default: the input size)."""
        height, width = inp.get("height", det.image_size[0]), inp.get("width", det.image_size[1])
        boxes, probs = self.paste(det, det.pred_masks, height, width)
        classes = back[det.pred_classes]
        out = Instances((height, width))
        out.pred_boxes = boxes
        out.scores = det.scores
        out.pred_classes = classes
        out.pred_masks = probs > 0.5 if self.legacy_boxes else probs >= 0.5
        sem_seg = semantic_from_instances(probs, det.scores, classes, num_names)
        return {"instances": out, "sem_seg": sem_seg}

    def output_boxes(self, det: Instances, height: int, width: int) -> Tuple[Boxes, Tensor]:
        """``det.pred_boxes`` at (height, width): the output boxes, and the (R, 4) boxes masks
        are pasted in (the same, or with LEGACY_BOXES the inclusive corners)."""
        if not self.legacy_boxes:
            boxes, _, _ = to_output_size(det, height, width)
            return boxes, boxes.tensor
        # the official BoxList.resize scales the inclusive corners (bounding_box.py:91-127)
        sx, sy = width / det.image_size[1], height / det.image_size[0]
        inclusive = det.pred_boxes.tensor * det.pred_boxes.tensor.new_tensor([sx, sy, sx, sy])
        return Boxes(to_exclusive(inclusive)), inclusive

    def paste(self, det: Instances, masks: Tensor, height: int, width: int) -> Tuple[Boxes, Tensor]:
        """``det.pred_boxes`` at (height, width) and the (R, M, M) ``masks`` pasted in them:
        (R, height, width) probabilities, 0 outside the box."""
        boxes, at = self.output_boxes(det, height, width)
        if not self.legacy_boxes:
            return boxes, paste_probabilities(masks, boxes, height, width)
        return boxes, paste_masks_legacy(masks, at, height, width)

    @torch.no_grad()
    def propose(
        self, batched_inputs: List[dict], topk: Optional[int] = None, masks: bool = True
    ) -> List[Instances]:
        """Class-agnostic proposals of each input, for caption pseudo-labels.

        Args:
            batched_inputs (list[dict]): test-mapper inputs: "image" (3, h, w) RGB 0-255,
                optional "height"/"width" (the size outputs are given at; default h, w).
            topk (int, optional): proposals kept per image, by RPN objectness; None = the
                model's ``propose_topk``; 0 = every RPN proposal (XPM matches them all).
            masks (bool): False: ``pred_masks`` is a :class:`~ovseg.pseudo.lazy_masks.
                LazyMasks` that runs the mask head and pastes only for the rows it is indexed
                with (XPM's mask pass at the matched proposals alone, st_generalized_rcnn.py:
                264-272); the same numbers as True for those rows, and the rest unchanged.

        Returns:
            list[Instances]: per input, at (height, width), sorted by decreasing ``scores``:
            ``pred_boxes`` (Boxes, the RoI head's refined class-agnostic boxes, image
            coordinates), ``pred_masks`` (float (R, height, width) mask probabilities of the
            class-agnostic mask head at those boxes, pasted; 0 outside the box), ``scores``
            (float (R,), sigmoid of the RPN objectness) and ``pred_embeddings`` (float (R, D),
            the projected RoI features of the RPN proposals, which XPM matches caption nouns
            against: L2-normalised in CLIP's text space; with the BERT classes raw, in BERT's
            space, as the official ``emb_pred`` output, st_generalized_rcnn.py:226-229).
        """
        images = self.images(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, _ = self.proposal_generator(images, features, None)
        sizes = [
            (inp.get("height", size[0]), inp.get("width", size[1]))
            for inp, size in zip(batched_inputs, images.image_sizes)
        ]
        return self.regions_of(features, proposals, sizes, topk, masks)

    def regions_of(
        self,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        sizes: Sequence[Tuple[int, int]],
        topk: Optional[int] = None,
        masks: bool = True,
        roi_heads: Optional[XPMROIHeads] = None,
    ) -> List[Instances]:
        """:meth:`propose`'s outputs from the RPN's test-mode ``proposals`` on ``features``,
        each image's at its (height, width) of ``sizes``, by ``roi_heads`` (default: the
        model's; the XPM student labels with its frozen copy of the teacher's)."""
        heads = self.roi_heads if roi_heads is None else roi_heads
        topk = self.propose_topk if topk is None else int(topk)
        kept = []
        for p in proposals:
            order = p.objectness_logits.argsort(descending=True)
            kept.append(p[order[:topk] if topk > 0 else order])
        boxes, embeddings = heads.refine(features, kept)
        probs = heads.mask_probabilities(features, boxes) if masks else None
        out = []
        for i, (size, p, e) in enumerate(zip(sizes, kept, embeddings)):
            det = Instances(p.image_size, pred_boxes=boxes[i])
            height, width = size
            if probs is None:  # no masks pasted: only the boxes at the output size
                scaled, _ = self.output_boxes(det, height, width)
                pasted = self.lazy_masks(features, boxes, i, p.image_size, size, heads)
            else:
                scaled, pasted = self.paste(det, probs[i], height, width)
            res = Instances((height, width))
            res.pred_boxes = scaled
            res.pred_masks = pasted
            res.scores = p.objectness_logits.sigmoid()
            res.pred_embeddings = F.normalize(e, dim=-1) if self.bert is None else e
            out.append(res)
        return out

    def lazy_masks(
        self,
        features: Dict[str, Tensor],
        boxes: List[Boxes],
        i: int,
        image_size: Tuple[int, int],
        size: Tuple[int, int],
        roi_heads: Optional[XPMROIHeads] = None,
    ) -> LazyMasks:
        """Image ``i``'s mask probabilities pasted at ``size`` (its input is ``image_size``),
        for the rows asked for: the mask head (of ``roi_heads``, default the model's) at those
        of its refined ``boxes`` alone (the other images' none; with ``pseudo_mask_refine``
        at those boxes refined once more, as the official mask pass,
        ``st_generalized_rcnn.py:266`` through ``roi_heads.py:45, :64``), pasted at the boxes
        as :meth:`propose` pastes every one (``st_generalized_rcnn.py:269``)."""
        heads = self.roi_heads if roi_heads is None else roi_heads

        def compute(rows: Tensor) -> Tensor:
            chosen = [b[rows] if j == i else b[:0] for j, b in enumerate(boxes)]
            at = chosen
            if self.pseudo_mask_refine:
                again = [Instances(image_size, proposal_boxes=b) for b in chosen]
                at = heads.refine(features, again)[0]
            probs = heads.mask_probabilities(features, at)[i]
            det = Instances(image_size, pred_boxes=chosen[i])
            return self.paste(det, probs, *size)[1]

        return LazyMasks(compute, len(boxes[i]), size, device=boxes[i].device)
