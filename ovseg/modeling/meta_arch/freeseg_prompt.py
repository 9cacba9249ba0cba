# Follows the official FreeSeg prompt-learning stage, ProposalClipClassifier
# (mask2former/proposal_classification.py:23-166), re-written on ovseg's teacher.
"""FreeSeg stage (a): learn the adaptive prompt tokens on ground-truth regions.

Each ground-truth mask of a training image is cut to its box, the pixels outside the mask
take the CLIP mean, the crop is resized to CLIP's input size and embedded by the frozen image
tower; the loss is the cross-entropy of ``100 * cos(crop, prompted class text)`` over the
sample's vocabulary (``proposal_classification.py:109-123``). Only the prompt tokens train;
the task of a batch is its inputs' ``"task"`` when they carry one (``:99-107``), else one of
the task names drawn at random. The checkpoint holds only ``prompt.class_context`` and
``prompt.task_context`` (the teacher is never saved); the main FreeSeg stage reads them with
:func:`~ovseg.modeling.freeseg.load_prompt_tokens` (MODEL.FREESEG.PROMPT_CHECKPOINT).

Differences from the official stage: the official data loader yields one region per sample
(one record per image and class or segment, up to 64 per class and task,
``data/build.py:389-460``) already cropped by its mapper with a random resized crop; here a
sample brings all its regions (``"instances"``) and the crop happens in the model. In eval
the model segments densely: MaskCLIP-style patch embeddings of the frozen CLIP against the
prompted text of the first task, so the learnt prompts can be evaluated like any student.
"""

from __future__ import annotations

import random
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ...clip import CLIPTeacher, build_clip_teacher
from ..freeseg import AdaptivePromptLearner, mask_crops
from .base import OpenVocabSegmentor

__all__ = ["FreeSegPromptLearner", "TASK_ALIASES"]

#: the official datasets' task keys -> task texts (``proposal_classification.py:99-107``)
TASK_ALIASES = {
    "sem_seg": "semantic segmentation.",
    "ins_seg": "instance segmentation.",
    "pan_seg": "panoptic segmentation.",
}


@META_ARCH_REGISTRY.register()
class FreeSegPromptLearner(OpenVocabSegmentor):
    """FreeSeg's prompt-learning stage (see the module docstring)."""

    sem_seg_scores = "logits"

    @configurable
    def __init__(
        self,
        *,
        teacher: CLIPTeacher,
        prompt: AdaptivePromptLearner,
        temperature: float = 100.0,
        mask_threshold: float = 0.5,
        **base,
    ):
        """
        Args:
            teacher (CLIPTeacher): the frozen CLIP.
            prompt (AdaptivePromptLearner): the prompts to learn (their tokens train).
            temperature (float): the cosine logit scale (official 100).
            mask_threshold (float): a ground-truth mask pixel is inside where > this.
            base: :class:`OpenVocabSegmentor`'s arguments.
        """
        super().__init__(teacher=teacher, **base)
        self.prompt = prompt
        self.temperature = float(temperature)
        self.mask_threshold = float(mask_threshold)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        fs = cfg.MODEL.FREESEG
        teacher = build_clip_teacher(cfg)
        args = OpenVocabSegmentor.base_config(cfg)
        return {
            **args,
            "teacher": teacher,
            # the official stage normalises with CLIP's statistics (``:32-37``)
            "pixel_mean": teacher.pixel_mean.flatten().tolist(),
            "pixel_std": teacher.pixel_std.flatten().tolist(),
            "prompt": AdaptivePromptLearner(
                teacher,
                task_names=fs.TASK_NAMES,
                num_class_tokens=fs.NUM_CLASS_PROMPT_TOKENS,
                num_task_tokens=fs.NUM_TASK_PROMPT_TOKENS,
                cache_by_task=fs.PROMPT_CACHE_BY_TASK,
            ),
            "temperature": fs.TEMPERATURE,
            "mask_threshold": fs.MASK_THRESHOLD,
        }

    # ------------------------------------------------------------------ training
    def batch_task(self, batched_inputs: List[dict]) -> str:
        """The task text of a batch: its inputs' common ``"task"``, else a random one."""
        tasks = [x.get("task") for x in batched_inputs]
        if all(t is None for t in tasks):
            return random.choice(self.prompt.task_names)
        if len(set(tasks)) != 1:
            raise ValueError(f"a batch must have one task, got {tasks}")
        task = tasks[0]
        return TASK_ALIASES.get(task, task)

    def region_crops(self, batched_inputs: List[dict]) -> tuple:
        """Crops (N, 3, h, w) in [0, 255] of every ground-truth region, and their (N,)
        classes."""
        crops, classes = [], []
        for x in batched_inputs:
            inst = x.get("instances")
            if inst is None:
                raise ValueError(
                    f"Training input {x.get('file_name', '')!r} has no 'instances'; the prompt "
                    "stage needs mask targets (INPUT.DATASET_MAPPER_NAME ovseg_panoptic, "
                    "ovseg_instance or ovseg_semantic_mask)"
                )
            masks = inst.gt_masks.to(self.device)
            c, valid = mask_crops(
                x["image"].to(self.device),
                masks.float(),
                self.teacher.pixel_mean.flatten(),
                self.teacher.image_size,
                self.mask_threshold,
            )
            crops.append(c)
            classes.append(inst.gt_classes.to(self.device)[valid])
        return torch.cat(crops), torch.cat(classes)

    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        groups = self.vocabulary_groups(batched_inputs)
        if len(groups) != 1:
            raise ValueError(
                f"the prompt stage trains on one vocabulary per batch, got {len(groups)}; "
                "train on one dataset"
            )
        names = next(iter(groups))
        crops, classes = self.region_crops(batched_inputs)
        text = self.prompt(names, self.batch_task(batched_inputs))
        if crops.shape[0] == 0:  # no region in the batch: a zero loss keeps DDP in step
            return {"loss_prompt_cls": text.sum() * 0.0}
        if int(classes.max()) >= len(names) or int(classes.min()) < 0:
            raise ValueError(
                f"region classes {sorted(set(classes.tolist()))} fall outside the "
                f"{len(names)}-name vocabulary"
            )
        image = self.teacher.encode_image(crops)
        logits = self.temperature * image @ text.t()
        return {"loss_prompt_cls": F.cross_entropy(logits, classes)}

    # ------------------------------------------------------------------ inference
    def text_embeddings(self, names: Sequence[str]) -> Tensor:
        with torch.no_grad():
            return self.prompt(names, self.prompt.task_names[0])

    def predict(self, images: Tensor, text: Tensor) -> Tensor:
        raw = images * self.pixel_std + self.pixel_mean
        dense = self.teacher.dense_embeddings(raw)
        logits = self.temperature * torch.einsum("bdhw,kd->bkhw", dense, text.to(dense.dtype))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
