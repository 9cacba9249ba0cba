# Follows the official LSeg (isl-org/lang-seg modules/models/lseg_net.py: logits, spatial
# regularisation blocks), re-written; backbone and DPT decoder are detectron2-style modules.
"""LSeg: a dense image encoder trained so each pixel's embedding matches CLIP text embeddings.

A backbone (a trainable copy of CLIP's ViT image tower, a ResNet, or a timm ViT) feeds a
dense head (MODEL.DENSE_HEAD.NAME; the DPT decoder) whose 1x1 output layer gives
D-dimensional pixel embeddings (D = the CLIP text dimension).
Logits are ``logit_scale * cosine(pixel, text)`` against the frozen teacher's text embeddings
of the input's vocabulary, optionally refined by spatial-regularisation blocks, upsampled to
the input size and trained with per-pixel softmax cross-entropy. Any vocabulary works at test
time; the model returns softmax probabilities over it.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone

from ...clip import CLIPTeacher, build_clip_teacher, get_templates
from ...utils.choices import check_choice
from ..backbone import build_backbone
from ..heads import build_dense_head
from ..host_copy import batch_index
from ..losses import cross_entropy_per_image, cross_entropy_sum, per_image_mean
from ..text_classifier import TextClassifier, pixel_text_product
from .base import OpenVocabSegmentor

# how the cross-entropy is averaged (MODEL.LSEG.LOSS_NORMALIZATION)
LOSS_NORMALIZATIONS = ("pixels", "images")

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
class LSeg(OpenVocabSegmentor):
    """Language-driven semantic segmentation over the shared frozen CLIP text encoder.

    Inputs as :class:`OpenVocabSegmentor`; eval returns softmax probabilities over each
    input's vocabulary. The teacher's weights are not part of the checkpoint.
    """

    # "sem_seg" holds softmax probabilities
    sem_seg_scores = "probabilities"

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
        half_logits: bool = False,
        loss_normalization: str = "pixels",
        **kwargs,
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
            half_logits (bool): the pixel-text products in float16, as the official
                ``(logit_scale * image_features.half()) @ text.t()`` (``lseg_net.py:194``).
            loss_normalization (str): the cross-entropy's mean over every labelled pixel of
                the batch ("pixels") or over the images of each image's own ("images").
            kwargs: :class:`OpenVocabSegmentor`'s (vocabulary, ignore_value, inference_mode,
                slide_window, slide_stride).
        """
        # inputs are padded (bottom/right, with the pixel mean) only as far as the backbone
        # needs; training crops already come padded to INPUT.SIZE_DIVISIBILITY by the mapper
        super().__init__(
            teacher=teacher,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            size_divisibility=int(backbone.size_divisibility or 0),
            **kwargs,
        )
        self.backbone = backbone
        self.decoder = decoder
        self.classifier = TextClassifier(
            teacher,
            templates,
            logit_scale=logit_scale,
            learnable_logit_scale=learnable_logit_scale,
            prompt_names=self.prompt_names,
        )
        self.spatial_reg = spatial_reg
        self.half_logits = bool(half_logits)
        self.loss_normalization = check_choice(
            loss_normalization, LOSS_NORMALIZATIONS, "MODEL.LSEG.LOSS_NORMALIZATION"
        )
        self.loss_fn = self.group_loss  # MODEL.COMPILE(_LOSS) replaces it by its compiled form

    @classmethod
    def from_config(cls, cfg) -> Dict:
        lcfg = cfg.MODEL.LSEG
        teacher = build_clip_teacher(cfg)
        backbone = build_backbone(cfg, teacher=teacher)
        decoder = build_dense_head(cfg, backbone.output_shape(), out_channels=teacher.embed_dim)
        spatial_reg = None
        if lcfg.SPATIAL_REG != "none":
            spatial_reg = SpatialRegularization(
                lcfg.SPATIAL_REG, lcfg.SPATIAL_REG_DEPTH, lcfg.SPATIAL_REG_ACTIVATION
            )
        # a CLIP-initialised backbone must see CLIP's normalisation, not cfg's constants
        mean = getattr(backbone, "pixel_mean", None) or cfg.MODEL.PIXEL_MEAN
        std = getattr(backbone, "pixel_std", None) or cfg.MODEL.PIXEL_STD
        return {
            **OpenVocabSegmentor.base_config(cfg),
            "backbone": backbone,
            "decoder": decoder,
            "teacher": teacher,
            "templates": get_templates(cfg.MODEL.CLIP.TEMPLATES),
            "pixel_mean": mean,
            "pixel_std": std,
            "logit_scale": cfg.MODEL.OVSEG.LOGIT_SCALE,
            "learnable_logit_scale": cfg.MODEL.OVSEG.LEARNABLE_LOGIT_SCALE,
            "spatial_reg": spatial_reg,
            "half_logits": lcfg.HALF_LOGITS,
            "loss_normalization": lcfg.LOSS_NORMALIZATION,
        }

    @property
    def templates(self) -> Tuple[str, ...]:
        return self.classifier.templates

    @property
    def logit_scale(self):
        return self.classifier.logit_scale

    # ------------------------------------------------------------------ building blocks
    def text_embeddings(self, names: Sequence[str]) -> Tensor:
        """(K, D) L2-normalised text embeddings (the teacher memoises them)."""
        return self.classifier(names)

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
        if self.half_logits:  # the scale times the fp16 features, then the fp16 product
            scaled = self.classifier.logit_scale * embeddings.half()
            # in fp16 under any autocast (bf16's would cast the operands again)
            with torch.autocast(embeddings.device.type, enabled=False):
                out = pixel_text_product(scaled.half(), text.half()).float()
        else:
            out = self.classifier.logits(embeddings, text)
        if self.spatial_reg is not None:
            out = self.spatial_reg(out)
        # align_corners=True as the official output upsampling
        return F.interpolate(out, size=size, mode="bilinear", align_corners=True)

    def group_loss(
        self, features: Tensor, text: Tensor, target: Tensor, size: Tuple[int, int]
    ) -> Tuple[Tensor, Tensor]:
        """The cross-entropy of one vocabulary group, from the head's output on: one function
        that MODEL.COMPILE_LOSS compiles (on CUDA by default), fusing its passes over the
        full-size (B, D, h, w) embeddings (eager, their normalisation and its backward alone
        read and write them some 12 times).

        Args:
            features (Tensor): (B, D, h, w) the dense head's output, not normalised.
            text (Tensor): (K, D) normalised text embeddings.
            target (Tensor): (B, H, W) labels at ``size``.
            size ((int, int)): (H, W), the logits' size.

        Returns:
            (Tensor, Tensor): the loss sums and labelled-pixel counts, of the group or of
            each image (``loss_normalization``).
        """
        logits = self.logits(F.normalize(features, dim=1), text, size)
        ce = cross_entropy_per_image if self.loss_normalization == "images" else cross_entropy_sum
        return ce(logits, target, self.ignore_value)

    def predict_logits(self, images: Tensor, text: Tensor) -> Tensor:
        """Logits of normalised images, at their size.

        Args:
            images (Tensor): (b, 3, h, w) normalised images (zero = the pixel mean).
            text (Tensor): (K, D) text embeddings.

        Returns:
            Tensor: (b, K, h, w) float32.
        """
        h, w = images.shape[-2:]
        m = self.size_divisibility
        padded = F.pad(images, (0, -w % m, 0, -h % m))
        logits = self.logits(self.pixel_embeddings(padded), text, tuple(padded.shape[-2:]))
        return logits[:, :, :h, :w].float()

    def predict(self, images: Tensor, text: Tensor) -> Tensor:
        """Softmax probabilities of normalised (b, 3, h, w) images: (b, K, h, w)."""
        return self.predict_logits(images, text).softmax(dim=1)

    def logit_predictor(self, names: Tuple[str, ...]):
        text = self.text_embeddings(names)
        return lambda x: self.predict_logits(x, text)

    def scores_from_logits(self, logits: Tensor) -> Tensor:
        return logits.softmax(dim=1)

    # ------------------------------------------------------------------ training
    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        """{"loss_sem_seg"}: per-pixel softmax cross-entropy over each input's vocabulary,
        averaged per ``loss_normalization``."""
        images, targets = self.training_batch(batched_inputs)
        size = tuple(images.tensor.shape[-2:])
        features = self.decoder(self.backbone(images.tensor))
        sums, counts = [], []
        for names, idx in self.vocabulary_groups(batched_inputs).items():
            idx = batch_index(idx, len(batched_inputs), features.device)
            text = self.text_embeddings(names)
            loss, n = self.loss_fn(features[idx], text, targets[idx], size)
            sums.append(loss.reshape(-1))
            counts.append(n.reshape(-1))
        sums, counts = torch.cat(sums), torch.cat(counts)
        # a batch whose pixels are all ignored gives a zero loss (not NaN) that still
        # reaches every parameter, as DDP needs
        if self.loss_normalization == "images":
            return {"loss_sem_seg": per_image_mean(sums, counts)}
        return {"loss_sem_seg": sums.sum() / counts.sum().clamp(min=1)}
