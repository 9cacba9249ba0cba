"""DenseAdapter: a sixth student in one file, the worked example of docs/new_student.md.

The frozen CLIP teacher gives MaskCLIP's dense embeddings (``CLIPTeacher.dense_embeddings``).
A small residual adapter, trained on the seen classes' labels, moves each location's
embedding; logits are ``logit_scale * cosine(adapted, text)`` over the input's vocabulary,
upsampled cell by cell to the input. The adapter's last convolution starts at zero, so before
training the student predicts exactly what MaskCLIP without refinement predicts (same
embeddings, same temperature MODEL.CLIP.LOGIT_SCALE, same upsampling): training starts from
the teacher's zero-shot map and can only be measured against it.

The config names this module in EXTENSIONS; ``add_config`` adds MODEL.DENSE_ADAPTER.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ovseg.clip import CLIPTeacher, build_clip_teacher, get_templates
from ovseg.modeling.losses import cross_entropy_sum
from ovseg.modeling.meta_arch.base import OpenVocabSegmentor
from ovseg.modeling.text_classifier import TextClassifier

__all__ = ["DenseAdapter", "ResidualAdapter", "add_config"]


def add_config(cfg: CN) -> None:
    """MODEL.DENSE_ADAPTER: the adapter's size (load_config calls this before it reads the
    config, because the config names this module in EXTENSIONS)."""
    cfg.MODEL.DENSE_ADAPTER = CN()
    # channels of the adapter's 3x3 convolution
    cfg.MODEL.DENSE_ADAPTER.HIDDEN_DIM = 256
    # residual blocks, each x + conv1x1(relu(conv3x3(x))) with the 1x1 starting at zero
    cfg.MODEL.DENSE_ADAPTER.NUM_BLOCKS = 1


class ResidualAdapter(nn.Module):
    """(B, D, h, w) -> (B, D, h, w): residual blocks whose output convolutions start at
    zero, so a fresh adapter is the identity."""

    def __init__(self, dim: int, hidden_dim: int, num_blocks: int):
        super().__init__()
        if hidden_dim < 1 or num_blocks < 1:
            raise ValueError(
                "MODEL.DENSE_ADAPTER.HIDDEN_DIM and NUM_BLOCKS must be >= 1, got "
                f"{hidden_dim} and {num_blocks}"
            )
        self.blocks = nn.ModuleList()
        for _ in range(num_blocks):
            block = nn.Sequential(
                nn.Conv2d(dim, hidden_dim, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden_dim, dim, 1)
            )
            nn.init.zeros_(block[2].weight)
            nn.init.zeros_(block[2].bias)
            self.blocks.append(block)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


@META_ARCH_REGISTRY.register()
class DenseAdapter(OpenVocabSegmentor):
    """MaskCLIP's dense embeddings + a trained residual adapter (see the module docstring).

    Inputs and outputs as :class:`OpenVocabSegmentor`; eval returns logits over each input's
    vocabulary (a softmax gives the probabilities).
    """

    sem_seg_scores = "logits"

    @configurable
    def __init__(
        self,
        *,
        teacher: CLIPTeacher,
        adapter: nn.Module,
        templates: Sequence[str],
        logit_scale: float,
        **kwargs,
    ):
        """
        Args:
            teacher (CLIPTeacher): the frozen CLIP (dense image and text embeddings).
            adapter (nn.Module): (B, D, h, w) -> (B, D, h, w), the trained part.
            templates: prompt templates, each with one "{}".
            logit_scale (float): the temperature multiplying cosines.
            kwargs: :class:`OpenVocabSegmentor`'s (vocabulary, ignore_value, inference mode,
                test-time augmentation, ...).
        """
        # the teacher normalises images itself: inputs stay 0-255 minus CLIP's mean, so
        # padding (with zeros) is padding with the mean, as MaskCLIP's
        super().__init__(
            teacher=teacher,
            pixel_mean=teacher.pixel_mean.flatten().tolist(),
            pixel_std=[1.0, 1.0, 1.0],
            size_divisibility=teacher.stride,
            **kwargs,
        )
        self.adapter = adapter
        self.classifier = TextClassifier(
            teacher, templates, logit_scale=logit_scale, **self.text_options()
        )

    @classmethod
    def from_config(cls, cfg) -> Dict:
        teacher = build_clip_teacher(cfg)
        acfg = cfg.MODEL.DENSE_ADAPTER
        return {
            **OpenVocabSegmentor.base_config(cfg),
            "teacher": teacher,
            "adapter": ResidualAdapter(teacher.embed_dim, acfg.HIDDEN_DIM, acfg.NUM_BLOCKS),
            "templates": get_templates(cfg.MODEL.CLIP.TEMPLATES),
            "logit_scale": cfg.MODEL.CLIP.LOGIT_SCALE,
        }

    def text_embeddings(self, names: Sequence[str]) -> Tensor:
        """(K, D) text embeddings of ``names`` (the teacher memoises them)."""
        return self.classifier(names)

    def predict(self, images: Tensor, text: Tensor) -> Tensor:
        """Logits of (b, 3, h, w) network inputs over (K, D) text: (b, K, h, w)."""
        h, w = images.shape[-2:]
        m = self.size_divisibility
        padded = F.pad(images.float(), (0, -w % m, 0, -h % m)) + self.teacher.pixel_mean
        dense = self.teacher.dense_embeddings(padded)  # frozen, (b, D, h/s, w/s), unit length
        adapted = F.normalize(self.adapter(dense), dim=1)
        logits = self.classifier.logits(adapted, text)
        # cell (i, j) covers pixels [i*s, (i+1)*s): upsample onto the padded canvas, then crop
        gh, gw = logits.shape[-2:]
        s = self.teacher.stride
        logits = F.interpolate(logits, size=(gh * s, gw * s), mode="bilinear", align_corners=False)
        return logits[:, :, :h, :w]

    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        """{"loss_sem_seg"}: per-pixel softmax cross-entropy over each input's vocabulary,
        the mean over every labelled pixel of the batch."""
        images, targets = self.training_batch(batched_inputs)
        sums, counts = [], []
        for names, idx in self.vocabulary_groups(batched_inputs).items():
            logits = self.predict(images.tensor[idx], self.text_embeddings(names))
            loss, n = cross_entropy_sum(logits, targets[idx], self.ignore_value)
            sums.append(loss)
            counts.append(n)
        return {"loss_sem_seg": sum(sums) / sum(counts).clamp(min=1)}
