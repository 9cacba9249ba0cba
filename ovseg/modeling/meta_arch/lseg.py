# Follows the official LSeg (isl-org/lang-seg modules/models/lseg_net.py: logits, spatial
# regularisation blocks), re-written; backbone and DPT decoder are detectron2 modules.
"""LSeg: a dense image encoder trained so each pixel's embedding matches CLIP text embeddings.

A backbone (a trainable copy of CLIP's ViT image tower, a ResNet, or a timm ViT) feeds a DPT
decoder whose 1x1 head outputs D-dimensional pixel embeddings (D = the CLIP text dimension).
Logits are ``logit_scale * cosine(pixel, text)`` against the frozen teacher's text embeddings
of the input's vocabulary, optionally refined by spatial-regularisation blocks, upsampled to
the input size and trained with per-pixel softmax cross-entropy. Any vocabulary works at test
time; the model returns softmax probabilities over it.
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

from ...clip import CLIPTeacher, build_clip_teacher, get_templates
from ...vocab import check_templates
from ..backbone import build_backbone
from ..heads import DPTDecoder
from ..inference import INFERENCE_MODES
from .common import (
    check_labels,
    default_test_vocabulary,
    group_inputs,
    input_vocabulary,
    training_batch,
    vocabulary_inference,
)

__all__ = ["LSeg", "SPATIAL_REGULARIZATIONS", "SpatialRegularization"]

# "depthwise": one 3x3 conv shared by every label's logit map; "bottleneck": the same plus
# the per-pixel max over labels (the official arch_option 2 and 1)
SPATIAL_REGULARIZATIONS = ("none", "depthwise", "bottleneck")
_ACTIVATIONS = {"relu": nn.ReLU, "lrelu": nn.LeakyReLU, "tanh": nn.Tanh}


class SpatialRegularization(nn.Module):
    """LSeg's spatial-regularisation blocks on the (B, K, h, w) word-pixel logit map.

    One 3x3 convolution with a single input and output channel is applied to every label's
    map, so the block works for any number of labels. It runs ``depth`` times (the same
    weights, as the official code), with the activation after every pass but the last.
    """

    def __init__(self, kind: str = "depthwise", depth: int = 2, activation: str = "lrelu"):
        """
        Args:
            kind (str): "depthwise" or "bottleneck" (adds the max over labels before the
                activation).
            depth (int): passes, >= 1.
            activation (str): "relu", "lrelu" or "tanh".
        """
        super().__init__()
        if kind not in SPATIAL_REGULARIZATIONS[1:]:
            raise ValueError(
                f"spatial regularisation {kind!r} (MODEL.LSEG.SPATIAL_REG) is not one of "
                f"{list(SPATIAL_REGULARIZATIONS)}"
            )
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation {activation!r} (MODEL.LSEG.SPATIAL_REG_ACTIVATION) is not one of "
                f"{sorted(_ACTIVATIONS)}"
            )
        if int(depth) < 1:
            raise ValueError(f"MODEL.LSEG.SPATIAL_REG_DEPTH must be >= 1, got {depth}")
        self.kind = kind
        self.depth = int(depth)
        self.conv = nn.Conv2d(1, 1, kernel_size=3, padding=1)
        self.activation = _ACTIVATIONS[activation]()

    def forward(self, logits: Tensor) -> Tensor:
        b, k, h, w = logits.shape
        x = logits
        for i in range(self.depth):
            y = self.conv(x.reshape(b * k, 1, h, w)).view(b, k, h, w)
            if self.kind == "bottleneck":
                y = y + x.amax(dim=1, keepdim=True)
            x = self.activation(y) if i < self.depth - 1 else y
        return x


@META_ARCH_REGISTRY.register()
class LSeg(nn.Module):
    """Language-driven semantic segmentation over the shared frozen CLIP text encoder.

    Training inputs need "image", "sem_seg" (labels index their "vocabulary") and
    "vocabulary"; test inputs need "image" and optionally "height"/"width" and "vocabulary"
    (default: the model's). The teacher's weights are not part of the checkpoint.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        decoder: nn.Module,
        teacher: CLIPTeacher,
        templates: Sequence[str] = ("{}",),
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        logit_scale: float = 1 / 0.07,
        learnable_logit_scale: bool = False,
        spatial_reg: Optional[nn.Module] = None,
        ignore_value: int = 255,
        vocabulary: Optional[Sequence[str]] = None,
        inference_mode: str = "whole",
        slide_window: Tuple[int, int] = (512, 512),
        slide_stride: Tuple[int, int] = (426, 426),
    ):
        """
        Args:
            backbone (Backbone): image encoder; its outputs feed ``decoder``.
            decoder (nn.Module): backbone outputs -> (B, D, h, w) pixel embeddings.
            teacher (CLIPTeacher): the frozen CLIP; only its text encoder is used.
            templates: prompt templates, each with one "{}" (paper: the bare name).
            pixel_mean, pixel_std: the backbone's input normalisation, 0-255 scale.
            logit_scale (float): the temperature multiplying cosines (official: 1/0.07).
            learnable_logit_scale (bool): learn it (in log space, capped at 100 as CLIP).
            spatial_reg (nn.Module, optional): refinement of the (B, K, h, w) logits.
            ignore_value (int): label of ignored pixels.
            vocabulary: names for test inputs without "vocabulary"; None = they must have one.
            inference_mode (str): "whole" or "slide".
            slide_window, slide_stride ((int, int)): sliding-window size and stride.
        """
        super().__init__()
        if inference_mode not in INFERENCE_MODES:
            raise ValueError(
                f"inference mode {inference_mode!r} (TEST.INFERENCE_MODE) is not one of "
                f"{list(INFERENCE_MODES)}"
            )
        if not logit_scale > 0:
            raise ValueError(f"MODEL.LSEG.LOGIT_SCALE must be positive, got {logit_scale}")
        self.backbone = backbone
        self.decoder = decoder
        self.teacher = teacher
        self.templates = check_templates(templates, "MODEL.LSEG.TEMPLATES")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        log_scale = torch.tensor(math.log(logit_scale))
        if learnable_logit_scale:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale, False)
        self.spatial_reg = spatial_reg
        self.ignore_value = int(ignore_value)
        self.vocabulary = tuple(vocabulary) if vocabulary is not None else None
        self.inference_mode = inference_mode
        self.slide_window = tuple(int(v) for v in slide_window)
        self.slide_stride = tuple(int(v) for v in slide_stride)
        # inputs are padded (bottom/right, with the pixel mean) only as far as the backbone
        # needs; training crops already come padded to INPUT.SIZE_DIVISIBILITY by the mapper
        self.size_divisibility = max(int(backbone.size_divisibility or 0), 1)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        lcfg = cfg.MODEL.LSEG
        teacher = build_clip_teacher(cfg)
        backbone = build_backbone(cfg, teacher=teacher)
        decoder = DPTDecoder(cfg, backbone.output_shape(), out_channels=teacher.embed_dim)
        spatial_reg = None
        if lcfg.SPATIAL_REG != "none":
            spatial_reg = SpatialRegularization(
                lcfg.SPATIAL_REG, lcfg.SPATIAL_REG_DEPTH, lcfg.SPATIAL_REG_ACTIVATION
            )
        ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        if cfg.DATASETS.TRAIN:
            ignore = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", ignore)
        templates = lcfg.TEMPLATES or get_templates(cfg.MODEL.CLIP.TEMPLATES)
        # a CLIP-initialised backbone must see CLIP's normalisation, not cfg's constants
        mean = getattr(backbone, "pixel_mean", None) or cfg.MODEL.PIXEL_MEAN
        std = getattr(backbone, "pixel_std", None) or cfg.MODEL.PIXEL_STD
        return {
            "backbone": backbone,
            "decoder": decoder,
            "teacher": teacher,
            "templates": templates,
            "pixel_mean": mean,
            "pixel_std": std,
            "logit_scale": lcfg.LOGIT_SCALE,
            "learnable_logit_scale": lcfg.LEARNABLE_LOGIT_SCALE,
            "spatial_reg": spatial_reg,
            "ignore_value": ignore,
            "vocabulary": default_test_vocabulary(cfg),
            "inference_mode": cfg.TEST.INFERENCE_MODE,
            "slide_window": tuple(cfg.TEST.SLIDE_WINDOW),
            "slide_stride": tuple(cfg.TEST.SLIDE_STRIDE),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=100.0)

    # ------------------------------------------------------------------ building blocks
    def text_embeddings(self, names: Sequence[str]) -> Tensor:
        """(K, D) L2-normalised text embeddings (the teacher memoises them)."""
        return self.teacher.encode_text(tuple(names), self.templates).to(self.device)

    def pixel_embeddings(self, images: Tensor) -> Tensor:
        """(B, D, h, w) L2-normalised pixel embeddings of normalised (B, 3, H, W) images."""
        return F.normalize(self.decoder(self.backbone(images)), dim=1)

    def logits(self, embeddings: Tensor, text: Tensor, size: Tuple[int, int]) -> Tensor:
        """Scaled cosine logits, spatially regularised, upsampled to ``size``.

        Args:
            embeddings (Tensor): (B, D, h, w) normalised pixel embeddings.
            text (Tensor): (K, D) normalised text embeddings.
            size ((int, int)): output (H, W).

        Returns:
            Tensor: (B, K, H, W).
        """
        text = text.to(dtype=embeddings.dtype)
        out = self.logit_scale * torch.einsum("bdhw,kd->bkhw", embeddings, text)
        if self.spatial_reg is not None:
            out = self.spatial_reg(out)
        # align_corners=True as the official output upsampling
        return F.interpolate(out, size=size, mode="bilinear", align_corners=True)

    def _normalize(self, images: List[Tensor]) -> List[Tensor]:
        return [(x.to(self.device).float() - self.pixel_mean) / self.pixel_std for x in images]

    def predict(self, images: Tensor, text: Tensor) -> Tensor:
        """Softmax probabilities of normalised images, at their size.

        Args:
            images (Tensor): (b, 3, h, w) normalised images (zero = the pixel mean).
            text (Tensor): (K, D) text embeddings.

        Returns:
            Tensor: (b, K, h, w).
        """
        h, w = images.shape[-2:]
        m = self.size_divisibility
        padded = F.pad(images, (0, -w % m, 0, -h % m))
        logits = self.logits(self.pixel_embeddings(padded), text, tuple(padded.shape[-2:]))
        return logits[:, :, :h, :w].float().softmax(dim=1)

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[dict]):
        """
        Args:
            batched_inputs (list[dict]): detectron2 inputs (see the class docstring).

        Returns:
            training: {"loss_sem_seg": Tensor}; eval: per input {"sem_seg": (K, height,
            width) probabilities over its K names}.
        """
        if self.training:
            return self._losses(batched_inputs)
        return self._inference(batched_inputs)

    def _losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        images, targets = training_batch(
            batched_inputs, self._normalize, self.size_divisibility, self.ignore_value, self.device
        )
        size = tuple(images.tensor.shape[-2:])
        embeddings = self.pixel_embeddings(images.tensor)
        groups = group_inputs([input_vocabulary(x) for x in batched_inputs])
        total = embeddings.new_zeros(())
        count = 0
        for names, idx in groups.items():
            target = targets[idx]
            check_labels(target, len(names), self.ignore_value, [batched_inputs[i] for i in idx])
            logits = self.logits(embeddings[idx], self.text_embeddings(names), size)
            total = total + F.cross_entropy(
                logits.float(), target, ignore_index=self.ignore_value, reduction="sum"
            )
            count += int((target != self.ignore_value).sum())
        # a batch whose pixels are all ignored gives a zero loss (not NaN) that still
        # reaches every parameter, as DDP needs
        return {"loss_sem_seg": total / max(count, 1)}

    def _inference(self, batched_inputs: List[dict]) -> List[Dict[str, Tensor]]:
        return vocabulary_inference(self, batched_inputs)
