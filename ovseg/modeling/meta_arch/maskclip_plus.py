# Follows the official MaskCLIP+ (chongzhou96/MaskCLIP: mmseg MaskClipPlusHead, its assign_label
# and self-training schedule), re-written as a detectron2 meta-architecture.
"""MaskCLIP+: a DeepLab student learns from the MaskCLIP teacher's pseudo-labels, then its own.

The student (a dilated ResNet and a DeepLab head, ``MODEL.BACKBONE`` / ``MODEL.DENSE_HEAD``)
outputs D-dimensional pixel embeddings; its classifier is the fixed matrix of the CLIP text
embeddings of the vocabulary (``MODEL.OVSEG.LOGIT_SCALE * cosine``), with an optional
learnable embedding for ``MODEL.OVSEG.BACKGROUND_CLASS`` (``BG_EMBED``). Its
logits are ``LOGIT_SCALE * cosine`` or, with ``MODEL.MASKCLIP_PLUS.NORMALIZE_EMBEDDINGS``
False, the raw dot product of the un-normalised embeddings (the official ``cls_seg``, with
LOGIT_SCALE 1). Training targets, per pixel: seen ground truth is kept; the "free" pixels get
a pseudo-label of an unseen class or stay ignored. Which pixels are free
(``PSEUDO_LABEL_PIXELS``):

- ``"ignore"``: the pixels without ground truth. Transductive zero-shot
  (``MODEL.OVSEG.ZERO_SHOT_SETTING "transductive"``): the mapper turned unseen classes into
  ignore, so unseen and void pixels are free alike; annotation-free
  (``MODEL.MASKCLIP_PLUS.ANNOTATION_FREE``): every pixel, the ground truth is never read;
- ``"unseen"`` (the official protocol, with ZERO_SHOT_SETTING "none"): the pixels whose ground
  truth is an unseen class (annotation-free: any class); void stays ignored. The unseen
  labels only locate the pixels: they never become targets.

In annotation-free training any class may be assigned.

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
(:mod:`ovseg.pseudo.spec`). The cross-entropy sum is divided by the pixels with a target or,
as mmseg does (``LOSS_NORMALIZATION "all"``), by every pixel of the padded batch. Optionally
an L1 loss pulls the student's embeddings towards the teacher's dense embeddings. In eval
the model returns softmax probabilities over the input's vocabulary.
"""

from __future__ import annotations

import logging
import math
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
from ..host_copy import device_memo
from .base import OpenVocabSegmentor
from .maskclip import MaskCLIP
from .maskclip_plus_build import (
    check_settings,
    maskclip_plus_config,
    maskclip_plus_pseudo_labels,
    student_classifier,
)
from .maskclip_plus_targets import (
    TeacherLabelling,
    augmented_images_labels,
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
    # the official student and teacher heads read pretrain/<set>_<model>_clip_text.pth
    # (maskclip_plus_head.py:78-80, maskclip_head.py:54-56)
    reads_text_embeddings_file = True

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
        pseudo_label_pixels: str = "ignore",
        normalize_embeddings: bool = True,
        loss_normalization: str = "valid",
        teacher_input_normalization: str = "clip",
        background_init_std: float = 0.0,
        size_divisibility: int = -1,
        **kwargs,
    ):
        """
        Args:
            backbone (Backbone), head (nn.Module): the student: features, then (B, D, h, w)
                pixel embeddings (D = CLIP's).
            teacher (CLIPTeacher), labeller (MaskCLIP): the frozen CLIP (text classifier,
                distillation target) and the training-free MaskCLIP teacher sharing it.
            templates: the classifier's prompt templates; pixel_mean, pixel_std: the
                student's input normalisation (0-255, RGB order).
            unseen: the unseen names; annotation_free (bool): no ground truth, all pixels free.
            pseudo_label_source, pseudo_label_classes, pseudo_label_pixels (str): where the
                teacher's labels come from, which classes the labellers score, which pixels
                are free; pseudo_label_threshold (float): the teacher's confidence threshold;
                generate_command (str): the command that makes a fitting store, for errors.
            self_training_start_iter (int): from it, the student labels (< 0 = never), with
                the confidence threshold self_training_threshold (float).
            logit_scale (float), learnable_logit_scale (bool), normalize_embeddings (bool):
                logits = logit_scale x cosine (without normalize_embeddings: x dot product);
                background_class (str, optional), background_init_std (float): a class whose
                embedding is learnt, and its init's std if > 0 (official: 1).
            distill_weight (float): weight of the L1 feature distillation (0 = off).
            loss_normalization (str): "valid" or "all": the cross-entropy's divisor.
            teacher_input_normalization (str): "clip" or "student": the mean/std with which
                the "online_augmented" teacher sees the crop.
            size_divisibility (int): training batches are padded (normalised, with 0) to a
                multiple of this and of the backbone's; test inputs to the backbone's only.
            kwargs: :class:`OpenVocabSegmentor`'s (vocabulary, ignore_value, inference_mode,
                slide_window, slide_stride; sem_seg_scores "logits": :meth:`predict` gives them).
        """
        check_settings(pseudo_label_source, pseudo_label_classes, pseudo_label_pixels,
                       loss_normalization, teacher_input_normalization)  # fmt: skip
        super().__init__(teacher=teacher, pixel_mean=pixel_mean, pixel_std=pixel_std,
                         size_divisibility=backbone.size_divisibility or 0, **kwargs)  # fmt: skip
        self.training_divisibility = math.lcm(max(size_divisibility, 1), self.size_divisibility)
        self.backbone, self.head = backbone, head
        self.labeller = labeller.train(False)  # always: it is training-free
        self.classifier = student_classifier(
            teacher, templates, self.prompt_names, logit_scale, learnable_logit_scale,
            background_class, background_init_std, self.text_embeddings_file)  # fmt: skip
        self.unseen, self.annotation_free = tuple(unseen), bool(annotation_free)
        self.pseudo_label_source = pseudo_label_source
        self.pseudo_label_classes = pseudo_label_classes
        self.pseudo_label_threshold = float(pseudo_label_threshold)
        self.generate_command = generate_command
        self.self_training = SelfTrainingSchedule(self_training_start_iter)
        self.self_training_threshold = float(self_training_threshold)
        self.distill_weight, self.pseudo_label_pixels = float(distill_weight), pseudo_label_pixels
        self.normalize_embeddings = bool(normalize_embeddings)
        self.loss_normalization = loss_normalization
        self.teacher_input_normalization = teacher_input_normalization
        logger.info(f"MaskCLIP+: free pixels labelled by {self._labellers()}")

    def _labellers(self) -> str:
        """Who labels the free pixels when, for the log."""
        who = f"the teacher ({self.pseudo_label_source})"
        if self.self_training.enabled:
            who += f" until iteration {self.self_training.start_iter}"
        return who

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
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
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
        """(B, D, h, w) student embeddings of normalised (B, 3, H, W) images: L2-normalised,
        or as the head gives them without ``normalize_embeddings``."""
        out = self.head(self.backbone(images))
        return F.normalize(out, dim=1) if self.normalize_embeddings else out

    def logits(self, embeddings: Tensor, text: Tensor, size: Tuple[int, int]) -> Tensor:
        """``logit_scale * (embeddings . text)`` (B, K, h, w), upsampled bilinearly to
        ``size``: a scaled cosine, or the raw dot product without ``normalize_embeddings``."""
        out = self.classifier.logits(embeddings, text)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)

    def predict(self, images: Tensor, text: Tensor) -> Tensor:
        """(b, K, h, w) softmax probabilities (or the logits, per ``sem_seg_scores``) of
        normalised (b, 3, h, w) images."""
        h, w = images.shape[-2:]
        m = self.size_divisibility
        padded = F.pad(images, (0, -w % m, 0, -h % m))
        logits = self.logits(self.pixel_embeddings(padded), text, tuple(padded.shape[-2:]))
        logits = logits[:, :, :h, :w].float()
        return logits if self.sem_seg_scores == "logits" else logits.softmax(dim=1)

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
        target_t = self._indices(target)
        gt = self._ground_truth(batched_inputs, names, target, (b, h, w))
        if self.pseudo_label_pixels == "unseen":
            # the unseen (annotation-free: all) labels locate the free pixels, never supervise
            free = torch.isin(gt, target_t)
            gt = gt.masked_fill(free, self.ignore_value)
        else:
            free = gt == self.ignore_value
        contents = [self._host_content(x, h, w) for x in batched_inputs]
        free &= torch.stack([self.to_device(c) for c in contents])
        if self.self_training.active(iteration):
            labels, _ = pixel_labels(
                student_logits[:, self._indices(scored)],  # not [:, list]: built on the host
                threshold=self.self_training_threshold,
                ignore_value=self.ignore_value,
                kind="logits",
                classes=self._indices(scored),
            )
        else:
            # free.flatten(1).any(1), from the host tensors: no wait for the device
            needed = [self._has_free(x, c, target) for x, c in zip(batched_inputs, contents)]
            labels = self.teacher_labels(batched_inputs, names, scored, (h, w), needed)
        keep = free & torch.isin(labels, target_t)
        return torch.where(keep, labels, gt)

    def _indices(self, indices: Sequence[int]) -> Tensor:
        """``indices`` as a long tensor on the device, memoised per tuple and device (a new
        tensor from a list is a blocking copy from the host)."""
        key = (tuple(indices), self.device)
        cache = self.__dict__.setdefault("_index_cache", {})
        return device_memo(
            cache, key, lambda: torch.tensor(key[0], dtype=torch.long, device=self.device)
        )

    @property
    def _reads_ground_truth(self) -> bool:
        return not self.annotation_free or self.pseudo_label_pixels == "unseen"

    def _ground_truth(
        self, batched_inputs: List[dict], names: Sequence[str], target: Sequence[int], shape
    ) -> Tensor:
        """(B, H, W) ground truth padded with ignore (all ignore when annotation-free and free
        pixels are the ignored ones); with free pixels "ignore", refuses unseen classes, which
        the transductive mapping turns into ignore."""
        gt = torch.full(shape, self.ignore_value, dtype=torch.long, device=self.device)
        if not self._reads_ground_truth:
            return gt
        leaked = []
        for i, x in enumerate(batched_inputs):
            if "sem_seg" not in x:
                raise ValueError(
                    f"Training sample {x.get('file_name', '')!r} has no 'sem_seg': "
                    "MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_PIXELS 'unseen' finds the pixels to "
                    "pseudo-label by their ground truth; use a dataset with labels or 'ignore'"
                )
            sem = x["sem_seg"]
            self.check_labels(sem, len(names), [x])  # on the host, as the other students
            if self.pseudo_label_pixels != "unseen":
                # checked where the labels are (on the host: no wait for the device)
                unseen = torch.as_tensor(target, dtype=torch.long, device=sem.device)
                leaked += sem[torch.isin(sem, unseen)].unique().tolist()
            sem = self.to_device(sem)  # pinned and without waiting, from the host
            gt[i, : sem.shape[0], : sem.shape[1]] = sem
        if leaked:
            bad = sorted({names[int(c)] for c in leaked})
            raise ValueError(
                f"Ground truth of unseen classes {bad} reached MaskCLIP+ in "
                f"{[x.get('file_name') for x in batched_inputs]}; train with "
                "MODEL.OVSEG.ZERO_SHOT_SETTING 'transductive' (unseen pixels -> ignore)"
            )
        return gt

    def _host_content(self, x: dict, h: int, w: int) -> Tensor:
        """(h, w) bool: the sample's content pixels, where its tensors are (the host)."""
        labels = [x.get("sem_seg")] if self._reads_ground_truth else []
        labels.append(x.get("pseudo_sem_seg"))
        mask = content_mask(x["image"], labels, self.ignore_value, x.get("content_size"))
        return F.pad(mask, (0, w - mask.shape[1], 0, h - mask.shape[0]), value=False)

    def _content(self, x: dict, h: int, w: int) -> Tensor:
        return self.to_device(self._host_content(x, h, w))

    def _has_free(self, x: dict, content: Tensor, target: Sequence[int]) -> bool:
        """Whether sample ``x`` has a pixel for the teacher (a free content pixel), read
        from its own tensors as :meth:`training_targets` finds them on the device."""
        if not self._reads_ground_truth:  # the ground truth is all ignore: all free
            return bool(content.any())
        sem = x["sem_seg"]
        if self.pseudo_label_pixels == "unseen":
            free = torch.isin(sem, torch.as_tensor(target, dtype=torch.long, device=sem.device))
        else:
            free = sem == self.ignore_value
        # beyond the label's size the padded ground truth is ignore, and no pixel is content
        return bool((free & content[: sem.shape[0], : sem.shape[1]].to(sem.device)).any())

    def teacher_labels(
        self,
        batched_inputs: List[dict],
        names: Sequence[str],
        scored: Sequence[int],
        size: Tuple[int, int],
        needed: Optional[Sequence[bool]] = None,
    ) -> Tensor:
        """(B, H, W) teacher labels in training indices (ignore where none), per the source;
        samples not ``needed`` (no free pixel) are not labelled (all ignore)."""
        h, w = size
        stats = None
        if self.teacher_input_normalization == "student":
            stats = (self.pixel_mean, self.pixel_std)
        how = TeacherLabelling(self.labeller, tuple(names), tuple(scored),
                               self.pseudo_label_threshold, self.ignore_value, stats,
                               classes=self._indices(scored))  # fmt: skip
        todo = [i for i in range(len(batched_inputs)) if needed is None or needed[i]]
        if self.pseudo_label_source == "online_augmented":  # one call: a forward per size
            # made on the model's device, the teacher's classes or ignore by construction
            # (``pixel_labels``), refused otherwise by cross-entropy: a check would wait
            made = augmented_images_labels([batched_inputs[i] for i in todo], how)
        else:
            source, command = self.pseudo_label_source, self.generate_command
            made = [sample_teacher_labels(batched_inputs[i], source, how, command) for i in todo]
            for i, label in zip(todo, made):
                if label.device.type == "cpu":  # a store's, or the mapper's: no wait
                    self.check_labels(label, len(names), [batched_inputs[i]])
        maps = [torch.full(size, self.ignore_value, device=self.device)] * len(batched_inputs)
        for i, label in zip(todo, made):
            label = self.to_device(label)
            pad = (0, w - label.shape[1], 0, h - label.shape[0])
            maps[i] = F.pad(label.long(), pad, value=self.ignore_value)
        return torch.stack(maps)

    # ------------------------------------------------------------------ training
    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        """``loss_sem_seg`` (cross-entropy over the targets) and, with a distillation
        weight, ``loss_distill``."""
        if len(self.vocabulary_groups(batched_inputs)) > 1:
            raise ValueError("MaskCLIP+ trains on one vocabulary per batch; got several")
        names = self.input_vocabulary(batched_inputs[0], None)
        images = ImageList.from_tensors(
            self.normalize([x["image"] for x in batched_inputs]), self.training_divisibility
        )
        size = tuple(images.tensor.shape[-2:])
        embeddings = self.pixel_embeddings(images.tensor)
        logits = self.logits(embeddings, self.text_embeddings(names), size)
        targets = self.training_targets(batched_inputs, logits.detach())
        loss = F.cross_entropy(
            logits.float(), targets, ignore_index=self.ignore_value, reduction="sum"
        )
        # a batch without any target gives a zero loss that still reaches every parameter
        if self.loss_normalization == "all":
            count = targets.numel()
        else:
            count = (targets != self.ignore_value).sum().clamp(min=1)
        losses = {"loss_sem_seg": loss / count}
        if self.distill_weight > 0:
            losses["loss_distill"] = self.distill_weight * self._distill(batched_inputs, embeddings)
        return losses

    def _distill(self, batched_inputs: List[dict], embeddings: Tensor) -> Tensor:
        """Mean L1 distance of student and CLIP dense embeddings on image content."""
        images = ImageList.from_tensors([x["image"].float() for x in batched_inputs]).tensor
        clip = self.teacher.dense_embeddings(images.to(self.device))
        size = tuple(images.shape[-2:])
        masks = torch.stack([self._content(x, *size) for x in batched_inputs])
        if not self.normalize_embeddings:  # CLIP's are unit vectors: compare directions
            embeddings = F.normalize(embeddings, dim=1)
        return l1_distillation(embeddings, clip, masks)
