# Follows the official MaskCLIP+ (chongzhou96/MaskCLIP: mmseg MaskClipPlusHead, its assign_label
# and self-training schedule), re-written as a detectron2 meta-architecture.
"""MaskCLIP+: a DeepLab student learns from the MaskCLIP teacher's pseudo-labels, then its own.

The student (a dilated ResNet and a DeepLab head, ``MODEL.BACKBONE`` / ``MODEL.DENSE_HEAD``)
outputs D-dimensional pixel embeddings; its classifier is the fixed matrix of the CLIP text
embeddings of the vocabulary (``MODEL.OVSEG.LOGIT_SCALE * cosine``), with an optional
learnable embedding for ``MODEL.OVSEG.BACKGROUND_CLASS`` (``BG_EMBED``). Training targets,
per pixel:

- transductive zero-shot (``MODEL.OVSEG.ZERO_SHOT_SETTING "transductive"``): pixels with a
  ground-truth label keep it (the mapper already turned unseen classes into ignore); the
  others ("free" pixels) get a pseudo-label of an unseen class or stay ignored;
- annotation-free (``MODEL.MASKCLIP_PLUS.ANNOTATION_FREE``): every pixel is free and any
  class may be assigned; the ground truth is never read.

Free pixels are labelled by the teacher until iteration
``MODEL.OVSEG.SELF_TRAINING.START_ITER``, then by the student itself (its detached logits of
the same forward). Either labeller scores the ``PSEUDO_LABEL_CLASSES`` only ("unseen": the
unseen classes, as the official code, or "all": the whole vocabulary, keeping a label only
if it is an unseen class, which leaves e.g. VOC-20's unlabelled background alone) and keeps
the argmax when its confidence reaches the threshold (:mod:`ovseg.pseudo.labels`). Teacher
labels come from (``PSEUDO_LABEL_SOURCE``):

- ``"store"``: ``sample["pseudo_sem_seg"]``, read by the training mapper from
  ``DATASETS.PSEUDO_LABELS`` (made by ``tools/generate_pseudo_labels.py``; the loader checks
  it was made over the same classes at the same threshold) in training indices;
- ``"online"``: the same labels computed in the loop: the teacher labels the sample's
  ``"teacher_input"`` (its original image, test-mapped by the data loader as the generator
  does) and the sample's ``"transforms"`` move the labels onto the crop, so the targets
  equal the store's for the same image and augmentation (tested);
- ``"online_augmented"``: the teacher labels the augmented crop itself (the official
  recipe; other context and resolution, so not equal to the store).

The model reads no file: stores and images reach it through the data loader
(:mod:`ovseg.pseudo.spec`). Optionally an L1 loss pulls the student's embeddings towards the
teacher's dense embeddings. In eval the model returns softmax probabilities over the
input's vocabulary.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.structures import ImageList

from ...clip import CLIPTeacher, build_clip_teacher, get_templates
from ...pseudo import PseudoLabelSpec, pixel_labels
from ...pseudo.self_training import SelfTrainingSchedule
from ...vocab import normalize_name
from ..backbone import build_backbone
from ..heads import build_dense_head
from ..text_classifier import TextClassifier
from .base import OpenVocabSegmentor
from .maskclip import MaskCLIP
from .maskclip_plus_build import check_settings, maskclip_plus_config, maskclip_plus_pseudo_labels
from .maskclip_plus_targets import (
    TeacherLabelling,
    content_mask,
    l1_distillation,
    sample_teacher_labels,
)

__all__ = ["MaskCLIPPlus"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class MaskCLIPPlus(OpenVocabSegmentor):
    """MaskCLIP+ student with teacher pseudo-labels and self-training (see the module doc)."""

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
        generate_command: str = "tools/generate_pseudo_labels.py",
        self_training_start_iter: int = -1,
        self_training_threshold: float = 0.0,
        logit_scale: float = 1 / 0.07,
        learnable_logit_scale: bool = False,
        background_class: Optional[str] = None,
        distill_weight: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            backbone (Backbone), head (nn.Module): the student: features, then (B, D, h, w)
                pixel embeddings (D = CLIP's).
            teacher (CLIPTeacher), labeller (MaskCLIP): the frozen CLIP (text classifier,
                distillation target) and the training-free MaskCLIP teacher sharing it.
            templates: prompt templates of the text classifier.
            pixel_mean, pixel_std: the student's input normalisation (0-255, RGB order).
            unseen: the unseen names; annotation_free (bool): no ground truth, all pixels free.
            pseudo_label_source (str): "store", "online" or "online_augmented".
            pseudo_label_classes (str): "unseen" or "all": the classes the labellers score.
            pseudo_label_threshold (float): the teacher's confidence threshold (a store's).
            generate_command (str): the command that makes a fitting store, for errors.
            self_training_start_iter (int): from it, the student labels; < 0 = never.
            self_training_threshold (float): the student's confidence threshold.
            logit_scale (float), learnable_logit_scale (bool): the temperature multiplying
                the cosines, and whether it is learnt.
            background_class (str, optional): name whose text embedding is learnt instead.
            distill_weight (float): weight of the L1 feature distillation (0 = off).
            kwargs: :class:`OpenVocabSegmentor`'s (vocabulary, ignore_value, inference_mode,
                slide_window, slide_stride).
        """
        check_settings(pseudo_label_source, pseudo_label_classes)
        super().__init__(
            teacher=teacher,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            size_divisibility=backbone.size_divisibility or 0,
            **kwargs,
        )
        self.backbone = backbone
        self.head = head
        self.labeller = labeller.train(False)  # always: it is training-free
        self.classifier = TextClassifier(
            teacher,
            templates,
            logit_scale=logit_scale,
            learnable_logit_scale=learnable_logit_scale,
            background_class=background_class,
            renormalize=True,
            prompt_names=self.prompt_names,
        )
        self.unseen = tuple(unseen)
        self.annotation_free = bool(annotation_free)
        self.pseudo_label_source = pseudo_label_source
        self.pseudo_label_classes = pseudo_label_classes
        self.pseudo_label_threshold = float(pseudo_label_threshold)
        self.generate_command = generate_command
        self.self_training = SelfTrainingSchedule(self_training_start_iter)
        self.self_training_threshold = float(self_training_threshold)
        self.distill_weight = float(distill_weight)
        who = f"the teacher ({pseudo_label_source})"
        if self.self_training.enabled:
            who += f" until iteration {self_training_start_iter}"
        logger.info(f"MaskCLIP+: free pixels labelled by {who}")

    @classmethod
    def from_config(cls, cfg) -> Dict:
        args = maskclip_plus_config(cfg)
        teacher = build_clip_teacher(cfg)
        backbone = build_backbone(cfg)
        head = build_dense_head(cfg, backbone.output_shape(), out_channels=teacher.embed_dim)
        return {
            **cls.base_config(cfg),
            **args,
            "backbone": backbone,
            "head": head,
            "teacher": teacher,
            # what train_net/generate_pseudo_labels build with META_ARCHITECTURE MaskCLIP
            "labeller": MaskCLIP(cfg, teacher=teacher),
            "templates": get_templates(cfg.MODEL.CLIP.TEMPLATES),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @classmethod
    def pseudo_label_spec(cls, cfg) -> PseudoLabelSpec:
        """The teacher labels a config trains from: the data side checks a store against it
        and gives "online" samples their "teacher_input" (:mod:`ovseg.pseudo.spec`)."""
        return maskclip_plus_pseudo_labels(cfg)

    def train(self, mode: bool = True) -> MaskCLIPPlus:
        """Set the mode of the student; the training-free labeller stays in eval mode."""
        super().train(mode)
        self.labeller.train(False)
        return self

    # ------------------------------------------------------------------ classifier
    def text_embeddings(self, names: Sequence[str]) -> Tensor:
        """(K, D) normalised classifier: CLIP text embeddings, the background's learnable."""
        return self.classifier(names)

    def pixel_embeddings(self, images: Tensor) -> Tensor:
        """(B, D, h, w) L2-normalised student embeddings of normalised (B, 3, H, W) images."""
        return F.normalize(self.head(self.backbone(images)), dim=1)

    def logits(self, embeddings: Tensor, text: Tensor, size: Tuple[int, int]) -> Tensor:
        """``logit_scale * cosine`` (B, K, h, w), upsampled bilinearly to ``size``."""
        out = self.classifier.logits(embeddings, text)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)

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
        unseen = {normalize_name(n) for n in self.unseen}
        target = [
            i for i, n in enumerate(names) if self.annotation_free or normalize_name(n) in unseen
        ]
        scored = list(range(len(names))) if self.pseudo_label_classes == "all" else target
        if not target:
            raise ValueError(
                f"None of the unseen classes {list(self.unseen)} is in the training vocabulary "
                f"{list(names)[:8]}...; MaskCLIP+ has nothing to pseudo-label (register the "
                "dataset's unseen_classes, or set MODEL.MASKCLIP_PLUS.ANNOTATION_FREE True)"
            )
        return scored, target

    def training_targets(
        self, batched_inputs: List[dict], student_logits: Tensor, iteration: Optional[int] = None
    ) -> Tensor:
        """Per-pixel targets of a training batch (see the module docstring).

        Args:
            batched_inputs (list[dict]): samples of the training mapper (one vocabulary).
            student_logits (Tensor): (B, K, H, W) the student's logits at the padded batch
                size (used once self-training is on; detached here).
            iteration (int, optional): the training iteration; default: the trainer's.

        Returns:
            Tensor: (B, H, W) long training indices or the ignore value.
        """
        names = self.input_vocabulary(batched_inputs[0], None)
        scored, target = self.labelled_classes(names)
        b, _, h, w = student_logits.shape
        target_t = torch.tensor(target, device=self.device)
        gt = self._ground_truth(batched_inputs, names, target_t, (b, h, w))
        free = gt == self.ignore_value
        free &= torch.stack([self._content(x, h, w) for x in batched_inputs])
        if self.self_training.active(iteration):
            labels, _ = pixel_labels(
                student_logits[:, scored],
                threshold=self.self_training_threshold,
                ignore_value=self.ignore_value,
                kind="logits",
                classes=torch.tensor(scored, device=self.device),
            )
        else:
            labels = self.teacher_labels(batched_inputs, names, scored, (h, w))
        keep = free & torch.isin(labels, target_t)
        return torch.where(keep, labels, gt)

    def _ground_truth(
        self, batched_inputs: List[dict], names: Sequence[str], target: Tensor, shape
    ) -> Tensor:
        """(B, H, W) ground truth padded with ignore (all ignore when annotation-free);
        refuses unseen classes, which the transductive mapping turns into ignore."""
        gt = torch.full(shape, self.ignore_value, dtype=torch.long, device=self.device)
        if self.annotation_free:
            return gt
        for i, x in enumerate(batched_inputs):
            sem = x["sem_seg"].to(self.device)
            gt[i, : sem.shape[0], : sem.shape[1]] = sem
        leaked = torch.isin(gt, target)
        if bool(leaked.any()):
            bad = sorted({names[int(c)] for c in gt[leaked].unique()})
            raise ValueError(
                f"Ground truth of unseen classes {bad} reached MaskCLIP+ in "
                f"{[x.get('file_name') for x in batched_inputs]}; train with "
                "MODEL.OVSEG.ZERO_SHOT_SETTING 'transductive' (unseen pixels -> ignore)"
            )
        return gt

    def _content(self, x: dict, h: int, w: int) -> Tensor:
        labels = [] if self.annotation_free else [x.get("sem_seg")]
        labels.append(x.get("pseudo_sem_seg"))
        mask = content_mask(x["image"], labels, self.ignore_value).to(self.device)
        return F.pad(mask, (0, w - mask.shape[1], 0, h - mask.shape[0]), value=False)

    def teacher_labels(
        self,
        batched_inputs: List[dict],
        names: Sequence[str],
        scored: Sequence[int],
        size: Tuple[int, int],
    ) -> Tensor:
        """(B, H, W) teacher labels in training indices (ignore where none), per the source."""
        h, w = size
        how = TeacherLabelling(
            self.labeller,
            tuple(names),
            tuple(scored),
            self.pseudo_label_threshold,
            self.ignore_value,
        )
        maps = []
        for x in batched_inputs:
            label = sample_teacher_labels(x, self.pseudo_label_source, how, self.generate_command)
            label = label.to(self.device)
            pad = (0, w - label.shape[1], 0, h - label.shape[0])
            maps.append(F.pad(label.long(), pad, value=self.ignore_value))
        labels = torch.stack(maps)
        self.check_labels(labels, len(names), batched_inputs)
        return labels

    # ------------------------------------------------------------------ training
    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        """``loss_sem_seg`` (cross-entropy over the targets) and, with a distillation
        weight, ``loss_distill``."""
        if len(self.vocabulary_groups(batched_inputs)) > 1:
            raise ValueError("MaskCLIP+ trains on one vocabulary per batch; got several")
        names = self.input_vocabulary(batched_inputs[0], None)
        images = ImageList.from_tensors(
            self.normalize([x["image"] for x in batched_inputs]), self.size_divisibility
        )
        size = tuple(images.tensor.shape[-2:])
        embeddings = self.pixel_embeddings(images.tensor)
        logits = self.logits(embeddings, self.text_embeddings(names), size)
        targets = self.training_targets(batched_inputs, logits.detach())
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
