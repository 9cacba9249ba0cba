"""XPM's box classifier against text embeddings and its class-agnostic mask head.

Follows XPM (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423), re-written, with CLIP text
in place of BERT and a temperature-scaled cosine in place of the raw dot product:

- the box predictor (``roi_heads/box_head/roi_box_predictors.py:17-24, 41, 50-51, 62-71``):
  the average-pooled res5 RoI feature is projected to the text space (init N(0, 0.01),
  bias 0) and scored against every class's text embedding; one class-agnostic box
  regression (init N(0, 0.001));
- the zero background row (``detector/st_generalized_rcnn.py:211-215``): background scores
  logit 0 whatever the feature (with XPM's LVIS quirk, the pseudo pass's background is a
  text embedding, "aerosol can"'s: :mod:`.lvis`);
- the classification loss (``roi_heads/box_head/loss.py:170-182``): CE with background
  weight 0.2, summed and divided by the number of sampled RoIs (not by the weight sum);
  the box loss (``loss.py:164-170``): smooth-L1 (beta 1) on positives, summed, divided by
  the same count;
- the mask head (``roi_heads/mask_head/roi_mask_predictors.py:21-35, 53-55``): 2x2
  deconvolution (stride 2) of the res5 features, ReLU, 1x1 conv to one class-agnostic
  channel; MSRA init, zero bias; the noise head of the student on the ReLU'd features.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .noise import MaskNoiseHead

__all__ = [
    "AgnosticMaskHead",
    "EmbeddingBoxPredictor",
    "embedding_logits",
    "weighted_classification_loss",
]


def embedding_logits(
    embeddings: Tensor,
    text: Tensor,
    logit_scale: Union[float, Tensor],
    background: Optional[Tensor] = None,
    *,
    dot: bool = False,
) -> Tensor:
    """``tau * cos(embedding, text)`` per class, then a background logit 0 last.

    Args:
        embeddings (Tensor): (R, D) projected RoI features.
        text (Tensor): (K, D) class text embeddings.
        logit_scale (float or Tensor): tau.
        background (Tensor, optional): (1, D): the background logit is ``tau * cos`` with it
            instead of 0 (XPM's LVIS quirk, :mod:`.lvis`).
        dot (bool): the official scoring instead: the raw dot product ``embedding . text``
            without normalisation or tau (``roi_box_predictors.py:65-67``; the BERT class
            embeddings of :mod:`.bert`).

    Returns:
        Tensor: (R, K + 1) logits; column K is the background.
    """
    if embeddings.shape[-1] != text.shape[-1]:
        raise ValueError(
            f"RoI embeddings of width {embeddings.shape[-1]} cannot be scored against text "
            f"embeddings of width {text.shape[-1]}: the projection must map to the CLIP width"
        )
    if background is not None:
        text = torch.cat([text, background.to(text)])
    if dot:
        logits = embeddings @ text.to(embeddings.dtype).t()
    else:
        cos = F.normalize(embeddings, dim=-1) @ F.normalize(text.to(embeddings.dtype), dim=-1).t()
        logits = logit_scale * cos
    if background is not None:
        return logits
    return torch.cat([logits, logits.new_zeros(len(logits), 1)], dim=1)


def weighted_classification_loss(
    logits: Tensor, labels: Tensor, background_weight: float
) -> Tensor:
    """``sum_i w(y_i) CE_i / R`` with ``w`` = ``background_weight`` for the background
    (the last class) and 1 otherwise.

    Args:
        logits (Tensor): (R, K + 1).
        labels (Tensor): (R,) long in [0, K]; K is the background.
        background_weight (float): the background class's weight (XPM: 0.2).
    """
    if labels.numel() == 0:
        return logits.sum() * 0.0
    weight = logits.new_ones(logits.shape[1])
    weight[-1] = background_weight
    return F.cross_entropy(logits, labels, weight=weight, reduction="sum") / labels.numel()


class EmbeddingBoxPredictor(nn.Module):
    """Pooled RoI features -> (text-space embedding, class-agnostic box deltas)."""

    def __init__(self, in_channels: int, embed_dim: int):
        """
        Args:
            in_channels (int): channels of the res5 RoI features.
            embed_dim (int): width of the text embeddings (the CLIP joint space).
        """
        super().__init__()
        self.projection = nn.Linear(in_channels, embed_dim)
        self.bbox_pred = nn.Linear(in_channels, 4)
        nn.init.normal_(self.projection.weight, std=0.01)
        nn.init.constant_(self.projection.bias, 0.0)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.constant_(self.bbox_pred.bias, 0.0)

    def forward(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            features (Tensor): (R, C, h, w) res5 RoI features.

        Returns:
            (Tensor, Tensor): (R, D) embeddings and (R, 4) box deltas.
        """
        pooled = features.mean(dim=(2, 3))
        return self.projection(pooled), self.bbox_pred(pooled)


class AgnosticMaskHead(nn.Module):
    """One class-agnostic mask logit map per RoI, and optionally its noise scale sigma."""

    def __init__(
        self,
        in_channels: int,
        conv_dim: int = 256,
        *,
        noise_head: bool = False,
        predictor_std: float = 0.0,
    ):
        """
        Args:
            in_channels (int): channels of the res5 RoI features.
            conv_dim (int): channels of the deconvolution (XPM: 256).
            noise_head (bool): add the student's :class:`MaskNoiseHead`.
            predictor_std (float): > 0: the logit predictor's weights are drawn from
                N(0, std) (the release's kaiming fan-out init of its two-output predictor is
                std 1); 0: kaiming fan-out of this one output (std sqrt(2)).
        """
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, conv_dim, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, 1, kernel_size=1)
        for layer in (self.deconv, self.predictor):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(layer.bias, 0.0)
        if predictor_std > 0:
            nn.init.normal_(self.predictor.weight, std=float(predictor_std))
        self.noise = MaskNoiseHead(conv_dim) if noise_head else None

    def forward(
        self, features: Tensor, with_sigma: bool = False
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """
        Args:
            features (Tensor): (R, C, h, w) res5 RoI features.
            with_sigma (bool): also predict sigma (needs the noise head).

        Returns:
            (Tensor, Tensor or None): (R, 2h, 2w) mask logits and (R, 2h, 2w) sigma.
        """
        hidden = F.relu(self.deconv(features))
        logits = self.predictor(hidden)[:, 0]
        if not with_sigma:
            return logits, None
        if self.noise is None:
            raise ValueError("sigma was asked of a mask head built without a noise head")
        return logits, self.noise(hidden)[:, 0]
