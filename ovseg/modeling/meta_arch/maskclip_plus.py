# Follows the official MaskCLIP+ (chongzhou96/MaskCLIP: mmseg MaskClipPlusHead, its assign_label
# and self-training schedule), re-written as a detectron2 meta-architecture.
"""MaskCLIP+: a DeepLab student learns from the MaskCLIP teacher's pseudo-labels, then its own.

The student (a dilated ResNet and a DeepLab head, ``MODEL.BACKBONE`` / ``MODEL.SEM_SEG_HEAD``)
outputs D-dimensional pixel embeddings; its classifier is the fixed matrix of the CLIP text
embeddings of the vocabulary (``LOGIT_SCALE * cosine``), with an optional learnable embedding
for the class named ``BACKGROUND_CLASS``. Training targets, per pixel:

- transductive zero-shot (``MODEL.OVSEG.ZERO_SHOT_SETTING "transductive"``): pixels with a
  ground-truth label keep it (the mapper already turned unseen classes into ignore); the
  others ("free" pixels) get a pseudo-label of an unseen class or stay ignored;
- annotation-free (``ANNOTATION_FREE``): every pixel is free and any class may be assigned;
  the ground truth is never read.

Free pixels are labelled by the teacher until iteration ``SELF_TRAIN_START``, then by the
student itself (its detached logits of the same forward). Either labeller scores the
``PSEUDO_LABEL_CLASSES`` only ("unseen": the unseen classes, as the official code, or "all":
the whole vocabulary, keeping a label only if it is an unseen class, which leaves e.g.
VOC-20's unlabelled background alone) and keeps the argmax when its confidence reaches the
threshold. Teacher labels come from:

- ``"store"``: ``sample["pseudo_sem_seg"]`` attached from ``DATASETS.PSEUDO_LABELS`` (made by
  ``tools/generate_pseudo_labels.py`` with the teacher over the same classes);
- ``"online"``: the same labels computed in the loop: the teacher labels the ORIGINAL image
  as the generator does and the sample's recorded ``"transforms"`` move the labels onto the
  crop, so the targets equal the store's for the same image and augmentation (tested);
- ``"online_augmented"``: the teacher labels the augmented crop itself (the official
  recipe; other context and resolution, so not equal to the store).

Optionally an L1 loss pulls the student's embeddings towards the teacher's dense embeddings.
In eval the model returns softmax probabilities over the input's vocabulary.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

from ...clip import CLIPTeacher, build_clip_teacher, get_templates
from ..backbone import (
    build_backbone,
    resnet_deeplab,  # noqa: F401  (registers build_resnet_deeplab_backbone)
)
from ..heads import build_dense_head
from .common import (
    LearnedBackground,
    default_test_vocabulary,
    input_vocabulary,
    vocabulary_inference,
)
from .maskclip import MaskCLIP
from .maskclip_plus_build import (
    check_settings,
    check_store,
    labeller_from_config,
    maskclip_plus_config,
)
from .maskclip_plus_targets import (
    content_mask,
    l1_distillation,
    restricted_labels,
    sample_teacher_labels,
    store_label_table,
    to_training_labels,
)

__all__ = ["MaskCLIPPlus"]

logger = logging.getLogger(__name__)


def _norm(name: str) -> str:
    return name.strip().casefold()


@META_ARCH_REGISTRY.register()
class MaskCLIPPlus(nn.Module):
    """MaskCLIP+ student with teacher pseudo-labels and self-training (see the module doc)."""

    # tells ovseg.pseudo that "sem_seg" holds probabilities (the student can label a store)
    sem_seg_scores = "probabilities"

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        teacher: CLIPTeacher,
        labeller: MaskCLIP,
        templates: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        unseen: Sequence[str] = (),
        annotation_free: bool = False,
        pseudo_label_source: str = "store",
        pseudo_label_classes: str = "unseen",
        pseudo_label_threshold: float = 0.0,
        pseudo_label_store: str = "",
        store_vocabulary: Optional[Sequence[str]] = None,
        generate_command: str = "tools/generate_pseudo_labels.py",
        online_mapper=None,
        self_train_start: int = -1,
        self_train_threshold: float = 0.0,
        logit_scale: float = 1 / 0.07,
        background_class: Optional[str] = None,
        distill_weight: float = 0.0,
        ignore_value: int = 255,
        vocabulary: Optional[Sequence[str]] = None,
        inference_mode: str = "whole",
        slide_window: Tuple[int, int] = (512, 512),
        slide_stride: Tuple[int, int] = (426, 426),
    ):
        """
        Args:
            backbone (Backbone): the student's feature extractor.
            head (nn.Module): backbone features -> (B, D, h, w) embeddings (D = CLIP's).
            teacher (CLIPTeacher): the frozen CLIP (text classifier, distillation target).
            labeller (MaskCLIP): the training-free teacher sharing ``teacher``.
            templates: prompt templates of the text classifier.
            pixel_mean, pixel_std: the student's input normalisation (0-255, RGB order).
            unseen: unseen class names (transductive); ignored when ``annotation_free``.
            annotation_free (bool): every pixel's target comes from the labellers.
            pseudo_label_source (str): "store", "online" or "online_augmented".
            pseudo_label_classes (str): "unseen" or "all": the classes the labellers score.
            pseudo_label_threshold (float): the teacher's confidence threshold (online; a
                store applied its own when it was generated).
            pseudo_label_store (str): the store folder (``DATASETS.PSEUDO_LABELS``); its
                manifest is checked against these settings at the first teacher-labelled
                step and gives ``store_vocabulary``.
            store_vocabulary: the store's names (its label value i is name i) when no
                ``pseudo_label_store`` is given; None = the scored classes in training order.
            generate_command (str): the command that makes a fitting store, for errors.
            online_mapper: test-mode dataset mapper the store is generated with ("online").
            self_train_start (int): first iteration whose free pixels the student labels;
                < 0 = never.
            self_train_threshold (float): the student's confidence threshold.
            logit_scale (float): temperature multiplying the cosines.
            background_class (str, optional): name whose text embedding is replaced by a
                learnable one (None = no learnable background).
            distill_weight (float): weight of the L1 feature distillation (0 = off).
            ignore_value (int): the ignore label of targets.
            vocabulary: names for test inputs without "vocabulary".
            inference_mode, slide_window, slide_stride: see ovseg.modeling.inference.
        """
        super().__init__()
        check_settings(
            pseudo_label_source, pseudo_label_classes, inference_mode, logit_scale, online_mapper
        )
        self.backbone = backbone
        self.head = head
        self.teacher = teacher
        self.labeller = labeller
        self.templates = tuple(templates)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.unseen = tuple(unseen)
        self.annotation_free = bool(annotation_free)
        self.pseudo_label_source = pseudo_label_source
        self.pseudo_label_classes = pseudo_label_classes
        self.pseudo_label_threshold = float(pseudo_label_threshold)
        self.pseudo_label_store = pseudo_label_store
        self.store_vocabulary = tuple(store_vocabulary) if store_vocabulary else None
        self.generate_command = generate_command
        self.online_mapper = online_mapper
        self.self_train_start = int(self_train_start)
        self.self_train_threshold = float(self_train_threshold)
        self.logit_scale = float(logit_scale)
        self.bg_embed = (
            LearnedBackground(background_class, teacher.embed_dim)
            if background_class is not None
            else None
        )
        self.distill_weight = float(distill_weight)
        self.ignore_value = int(ignore_value)
        self.vocabulary = tuple(vocabulary) if vocabulary is not None else None
        self.inference_mode = inference_mode
        self.slide_window = tuple(int(v) for v in slide_window)
        self.slide_stride = tuple(int(v) for v in slide_stride)
        self.size_divisibility = max(int(backbone.size_divisibility or 0), 1)
        self._phase: Optional[str] = None

    @classmethod
    def from_config(cls, cfg) -> Dict:
        args = maskclip_plus_config(cfg)
        teacher = build_clip_teacher(cfg)
        backbone = build_backbone(cfg)
        head = build_dense_head(cfg, backbone.output_shape(), out_channels=teacher.embed_dim)
        ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        if cfg.DATASETS.TRAIN:
            ignore = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", ignore)
        return {
            **args,
            "backbone": backbone,
            "head": head,
            "teacher": teacher,
            "labeller": labeller_from_config(cfg, teacher),
            "templates": get_templates(cfg.MODEL.CLIP.TEMPLATES),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ignore_value": ignore,
            "vocabulary": default_test_vocabulary(cfg),
            "inference_mode": cfg.TEST.INFERENCE_MODE,
            "slide_window": tuple(cfg.TEST.SLIDE_WINDOW),
            "slide_stride": tuple(cfg.TEST.SLIDE_STRIDE),
        }

    def train(self, mode: bool = True) -> MaskCLIPPlus:
        super().train(mode)
        self.labeller.train(False)  # the training-free teacher only runs in eval mode
        return self

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ classifier
    def text_embeddings(self, names: Sequence[str]) -> Tensor:
        """(K, D) normalised classifier: CLIP text embeddings, the background's learnable."""
        text = self.teacher.encode_text(tuple(names), self.templates).to(self.device)
        if self.bg_embed is not None:
            text = self.bg_embed(text, names)
        return F.normalize(text, dim=-1)

    def pixel_embeddings(self, images: Tensor) -> Tensor:
        """(B, D, h, w) L2-normalised student embeddings of normalised (B, 3, H, W) images."""
        return F.normalize(self.head(self.backbone(images)), dim=1)

    def logits(self, embeddings: Tensor, text: Tensor, size: Tuple[int, int]) -> Tensor:
        """``logit_scale * cosine`` (B, K, h, w), upsampled bilinearly to ``size``."""
        out = self.logit_scale * torch.einsum("bdhw,kd->bkhw", embeddings, text.to(embeddings))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)

    def _normalize(self, images: List[Tensor]) -> List[Tensor]:
        return [(x.to(self.device).float() - self.pixel_mean) / self.pixel_std for x in images]

    def predict(self, images: Tensor, text: Tensor) -> Tensor:
        """(b, K, h, w) softmax probabilities of normalised (b, 3, h, w) images."""
        h, w = images.shape[-2:]
        m = self.size_divisibility
        padded = F.pad(images, (0, -w % m, 0, -h % m))
        logits = self.logits(self.pixel_embeddings(padded), text, tuple(padded.shape[-2:]))
        return logits[:, :, :h, :w].float().softmax(dim=1)

    # ------------------------------------------------------------------ targets
    def labelled_classes(self, names: Sequence[str]) -> Tuple[List[int], List[int]]:
        """Indices of ``names`` the labellers score, and those a pseudo-label may take."""
        unseen = {_norm(n) for n in self.unseen}
        target = [i for i, n in enumerate(names) if self.annotation_free or _norm(n) in unseen]
        scored = list(range(len(names))) if self.pseudo_label_classes == "all" else target
        if not target:
            raise ValueError(
                f"None of the unseen classes {list(self.unseen)} is in the training vocabulary "
                f"{list(names)[:8]}...; MaskCLIP+ has nothing to pseudo-label (register the "
                "dataset's unseen_classes, or set MODEL.MASKCLIP_PLUS.ANNOTATION_FREE True)"
            )
        return scored, target

    def phase(self, iteration: int) -> str:
        """Who labels the free pixels at ``iteration``: "teacher" or "self" (the student)."""
        start = self.self_train_start
        return "self" if 0 <= start <= iteration else "teacher"

    def training_targets(
        self, batched_inputs: List[dict], student_logits: Tensor, iteration: int
    ) -> Tensor:
        """Per-pixel targets of a training batch (see the module docstring).

        Args:
            batched_inputs (list[dict]): samples of the training mapper (one vocabulary).
            student_logits (Tensor): (B, K, H, W) the student's logits at the padded batch
                size (used from ``SELF_TRAIN_START`` on; detached here).
            iteration (int): the training iteration.

        Returns:
            Tensor: (B, H, W) long training indices or the ignore value.
        """
        names = input_vocabulary(batched_inputs[0])
        scored, target = self.labelled_classes(names)
        b, _, h, w = student_logits.shape
        ignore = self.ignore_value
        gt = torch.full((b, h, w), ignore, dtype=torch.long, device=self.device)
        if not self.annotation_free:
            for i, x in enumerate(batched_inputs):
                sem = x["sem_seg"].to(self.device)
                gt[i, : sem.shape[0], : sem.shape[1]] = sem
            leaked = torch.isin(gt, torch.tensor(target, device=self.device))
            if bool(leaked.any()):
                bad = sorted({names[int(c)] for c in gt[leaked].unique()})
                raise ValueError(
                    f"Ground truth of unseen classes {bad} reached MaskCLIP+ in "
                    f"{[x.get('file_name') for x in batched_inputs]}; train with "
                    "MODEL.OVSEG.ZERO_SHOT_SETTING 'transductive' (unseen pixels -> ignore)"
                )
        free = gt == ignore
        free &= torch.stack([self._content(x, h, w) for x in batched_inputs])
        phase = self.phase(iteration)
        if phase == "self":
            candidates = torch.tensor(scored, device=self.device)
            labels = restricted_labels(
                student_logits[:, scored],
                candidates,
                threshold=self.self_train_threshold,
                ignore_value=ignore,
                kind="logits",
            )
        else:
            labels = self.teacher_labels(batched_inputs, names, [names[i] for i in scored], (h, w))
        keep = free & torch.isin(labels, torch.tensor(target, device=self.device))
        return torch.where(keep, labels, gt)

    def _content(self, x: dict, h: int, w: int) -> Tensor:
        labels = [] if self.annotation_free else [x.get("sem_seg")]
        labels.append(x.get("pseudo_sem_seg"))
        mask = content_mask(x["image"], labels, self.ignore_value).to(self.device)
        return F.pad(mask, (0, w - mask.shape[1], 0, h - mask.shape[0]), value=False)

    def teacher_labels(
        self,
        batched_inputs: List[dict],
        names: Sequence[str],
        scored_names: Sequence[str],
        size: Tuple[int, int],
    ) -> Tensor:
        """(B, H, W) teacher labels in training indices (ignore where none), per the source."""
        h, w = size
        if self.pseudo_label_source == "store" and self.pseudo_label_store:
            if self.store_vocabulary is None:  # read the manifest once
                self.store_vocabulary = check_store(
                    self.pseudo_label_store,
                    scored_names,
                    self.pseudo_label_threshold,
                    self.generate_command,
                )
        store_names = self.store_vocabulary or tuple(scored_names)
        table = store_label_table(store_names, names, self.ignore_value).to(self.device)
        maps = []
        for x in batched_inputs:
            raw = sample_teacher_labels(
                x,
                self.pseudo_label_source,
                labeller=self.labeller,
                names=store_names,
                threshold=self.pseudo_label_threshold,
                mapper=self.online_mapper,
                pad_value=self.ignore_value,
                command=self.generate_command,
            )
            maps.append(to_training_labels(raw, table, (h, w), self.ignore_value, x))
        return torch.stack(maps).to(self.device)

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[dict]):
        """
        Args:
            batched_inputs (list[dict]): detectron2 inputs: "image" (3, H, W) uint8 RGB;
                training also "sem_seg", "vocabulary" and (store) "pseudo_sem_seg" or
                (online) "file_name" + "transforms"; eval optionally "height"/"width" and
                "vocabulary".

        Returns:
            training: {"loss_sem_seg"[, "loss_distill"]}; eval: per input {"sem_seg":
            (K, height, width) probabilities over its K names}.
        """
        if self.training:
            return self._losses(batched_inputs)
        return self._inference(batched_inputs)

    def _losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        names = input_vocabulary(batched_inputs[0])
        if any(input_vocabulary(x) != names for x in batched_inputs):
            raise ValueError("MaskCLIP+ trains on one vocabulary per batch; got several")
        try:
            iteration = get_event_storage().iter
        except AssertionError:
            raise RuntimeError(
                "MaskCLIP+ training reads the iteration from detectron2's EventStorage (for "
                "SELF_TRAIN_START); run it under a trainer or `with EventStorage(start_iter):`"
            ) from None
        phase = self.phase(iteration)
        if phase != self._phase:
            who = (
                "the student itself"
                if phase == "self"
                else f"the teacher ({self.pseudo_label_source})"
            )
            logger.info(f"MaskCLIP+ iteration {iteration}: free pixels labelled by {who}")
            self._phase = phase
        images = ImageList.from_tensors(
            self._normalize([x["image"] for x in batched_inputs]), self.size_divisibility
        )
        size = tuple(images.tensor.shape[-2:])
        embeddings = self.pixel_embeddings(images.tensor)
        logits = self.logits(embeddings, self.text_embeddings(names), size)
        targets = self.training_targets(batched_inputs, logits.detach(), iteration)
        loss = F.cross_entropy(
            logits.float(), targets, ignore_index=self.ignore_value, reduction="sum"
        )
        # a batch without any target gives a zero loss that still reaches every parameter
        losses = {"loss_sem_seg": loss / max(int((targets != self.ignore_value).sum()), 1)}
        if self.distill_weight > 0:
            losses["loss_distill"] = self.distill_weight * self._distill(batched_inputs, embeddings)
        return losses

    def _distill(self, batched_inputs: List[dict], embeddings: Tensor) -> Tensor:
        """Mean L1 distance of student and CLIP dense embeddings on image content."""
        images = ImageList.from_tensors([x["image"].float() for x in batched_inputs]).tensor
        clip = self.teacher.dense_embeddings(images.to(self.device))
        size = tuple(images.shape[-2:])
        masks = torch.stack([self._content(x, *size) for x in batched_inputs])
        return l1_distillation(embeddings, clip, masks)

    def _inference(self, batched_inputs: List[dict]) -> List[Dict[str, Tensor]]:
        return vocabulary_inference(self, batched_inputs)
