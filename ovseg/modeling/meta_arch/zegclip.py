# Follows the official ZegCLIP (ZiqinZhou66/ZegCLIP models/segmentor/zegclip.py: seen/unseen
# handling, self-training stage), re-written.
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
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ...clip import CLIPTeacher, build_clip_teacher, get_templates
from ...vocab import check_templates, resolve_vocabulary
from ..backbone import build_backbone
from ..heads.zegclip_decoder import ZegCLIPDecoder
from ..heads.zegclip_loss import TRANSDUCTIVE_PIXELS, calibrate, mask_losses, transductive_targets
from ..inference import INFERENCE_MODES
from .common import (
    LearnedBackground,
    check_labels,
    default_test_vocabulary,
    group_inputs,
    input_vocabulary,
    training_batch,
    vocabulary_inference,
)

__all__ = ["ZegCLIP"]


def _norm(name: str) -> str:
    return name.strip().casefold()


def _current_iteration() -> Optional[int]:
    try:
        return get_event_storage().iter
    except AssertionError:  # outside a trainer: no event storage
        return None


def _training_names(cfg) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(seen, unseen) class names of the training set, from its metadata."""
    if not cfg.DATASETS.TRAIN:
        return (), ()
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    if not meta.get("stuff_classes", None):
        return (), ()
    vocab = resolve_vocabulary("", meta)
    spec = cfg.MODEL.OVSEG.TRAIN_VOCABULARY
    names = resolve_vocabulary(spec).names if spec.strip() else vocab.names
    unseen = {_norm(n) for n in vocab.unseen}
    return tuple(n for n in names if _norm(n) not in unseen), tuple(vocab.unseen)


@META_ARCH_REGISTRY.register()
class ZegCLIP(nn.Module):
    """ZegCLIP over the shared frozen CLIP teacher (see the module docstring).

    Training inputs need "image", "sem_seg" (labels index their "vocabulary") and
    "vocabulary"; test inputs need "image" and optionally "height"/"width" and "vocabulary"
    (default: the model's). Checkpoints hold the prompts and the decoder only.
    """

    # tells ovseg.pseudo that "sem_seg" holds (calibrated) sigmoid probabilities
    sem_seg_scores = "probabilities"

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
        ignore_value: int = 255,
        vocabulary: Optional[Sequence[str]] = None,
        seen_classes: Sequence[str] = (),
        unseen_classes: Sequence[str] = (),
        calibration: float = 0.1,
        focal_weight: float = 100.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        dice_weight: float = 1.0,
        deep_supervision: bool = True,
        ignore_as_negative: bool = False,
        transductive: bool = False,
        transductive_start_iter: int = 0,
        transductive_pixels: str = "ignore",
        background_class: Optional[str] = None,
        inference_mode: str = "whole",
        slide_window: Tuple[int, int] = (512, 512),
        slide_stride: Tuple[int, int] = (426, 426),
        size_divisibility: int = -1,
    ):
        """
        Args:
            backbone (Backbone): outputs "patch_tokens" (B, D, h, w) and "global_token" (B, D).
            decoder (ZegCLIPDecoder): class queries -> per-layer mask logits.
            teacher (CLIPTeacher): the frozen CLIP (text embeddings; its tower is shared
                with the backbone).
            templates: prompt templates, each with one "{}".
            pixel_mean, pixel_std: the CLIP model's image statistics, 0-255 scale.
            ignore_value (int): label of ignored pixels.
            vocabulary: names for test inputs without "vocabulary"; None = they must have one.
            seen_classes: names whose test scores ``calibration`` lowers.
            unseen_classes: names that get no loss before self-training and whose scores
                label pixels during it; () outside the transductive setting.
            calibration (float): inductive calibration; not applied when ``transductive``.
            focal_weight, focal_alpha, focal_gamma, dice_weight: the loss (see
                :func:`mask_losses`).
            deep_supervision (bool): losses on every decoder layer, else the last only.
            ignore_as_negative (bool): see :func:`mask_losses`.
            transductive (bool): self-train from ``transductive_start_iter`` on.
            transductive_start_iter (int): first self-training iteration.
            transductive_pixels (str): "ignore" or "unseen" (see :func:`transductive_targets`).
            background_class (str, optional): name whose text embedding is replaced by a
                learnable one (None = CLIP's text for every name).
            inference_mode (str): "whole" or "slide".
            slide_window, slide_stride ((int, int)): sliding-window size and stride.
            size_divisibility (int): pad inputs to a multiple of this and of the patch size.
        """
        super().__init__()
        if inference_mode not in INFERENCE_MODES:
            raise ValueError(
                f"inference mode {inference_mode!r} (TEST.INFERENCE_MODE) is not one of "
                f"{list(INFERENCE_MODES)}"
            )
        if transductive_pixels not in TRANSDUCTIVE_PIXELS:
            raise ValueError(
                f"MODEL.ZEGCLIP.TRANSDUCTIVE_PIXELS={transductive_pixels!r} is not one of "
                f"{list(TRANSDUCTIVE_PIXELS)}"
            )
        if transductive and not unseen_classes:
            raise ValueError(
                "MODEL.ZEGCLIP.TRANSDUCTIVE needs the training set's unseen classes; the "
                "training dataset declares none (metadata 'unseen_classes')"
            )
        # the teacher comes first, so shared tower parameters are named after it
        self.teacher = teacher
        self.backbone = backbone
        self.decoder = decoder
        self.templates = check_templates(templates, "MODEL.CLIP.TEMPLATES")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.ignore_value = int(ignore_value)
        self.vocabulary = tuple(vocabulary) if vocabulary is not None else None
        self.seen_classes = frozenset(_norm(n) for n in seen_classes)
        self.unseen_classes = frozenset(_norm(n) for n in unseen_classes)
        self.calibration = float(calibration)
        self.focal_weight = float(focal_weight)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.dice_weight = float(dice_weight)
        self.deep_supervision = bool(deep_supervision)
        self.ignore_as_negative = bool(ignore_as_negative)
        self.transductive = bool(transductive)
        self.transductive_start_iter = int(transductive_start_iter)
        self.transductive_pixels = transductive_pixels
        self.bg_embed = (
            LearnedBackground(background_class, teacher.embed_dim)
            if background_class is not None
            else None
        )
        self.inference_mode = inference_mode
        self.slide_window = tuple(int(v) for v in slide_window)
        self.slide_stride = tuple(int(v) for v in slide_stride)
        d, b = int(size_divisibility), int(backbone.size_divisibility or 0)
        self.size_divisibility = math.lcm(max(d, 1), max(b, 1))

    @classmethod
    def from_config(cls, cfg) -> Dict:
        zcfg = cfg.MODEL.ZEGCLIP
        setting = cfg.MODEL.OVSEG.ZERO_SHOT_SETTING
        if zcfg.TRANSDUCTIVE:
            # "ignore" pseudo-labels the ignored pixels, which hold the unseen classes only in
            # the transductive setting; "unseen" needs the unseen labels to find their pixels
            needed = "transductive" if zcfg.TRANSDUCTIVE_PIXELS == "ignore" else "none"
            if setting != needed:
                raise ValueError(
                    f"MODEL.ZEGCLIP.TRANSDUCTIVE_PIXELS={zcfg.TRANSDUCTIVE_PIXELS!r} needs "
                    f"MODEL.OVSEG.ZERO_SHOT_SETTING {needed!r}, got {setting!r}"
                )
        teacher = build_clip_teacher(cfg)
        backbone = build_backbone(cfg, teacher=teacher)
        decoder = ZegCLIPDecoder(
            teacher.embed_dim,
            num_layers=zcfg.DECODER_LAYERS,
            num_heads=zcfg.DECODER_HEADS,
            dropout=zcfg.DECODER_DROPOUT,
            self_attention=zcfg.DECODER_SELF_ATTENTION,
            init=zcfg.DECODER_INIT,
        )
        ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        if cfg.DATASETS.TRAIN:
            ignore = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", ignore)
        seen, unseen = _training_names(cfg)
        background = zcfg.BACKGROUND_CLASS if zcfg.BG_EMBED else None
        if background is not None:
            LearnedBackground.check_trained(
                "MODEL.ZEGCLIP", background, seen, "among the training set's seen classes"
            )
        if setting == "none" and not zcfg.TRANSDUCTIVE:
            seen, unseen = seen + unseen, ()  # fully supervised: every class is seen
        elif setting == "inductive":
            unseen = ()  # not in the training vocabulary
        return {
            "backbone": backbone,
            "decoder": decoder,
            "teacher": teacher,
            "templates": get_templates(cfg.MODEL.CLIP.TEMPLATES),
            "pixel_mean": teacher.pixel_mean.flatten().tolist(),
            "pixel_std": teacher.pixel_std.flatten().tolist(),
            "ignore_value": ignore,
            "vocabulary": default_test_vocabulary(cfg),
            "seen_classes": seen,
            "unseen_classes": unseen,
            "calibration": zcfg.CALIBRATION,
            "focal_weight": zcfg.FOCAL_WEIGHT,
            "focal_alpha": zcfg.FOCAL_ALPHA,
            "focal_gamma": zcfg.FOCAL_GAMMA,
            "dice_weight": zcfg.DICE_WEIGHT,
            "deep_supervision": zcfg.DEEP_SUPERVISION,
            "ignore_as_negative": zcfg.IGNORE_AS_NEGATIVE,
            "transductive": zcfg.TRANSDUCTIVE,
            "transductive_start_iter": zcfg.TRANSDUCTIVE_START_ITER,
            "transductive_pixels": zcfg.TRANSDUCTIVE_PIXELS,
            "background_class": background,
            "inference_mode": cfg.TEST.INFERENCE_MODE,
            "slide_window": tuple(cfg.TEST.SLIDE_WINDOW),
            "slide_stride": tuple(cfg.TEST.SLIDE_STRIDE),
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ building blocks
    def text_embeddings(self, names: Sequence[str]) -> Tensor:
        """(K, D) L2-normalised text embeddings (the teacher memoises them); the background's
        learnable one with ``background_class``."""
        text = self.teacher.encode_text(tuple(names), self.templates).to(self.device)
        if self.bg_embed is not None:
            text = F.normalize(self.bg_embed(text, names), dim=-1)
        return text

    def _flags(self, names: Sequence[str], which: frozenset) -> Tensor:
        return torch.tensor([_norm(n) in which for n in names], device=self.device)

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
        return self.decoder(patch, glob, F.normalize(text, dim=-1))

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
        scores = logits[:, :, :h, :w].float().sigmoid()
        if seen is not None and self.calibration and not self.transductive:
            scores = calibrate(scores, seen, self.calibration)
        return scores

    def _normalize(self, images: List[Tensor]) -> List[Tensor]:
        return [(x.to(self.device).float() - self.pixel_mean) / self.pixel_std for x in images]

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[dict]):
        """
        Args:
            batched_inputs (list[dict]): detectron2 inputs (see the class docstring).

        Returns:
            training: a dict of losses ("loss_focal", "loss_dice" for the last layer,
            "loss_focal_<i>", "loss_dice_<i>" for layer i before it); eval: per input
            {"sem_seg": (K, height, width) scores over its K names}.
        """
        if self.training:
            return self._losses(batched_inputs)
        return self._inference(batched_inputs)

    def self_training_active(self) -> bool:
        """Whether this training step uses pseudo-labels (outside a trainer: when enabled)."""
        if not self.transductive:
            return False
        it = _current_iteration()
        return it is None or it >= self.transductive_start_iter

    def _losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        images, targets = training_batch(
            batched_inputs, self._normalize, self.size_divisibility, self.ignore_value, self.device
        )
        size = tuple(images.tensor.shape[-2:])
        feats = self.backbone(images.tensor)
        patch = F.normalize(feats["patch_tokens"], dim=1)
        glob = F.normalize(feats["global_token"], dim=-1)

        num_layers = len(self.decoder.layers)
        layers = range(num_layers) if self.deep_supervision else [num_layers - 1]
        focal = {i: patch.new_zeros(()) for i in layers}
        dice = {i: patch.new_zeros(()) for i in layers}
        num_masks = patch.new_zeros(())
        groups = group_inputs([input_vocabulary(x) for x in batched_inputs])
        for names, idx in groups.items():
            target = targets[idx]
            check_labels(target, len(names), self.ignore_value, [batched_inputs[i] for i in idx])
            text = F.normalize(self.text_embeddings(names), dim=-1)
            masks = self.decoder(patch[idx], glob[idx], text)
            masks = [
                F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in masks
            ]
            target, classes = self._targets(target, masks[-1], names)
            for i in layers:
                f, d, n = mask_losses(
                    masks[i],
                    target,
                    ignore_value=self.ignore_value,
                    classes=classes,
                    ignore_as_negative=self.ignore_as_negative,
                    alpha=self.focal_alpha,
                    gamma=self.focal_gamma,
                )
                focal[i], dice[i] = focal[i] + f, dice[i] + d
            num_masks = num_masks + n
        # as the official criterion: normalised by the non-empty masks of all processes
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num_masks)
            num_masks = num_masks / comm.get_world_size()
        num_masks = num_masks.clamp(min=1)
        losses = {}
        for i in layers:
            suffix = "" if i == num_layers - 1 else f"_{i}"
            losses[f"loss_focal{suffix}"] = self.focal_weight * focal[i] / num_masks
            losses[f"loss_dice{suffix}"] = self.dice_weight * dice[i] / num_masks
        return losses

    def _targets(
        self, target: Tensor, logits: Tensor, names: Tuple[str, ...]
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Training targets of a vocabulary group, and the classes that get a loss."""
        if not self.unseen_classes:
            return target, None
        unseen = self._flags(names, self.unseen_classes)
        if self.self_training_active():
            pseudo = transductive_targets(
                target,
                logits,
                unseen,
                ignore_value=self.ignore_value,
                pixels=self.transductive_pixels,
            )
            return pseudo, None
        if self.transductive_pixels == "unseen":
            # before self-training, the unseen classes' labels only mark pixels to ignore
            idx = torch.nonzero(unseen).flatten()
            target = target.masked_fill(torch.isin(target, idx), self.ignore_value)
        return target, ~unseen

    def _inference(self, batched_inputs: List[dict]) -> List[Dict[str, Tensor]]:
        def predictor(names):
            text, seen = self.text_embeddings(names), self._flags(names, self.seen_classes)
            return lambda x: self.predict(x, text, seen)

        return vocabulary_inference(self, batched_inputs, predictor)
