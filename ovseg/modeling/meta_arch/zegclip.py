# Follows the official ZegCLIP (ZiqinZhou66/ZegCLIP models/segmentor/zegclip.py: seen/unseen
# handling, self-training stage; configs/_base_/datasets/*.py: ImageNet input statistics),
# re-written.
"""ZegCLIP: CLIP's frozen image tower with deep prompts, and a light decoder of class queries.

The image goes through the teacher's own ViT tower (frozen, shared) with learnable prompt
tokens (:class:`~ovseg.modeling.backbone.CLIPViTPrompted`); the class queries, built from the
teacher's text embeddings and the image's global token, attend to the patch tokens, and each
class's mask is its attention logits (:class:`~ovseg.modeling.heads.zegclip_decoder.
ZegCLIPDecoder`). Classes are not mutually exclusive: one sigmoid per class, trained with
focal and dice losses over the input's vocabulary. Only prompts and decoder learn.

At test the model returns sigmoid probabilities; an inductive model lowers the classes it
saw labels for by ``calibration`` (their scores can then go below 0). Transductive
self-training labels the pixels without ground truth with the model's own best unseen class.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone

from ...clip import CLIPTeacher, build_clip_teacher, get_templates
from ...pseudo.self_training import SelfTrainingSchedule
from ...vocab import normalize_name, split_synonyms, training_vocabulary
from ..backbone import build_backbone
from ..heads.zegclip_decoder import ZegCLIPDecoder
from ..host_copy import batch_index, device_memo
from ..losses import mask_losses, mask_targets
from ..mask_count import MaskCount
from ..resize import resize_bilinear
from ..text_classifier import LearnedBackground, TextClassifier
from .base import OpenVocabSegmentor

__all__ = [
    "IMAGENET_PIXEL_MEAN",
    "IMAGENET_PIXEL_STD",
    "PIXEL_STATISTICS",
    "SELF_TRAINING_PIXELS",
    "ZegCLIP",
    "calibrate",
    "pixel_statistics",
    "self_training_targets",
]


SELF_TRAINING_PIXELS = ("ignore", "unseen")
PIXEL_STATISTICS = ("clip", "imagenet")
# mmseg's ImageNet RGB mean/std (0-255) of the official data pipeline
# (configs/_base_/datasets/voc12_20_512x512.py:4-5, cocostuff_512x512.py:4-5)
IMAGENET_PIXEL_MEAN = (123.675, 116.28, 103.53)
IMAGENET_PIXEL_STD = (58.395, 57.12, 57.375)


def pixel_statistics(name: str, teacher: CLIPTeacher) -> Tuple[List[float], List[float]]:
    """The prompted tower's input mean and std (RGB, 0-255) by MODEL.ZEGCLIP.PIXEL_STATISTICS:
    "clip" (the CLIP model's own) or "imagenet" (the official ZegCLIP pipeline's)."""
    if name == "clip":
        return teacher.pixel_mean.flatten().tolist(), teacher.pixel_std.flatten().tolist()
    if name == "imagenet":
        return list(IMAGENET_PIXEL_MEAN), list(IMAGENET_PIXEL_STD)
    raise ValueError(
        f"MODEL.ZEGCLIP.PIXEL_STATISTICS={name!r} is not one of {list(PIXEL_STATISTICS)}"
    )


def calibrate(scores: Tensor, seen: Tensor, amount: float) -> Tensor:
    """Lower the seen classes' scores: ``scores[:, k] - amount`` where ``seen[k]``.

    Args:
        scores (Tensor): (B, K, H, W) sigmoid probabilities.
        seen (Tensor): (K,) bool.
        amount (float): the calibration (paper: 0.1).

    Returns:
        Tensor: (B, K, H, W), a new tensor.
    """
    shift = amount * seen.to(device=scores.device, dtype=scores.dtype)
    return scores - shift.view(1, -1, 1, 1)


def self_training_targets(
    target: Tensor,
    logits: Tensor,
    unseen: Tensor,
    *,
    ignore_value: int = 255,
    pixels: str = "ignore",
    content: Optional[Tensor] = None,
) -> Tensor:
    """Self-training targets: pixels without ground truth get the best unseen class.

    Args:
        target (Tensor): (B, H, W) long labels, ``ignore_value`` where there is none.
        logits (Tensor): (B, K, H, W) the model's mask logits (or probabilities).
        unseen (Tensor): (K,) bool, the vocabulary's unseen classes.
        ignore_value (int): the ignore label.
        pixels (str): "ignore": label every ignored pixel; "unseen": relabel the pixels whose
            label is an unseen class (ignored pixels stay ignored).
        content (Tensor, optional): (B, H, W) bool, the samples' own pixels; the batch's
            padding (the rest) stays ignored.

    Returns:
        Tensor: (B, H, W) long targets, a new tensor.
    """
    if pixels not in SELF_TRAINING_PIXELS:
        raise ValueError(
            f"MODEL.ZEGCLIP.SELF_TRAINING_PIXELS={pixels!r} is not one of "
            f"{list(SELF_TRAINING_PIXELS)}"
        )
    unseen_idx = torch.nonzero(unseen.to(logits.device)).flatten()
    if unseen_idx.numel() == 0:
        raise ValueError(
            "self-training needs unseen classes in the training vocabulary; check the "
            "dataset's unseen_classes and MODEL.OVSEG.ZERO_SHOT_SETTING"
        )
    best = unseen_idx[logits.detach()[:, unseen_idx].argmax(dim=1)]  # (B, H, W)
    if pixels == "ignore":
        where = target == ignore_value
        if content is not None:
            where = where & content
    else:
        where = torch.isin(target, unseen_idx)
    return torch.where(where, best, target)


def _upsample(x: Tensor, size: Tuple[int, int]) -> Tensor:
    if x.is_cuda:
        return resize_bilinear(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def names_and_synonyms(names: Sequence[str]) -> frozenset:
    """The normalised names and each one's synonyms: with SYNONYM_MERGE "max" every synonym
    of a class is scored on its own and must count as the class."""
    return frozenset(normalize_name(w) for n in names for w in (n, *split_synonyms(n)))


@META_ARCH_REGISTRY.register()
class ZegCLIP(OpenVocabSegmentor):
    """ZegCLIP over the shared frozen CLIP teacher (see the module docstring).

    Inputs as :class:`OpenVocabSegmentor`. Checkpoints hold the prompts and the decoder
    (and a learnable background) only.
    """

    # "sem_seg" holds (calibrated) sigmoid probabilities
    sem_seg_scores = "probabilities"
    # the official runs read voc12_single.npy / coco_*.npy (zero:70, zegclip.py:174-176)
    reads_text_embeddings_file = True

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        decoder: ZegCLIPDecoder,
        teacher: CLIPTeacher,
        templates: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        seen_classes: Sequence[str] = (),
        unseen_classes: Sequence[str] = (),
        calibration: float = 0.1,
        focal_weight: float = 100.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        dice_weight: float = 1.0,
        deep_supervision: bool = True,
        ignore_as_negative: bool = False,
        self_training_start_iter: int = -1,
        self_training_pixels: str = "ignore",
        background_class: Optional[str] = None,
        size_divisibility: int = -1,
        **kwargs,
    ):
        """
        Args:
            backbone (Backbone): outputs "patch_tokens" (B, D, h, w) and "global_token" (B, D).
            decoder (ZegCLIPDecoder): class queries -> per-layer mask logits.
            teacher (CLIPTeacher): the frozen CLIP (its tower is shared with the backbone).
            templates: prompt templates, each with one "{}".
            pixel_mean, pixel_std: input statistics, 0-255 scale (:func:`pixel_statistics`).
            seen_classes: names whose test scores ``calibration`` lowers.
            unseen_classes: names that get no loss before self-training and whose scores
                label pixels during it; () without self-training.
            calibration (float): inductive calibration; not applied to a self-trained model.
            focal_weight, focal_alpha, focal_gamma, dice_weight, ignore_as_negative: the
                loss (:func:`~ovseg.modeling.losses.mask_losses`).
            deep_supervision (bool): losses on every decoder layer, else the last only.
            self_training_start_iter (int): first self-training iteration; < 0 = never.
            self_training_pixels (str): see :func:`self_training_targets`.
            background_class (str, optional): name whose text embedding is replaced by a
                learnable one (None = CLIP's text for every name).
            size_divisibility (int): pad inputs to a multiple of this and of the patch size.
            kwargs: :class:`OpenVocabSegmentor`'s (vocabulary, ignore_value, inference_mode,
                slide_window, slide_stride).
        """
        if self_training_pixels not in SELF_TRAINING_PIXELS:
            raise ValueError(
                f"MODEL.ZEGCLIP.SELF_TRAINING_PIXELS={self_training_pixels!r} is not one of "
                f"{list(SELF_TRAINING_PIXELS)}"
            )
        schedule = SelfTrainingSchedule(self_training_start_iter)
        if schedule.enabled and not unseen_classes:
            raise ValueError(
                "MODEL.OVSEG.SELF_TRAINING.START_ITER >= 0 needs the training set's unseen "
                "classes; the training dataset declares none (metadata 'unseen_classes')"
            )
        d, b = int(size_divisibility), int(backbone.size_divisibility or 0)
        super().__init__(
            teacher=teacher,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            size_divisibility=math.lcm(max(d, 1), max(b, 1)),
            **kwargs,
        )
        self.backbone = backbone
        self.decoder = decoder
        self.classifier = TextClassifier(
            teacher, templates, background_class=background_class, **self.text_options()
        )
        self.seen_classes = names_and_synonyms(seen_classes)
        self.unseen_classes = frozenset(normalize_name(n) for n in unseen_classes)
        self.calibration = float(calibration)
        self.focal_weight, self.dice_weight = float(focal_weight), float(dice_weight)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.deep_supervision = bool(deep_supervision)
        self.ignore_as_negative = bool(ignore_as_negative)
        self.self_training, self.self_training_pixels = schedule, self_training_pixels
        self.loss_fn = mask_losses  # MODEL.COMPILE replaces it by its compiled form
        self.mask_count = MaskCount()  # every loss is over masks (no prefetch needed)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        zcfg = cfg.MODEL.ZEGCLIP
        setting = cfg.MODEL.OVSEG.ZERO_SHOT_SETTING
        start = cfg.MODEL.OVSEG.SELF_TRAINING.START_ITER
        if start >= 0:
            # "ignore" pseudo-labels the ignored pixels, which hold the unseen classes only in
            # the transductive setting; "unseen" needs the unseen labels to find their pixels
            needed = "transductive" if zcfg.SELF_TRAINING_PIXELS == "ignore" else "none"
            if setting != needed:
                raise ValueError(
                    f"MODEL.ZEGCLIP.SELF_TRAINING_PIXELS={zcfg.SELF_TRAINING_PIXELS!r} needs "
                    f"MODEL.OVSEG.ZERO_SHOT_SETTING {needed!r}, got {setting!r}"
                )
        teacher = build_clip_teacher(cfg)
        pixel_mean, pixel_std = pixel_statistics(zcfg.PIXEL_STATISTICS, teacher)
        backbone = build_backbone(cfg, teacher=teacher)
        decoder = ZegCLIPDecoder(
            teacher.embed_dim,
            num_layers=zcfg.DECODER_LAYERS,
            num_heads=zcfg.DECODER_HEADS,
            dropout=zcfg.DECODER_DROPOUT,
            self_attention=zcfg.DECODER_SELF_ATTENTION,
            init=zcfg.DECODER_INIT,
        )
        vocab = training_vocabulary(cfg)
        seen, unseen = (vocab.seen, vocab.unseen) if vocab is not None else ((), ())
        background = cfg.MODEL.OVSEG.BACKGROUND_CLASS if cfg.MODEL.OVSEG.BG_EMBED else None
        if background is not None:
            LearnedBackground.check_trained(
                background, seen, "among the training set's seen classes"
            )
        if setting == "none" and start < 0:
            seen, unseen = seen + unseen, ()  # fully supervised: every class is seen
        elif setting == "inductive":
            unseen = ()  # not in the training vocabulary
        return {
            **OpenVocabSegmentor.base_config(cfg),
            "backbone": backbone,
            "decoder": decoder,
            "teacher": teacher,
            "templates": get_templates(cfg.MODEL.CLIP.TEMPLATES),
            "pixel_mean": pixel_mean,
            "pixel_std": pixel_std,
            "seen_classes": seen,
            "unseen_classes": unseen,
            "calibration": zcfg.CALIBRATION,
            "focal_weight": zcfg.FOCAL_WEIGHT,
            "focal_alpha": zcfg.FOCAL_ALPHA,
            "focal_gamma": zcfg.FOCAL_GAMMA,
            "dice_weight": zcfg.DICE_WEIGHT,
            "deep_supervision": zcfg.DEEP_SUPERVISION,
            "ignore_as_negative": zcfg.IGNORE_AS_NEGATIVE,
            "self_training_start_iter": start,
            "self_training_pixels": zcfg.SELF_TRAINING_PIXELS,
            "background_class": background,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    @property
    def bg_embed(self):
        """The learnable background embedding, or None."""
        return self.classifier.bg_embed

    @property
    def templates(self) -> Tuple[str, ...]:
        return self.classifier.templates

    # ------------------------------------------------------------------ building blocks
    def text_embeddings(self, names: Sequence[str]) -> Tensor:
        """(K, D) L2-normalised text embeddings (the teacher memoises them); the background's
        learnable one with ``background_class``."""
        return self.classifier(names)

    def _flags(self, names: Sequence[str], which: frozenset) -> Tensor:
        """(K,) bool on the device: which names are in ``which``; memoised, so a training
        step copies nothing from the host."""
        key = (tuple(names), which, self.device)

        def make():
            return torch.tensor([normalize_name(n) in which for n in names], device=self.device)

        return device_memo(self.__dict__.setdefault("_flag_cache", {}), key, make)

    def mask_logits(self, images: Tensor, text: Tensor) -> List[Tensor]:
        """Every decoder layer's mask logits at the patch grid.

        Args:
            images (Tensor): (B, 3, H, W) normalised, H and W multiples of the patch size.
            text (Tensor): (K, D) text embeddings.

        Returns:
            list[Tensor]: (B, K, H/p, W/p) per decoder layer, the last one last.
        """
        feats = self.backbone(images)
        patch = F.normalize(feats["patch_tokens"], dim=1)
        glob = F.normalize(feats["global_token"], dim=-1)
        return self.decoder(patch, glob, self.classifier.unit(text))

    def predict(self, images: Tensor, text: Tensor, seen: Optional[Tensor] = None) -> Tensor:
        """Sigmoid scores of normalised images at their size, calibrated.

        Args:
            images (Tensor): (b, 3, h, w) normalised images (zero = the pixel mean).
            text (Tensor): (K, D) text embeddings.
            seen (Tensor, optional): (K,) bool, the classes lowered by the calibration.

        Returns:
            Tensor: (b, K, h, w).
        """
        h, w = images.shape[-2:]
        m = self.size_divisibility
        padded = F.pad(images, (0, -w % m, 0, -h % m))
        logits = self.mask_logits(padded, text)[-1]
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        # in place on the upsampled logits (or on their float copy), which nothing else holds
        scores = logits[:, :, :h, :w].float().sigmoid_()
        if seen is not None and self.calibration and not self.self_training.enabled:
            scores = calibrate(scores, seen, self.calibration)
        return scores

    def predictor(self, names: Tuple[str, ...]):
        text, seen = self.text_embeddings(names), self._flags(names, self.seen_classes)
        return lambda x: self.predict(x, text, seen)

    # ------------------------------------------------------------------ training
    def self_training_active(self) -> bool:
        """Whether this training step uses pseudo-labels (needs a trainer's iteration)."""
        return self.self_training.active()

    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        """Focal and dice losses: "loss_focal", "loss_dice" for the last decoder layer,
        "loss_focal_<i>", "loss_dice_<i>" for layer i before it (deep supervision)."""
        images, targets = self.training_batch(batched_inputs)
        size = tuple(images.tensor.shape[-2:])
        feats = self.backbone(images.tensor)
        patch = F.normalize(feats["patch_tokens"], dim=1)
        glob = F.normalize(feats["global_token"], dim=-1)

        num_layers = len(self.decoder.layers)
        layers = range(num_layers) if self.deep_supervision else [num_layers - 1]
        focal = {i: patch.new_zeros(()) for i in layers}
        dice = {i: patch.new_zeros(()) for i in layers}
        num_masks = patch.new_zeros(())
        content = None  # the samples' own pixels, which "ignore" self-training labels
        if self.self_training_pixels == "ignore" and self.self_training_active():
            content = self.content_masks(batched_inputs, size)
        for names, idx in self.vocabulary_groups(batched_inputs).items():
            idx = batch_index(idx, len(batched_inputs), patch.device)
            target = targets[idx]
            text = self.classifier.unit(self.text_embeddings(names))
            masks = self.decoder(patch[idx], glob[idx], text)
            # on CUDA, F.interpolate's bilinear upsampling as two matrix products: the same
            # values, a backward without atomics (ovseg/modeling/resize.py); the CPU keeps
            # F.interpolate, whose float rounding the toy runs' recorded numbers came from
            masks = [_upsample(m, size) for m in masks]
            group_content = None if content is None else content[idx]
            target, classes = self._targets(target, masks[-1], names, group_content)
            target = mask_targets(target, len(names), ignore_value=self.ignore_value,
                                  ignore_as_negative=self.ignore_as_negative)  # fmt: skip
            for i in layers:  # the target masks made once for every supervised layer
                f, d, n = self.loss_fn(
                    masks[i],
                    target,
                    classes=classes,
                    alpha=self.focal_alpha,
                    gamma=self.focal_gamma,
                )
                focal[i], dice[i] = focal[i] + f, dice[i] + d
            num_masks = num_masks + n
        # as the official criterion: normalised by the non-empty masks of all processes (and
        # of an accumulated step's forwards: ovseg/modeling/mask_count.py)
        num_masks = self.mask_count.normalizer(num_masks)
        losses = {}
        for i in layers:
            suffix = "" if i == num_layers - 1 else f"_{i}"
            losses[f"loss_focal{suffix}"] = self.focal_weight * focal[i] / num_masks
            losses[f"loss_dice{suffix}"] = self.dice_weight * dice[i] / num_masks
        return losses

    def _targets(
        self,
        target: Tensor,
        logits: Tensor,
        names: Tuple[str, ...],
        content: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Training targets of a vocabulary group, and the classes that get a loss;
        ``content``: the group's sample pixels (b, H, W), which self-training may label."""
        if not self.unseen_classes:
            return target, None
        unseen = self._flags(names, self.unseen_classes)
        if self.self_training_active():
            pseudo = self_training_targets(
                target,
                logits,
                unseen,
                ignore_value=self.ignore_value,
                pixels=self.self_training_pixels,
                content=content,
            )
            return pseudo, None
        if self.self_training_pixels == "unseen":
            # before self-training, the unseen classes' labels only mark pixels to ignore
            # (looked up, not torch.isin of nonzero(unseen): nonzero waits for the device)
            k = unseen.numel()
            at_unseen = unseen[target.clamp(0, k - 1)] & (target >= 0) & (target < k)
            target = target.masked_fill(at_unseen, self.ignore_value)
        return target, ~unseen
