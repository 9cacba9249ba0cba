# Follows the official FreeSeg prompt-learning stage, ProposalClipClassifier
# (mask2former/proposal_classification.py:23-166), re-written on ovseg's teacher.
"""FreeSeg stage (a): learn the adaptive prompt tokens on ground-truth regions.

Each ground-truth mask of a training image is cut to its box, the pixels outside the mask
take the CLIP mean, the crop is resized to CLIP's input size and embedded by the frozen image
tower; the loss is the cross-entropy of ``100 * cos(crop, prompted class text)`` over the
sample's vocabulary (``proposal_classification.py:109-123``). Only the prompt tokens train;
each region is scored with its input's ``"task"`` prompt (the official stage uses the first
input's task for the whole batch, ``:99-107``: MODEL.FREESEG.PROMPT_ONE_TASK_PER_BATCH);
inputs without a task share one drawn at random. The checkpoint holds only
``prompt.class_context`` and ``prompt.task_context`` (the teacher is never saved); the main
FreeSeg stage reads them with
:func:`~ovseg.modeling.freeseg.load_prompt_tokens` (MODEL.FREESEG.PROMPT_CHECKPOINT).

Data: with MODEL.FREESEG.PROMPT_SAMPLES_PER_CLASS > 0 the training set is the official one
region per record, at most N per class and task (ovseg.data.region_sampling,
``data/build.py:389-460``); a record's ``"region_class"`` picks its target here. Without it
a sample brings all its regions. Difference: the official mapper crops the region's box and
applies a random resized crop (``mask_former_binary_full_dataset_mapper.py:66-72``); here the
crop happens in the model on the mapped image. In eval
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
from ...vocab import normalize_name
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
        one_task_per_batch: bool = False,
        **base,
    ):
        """
        Args:
            teacher (CLIPTeacher): the frozen CLIP.
            prompt (AdaptivePromptLearner): the prompts to learn (their tokens train).
            temperature (float): the cosine logit scale (official 100).
            mask_threshold (float): a ground-truth mask pixel is inside where > this.
            one_task_per_batch (bool): score every region with the first input's task
                (official ``:99-107``); False = each input's own task.
            base: :class:`OpenVocabSegmentor`'s arguments.
        """
        super().__init__(teacher=teacher, **base)
        self.prompt = prompt
        self.temperature = float(temperature)
        self.mask_threshold = float(mask_threshold)
        self.one_task_per_batch = bool(one_task_per_batch)

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
            "one_task_per_batch": fs.PROMPT_ONE_TASK_PER_BATCH,
        }

    # ------------------------------------------------------------------ training
    def input_task(self, x: dict) -> str:
        """The task text of one input: its ``"task"`` (official key or text), else a random
        one (``proposal_classification.py:99-107``)."""
        task = x.get("task")
        if task is None:
            return random.choice(self.prompt.task_names)
        return TASK_ALIASES.get(task, task)

    def batch_tasks(self, batched_inputs: List[dict]) -> List[str]:
        """Per input, the task text its regions are scored with: its own, or with
        ``one_task_per_batch`` (official) the first input's for all; inputs without a task
        share one drawn at random."""
        if self.one_task_per_batch or all("task" not in x for x in batched_inputs):
            return [self.input_task(batched_inputs[0])] * len(batched_inputs)
        if any("task" not in x for x in batched_inputs):
            raise ValueError("either every input of a batch has a 'task' or none has")
        return [self.input_task(x) for x in batched_inputs]

    def input_targets(self, x: dict, names: Sequence[str]):
        """(masks (N, H, W), classes (N,)) of one input: every ground-truth region, or for a
        region record (``"region_class"``, ovseg.data.region_sampling) only its region,
        one union mask for a ``sem_seg`` record."""
        inst = x.get("instances")
        if inst is None:
            raise ValueError(
                f"Training input {x.get('file_name', '')!r} has no 'instances'; the prompt "
                "stage needs mask targets (INPUT.DATASET_MAPPER_NAME ovseg_panoptic, "
                "ovseg_instance or ovseg_semantic_mask)"
            )
        masks, classes = getattr(inst.gt_masks, "tensor", inst.gt_masks), inst.gt_classes
        region = x.get("region_class")
        if region is None:
            return masks, classes
        normalized = [normalize_name(n) for n in names]
        if normalize_name(region) not in normalized:
            raise ValueError(f"region class {region!r} is not in the input's vocabulary")
        c = normalized.index(normalize_name(region))
        keep = classes == c
        masks, classes = masks[keep], classes[keep]
        if x.get("task") == "sem_seg" and len(classes) > 1:
            masks, classes = masks.any(dim=0, keepdim=True), classes[:1]
        return masks, classes

    def region_crops(self, batched_inputs: List[dict], names: Sequence[str]) -> tuple:
        """Crops (N, 3, h, w) in [0, 255] of the batch's ground-truth regions, their (N,)
        classes and the (N,) index of the input each comes from."""
        crops, classes, owner = [], [], []
        for i, x in enumerate(batched_inputs):
            masks, cls = self.input_targets(x, names)
            c, valid = mask_crops(
                x["image"].to(self.device),
                masks.to(self.device).float(),
                self.teacher.pixel_mean.flatten(),
                self.teacher.image_size,
                self.mask_threshold,
            )
            crops.append(c)
            classes.append(cls.to(self.device)[valid])
            owner += [i] * int(valid.sum())
        return torch.cat(crops), torch.cat(classes), owner

    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        groups = self.vocabulary_groups(batched_inputs)
        if len(groups) != 1:
            raise ValueError(
                f"the prompt stage trains on one vocabulary per batch, got {len(groups)}; "
                "train on one dataset"
            )
        names = next(iter(groups))
        tasks = self.batch_tasks(batched_inputs)
        crops, classes, owner = self.region_crops(batched_inputs, names)
        if crops.shape[0] == 0:  # no region in the batch: a zero loss keeps DDP in step
            return {"loss_prompt_cls": self.prompt(names, tasks[0]).sum() * 0.0}
        if int(classes.max()) >= len(names) or int(classes.min()) < 0:
            raise ValueError(
                f"region classes {sorted(set(classes.tolist()))} fall outside the "
                f"{len(names)}-name vocabulary"
            )
        image = self.teacher.encode_image(crops)
        region_tasks = [tasks[i] for i in owner]
        loss = image.new_zeros(())
        for task in dict.fromkeys(region_tasks):  # each task's regions with its prompts
            rows = torch.tensor([t == task for t in region_tasks], device=image.device)
            logits = self.temperature * image[rows] @ self.prompt(names, task).t()
            loss = loss + F.cross_entropy(logits, classes[rows], reduction="sum")
        return {"loss_prompt_cls": loss / len(region_tasks)}

    # ------------------------------------------------------------------ inference
    def text_embeddings(self, names: Sequence[str]) -> Tensor:
        with torch.no_grad():
            return self.prompt(names, self.prompt.task_names[0])

    def predict(self, images: Tensor, text: Tensor) -> Tensor:
        raw = images * self.pixel_std + self.pixel_mean
        dense = self.teacher.dense_embeddings(raw)
        logits = self.temperature * torch.einsum("bdhw,kd->bkhw", dense, text.to(dense.dtype))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
