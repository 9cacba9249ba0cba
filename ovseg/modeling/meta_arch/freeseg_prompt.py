# Follows the official FreeSeg prompt-learning stage, ProposalClipClassifier
# (mask2former/proposal_classification.py:23-166), re-written on ovseg's teacher.
"""FreeSeg stage (a): learn the adaptive prompt tokens on ground-truth regions.

Inputs come from the ``ovseg_region`` mapper (:mod:`ovseg.data.dataset_mappers.region_crop`,
official ``mask_former_binary_full_dataset_mapper.py:65-93``): the crop of one region, its
mask and class. The pixels outside the mask take the CLIP mean and the frozen image tower
embeds the crop at its own size, its positional embeddings interpolated as the release's
CLIP (:mod:`ovseg.clip.native_size`, ``third_party/CLIP/clip/model.py:343-360``;
MODEL.FREESEG.PROMPT_NATIVE_SIZE False: resized to CLIP's input size); the loss is the
cross-entropy of
``100 * cos(crop, prompted class text)`` over the sample's vocabulary
(``proposal_classification.py:109-123``). Only the prompt tokens train; each region is
scored with its input's ``"task"`` prompt (the official stage uses the first input's task
for the whole batch, ``:99-107``: MODEL.FREESEG.PROMPT_ONE_TASK_PER_BATCH); inputs without a
task share one drawn at random. The checkpoint holds only ``prompt.class_context`` and
``prompt.task_context`` (the teacher is never saved); the main FreeSeg stage reads them with
:func:`~ovseg.modeling.freeseg.load_prompt_tokens` (MODEL.FREESEG.PROMPT_CHECKPOINT).

The fill: the CLIP mean colour, as the main stage's test-time crops; the release fills the
*normalised* image with the mean (``:113-116``), a raw colour of ``255 * (mean + std *
mean)``: MODEL.FREESEG.PROMPT_FILL_NORMALIZED_MEAN reproduces it.

In eval, region inputs (with ``"instances"``, e.g. a ``<split>_regions`` test set) give
``{"classification": (1, K) logits}`` each, scored by the region-classification evaluator
(official ``proposal_classification.py:160-162``, ``classification_evaluation.py``). Plain
images (the demo, pseudo-labelling: every meta-architecture segments) are segmented
densely: MaskCLIP-style patch embeddings of the frozen CLIP against the prompted text of
the first task.
"""

from __future__ import annotations

import random
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ...clip import CLIPTeacher, build_clip_teacher
from ...clip.native_size import encode_image_native
from ..freeseg import AdaptivePromptLearner
from ..host_copy import batch_index
from .base import OpenVocabSegmentor, group_inputs

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
        one_task_per_batch: bool = False,
        normalized_mean_fill: bool = False,
        native_size: bool = True,
        **base,
    ):
        """
        Args:
            teacher (CLIPTeacher): the frozen CLIP.
            prompt (AdaptivePromptLearner): the prompts to learn (their tokens train).
            temperature (float): the cosine logit scale (official 100).
            one_task_per_batch (bool): score every region with the first input's task
                (official ``:99-107``); False = each input's own task.
            normalized_mean_fill (bool): fill outside a region with the mean in normalised
                space (official ``:113-116``); False = the mean colour.
            native_size (bool): embed each crop at its own size (official,
                ``third_party/CLIP/clip/model.py:343-360``); False = resized to CLIP's input.
            base: :class:`OpenVocabSegmentor`'s arguments.
        """
        super().__init__(teacher=teacher, **base)
        self.prompt = prompt
        self.temperature = float(temperature)
        self.one_task_per_batch = bool(one_task_per_batch)
        self.normalized_mean_fill = bool(normalized_mean_fill)
        self.native_size = bool(native_size)

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
                prompt_names=args["prompt_names"],
            ),
            "temperature": fs.TEMPERATURE,
            "one_task_per_batch": fs.PROMPT_ONE_TASK_PER_BATCH,
            "normalized_mean_fill": fs.PROMPT_FILL_NORMALIZED_MEAN,
            "native_size": fs.PROMPT_NATIVE_SIZE,
        }

    # ------------------------------------------------------------------ regions
    def input_task(self, x: dict) -> str:
        """The task text of one input: its ``"task"`` (official key or text), else a random
        one (``proposal_classification.py:99-107``)."""
        task = x.get("task")
        if task is None:
            return random.choice(self.prompt.task_names)
        return TASK_ALIASES.get(task, task)

    def batch_tasks(self, batched_inputs: List[dict]) -> List[str]:
        """Per input, the task text its region is scored with: its own, or with
        ``one_task_per_batch`` (official) the first input's for all; inputs without a task
        share one drawn at random."""
        if self.one_task_per_batch or all("task" not in x for x in batched_inputs):
            return [self.input_task(batched_inputs[0])] * len(batched_inputs)
        if any("task" not in x for x in batched_inputs):
            raise ValueError("either every input of a batch has a 'task' or none has")
        return [self.input_task(x) for x in batched_inputs]

    def region_target(self, x: dict) -> Tuple[Tensor, int]:
        """(mask (h, w) bool, class) of a region input: one mask of the image's size."""
        inst = x.get("instances")
        if inst is None:
            raise ValueError(
                f"Input {x.get('file_name', '')!r} has no 'instances'; the prompt stage "
                "classifies region crops (INPUT.DATASET_MAPPER_NAME ovseg_region)"
            )
        masks = getattr(inst.gt_masks, "tensor", inst.gt_masks)
        if masks.shape[0] != 1 or tuple(masks.shape[-2:]) != tuple(x["image"].shape[-2:]):
            raise ValueError(
                f"Input {x.get('file_name', '')!r} has {masks.shape[0]} masks of size "
                f"{tuple(masks.shape[-2:])} for an image of {tuple(x['image'].shape[-2:])}; "
                "a region input holds one mask of its crop (mapper ovseg_region)"
            )
        return masks[0], int(inst.gt_classes[0])

    def fill_value(self) -> Tensor:
        """(3, 1, 1) raw colour of the pixels outside a region."""
        mean = self.teacher.pixel_mean.flatten().view(3, 1, 1)
        if self.normalized_mean_fill:  # official: the mean put into the normalised image
            return mean + self.teacher.pixel_std.flatten().view(3, 1, 1) * mean / 255.0
        return mean

    def region_embeddings(self, batched_inputs: List[dict]) -> Tensor:
        """(N, D) CLIP embeddings of the inputs' filled region crops."""
        fill = self.fill_value().to(self.device)
        crops = []
        for x in batched_inputs:
            mask, _ = self.region_target(x)
            image = self.to_device(x["image"]).float()
            crops.append(torch.where(self.to_device(mask).bool(), image, fill))
        out = [None] * len(crops)
        for idx in group_inputs([tuple(c.shape) for c in crops]).values():
            emb = self.embed_crops(torch.stack([crops[i] for i in idx]))
            for i, e in zip(idx, emb):
                out[i] = e
        return torch.stack(out)

    def embed_crops(self, crops: Tensor) -> Tensor:
        """(N, D) CLIP embeddings of same-sized filled crops (N, 3, h, w): at their own size
        (``native_size``, the release) or resized to CLIP's input."""
        if self.native_size:
            return encode_image_native(self.teacher, crops)
        return self.teacher.encode_image(crops)

    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        groups = self.vocabulary_groups(batched_inputs)
        if len(groups) != 1:
            raise ValueError(
                f"the prompt stage trains on one vocabulary per batch, got {len(groups)}; "
                "train on one dataset"
            )
        names = next(iter(groups))
        tasks = self.batch_tasks(batched_inputs)
        classes = [self.region_target(x)[1] for x in batched_inputs]
        if max(classes) >= len(names) or min(classes) < 0:
            raise ValueError(
                f"region classes {sorted(set(classes))} fall outside the {len(names)}-name "
                "vocabulary"
            )
        image = self.region_embeddings(batched_inputs)
        target = torch.tensor(classes, device=image.device)
        loss = image.new_zeros(())
        for task in dict.fromkeys(tasks):  # each task's regions with its prompts
            rows = torch.tensor([t == task for t in tasks], device=image.device)
            logits = self.temperature * image[rows] @ self.prompt(names, task).t()
            loss = loss + F.cross_entropy(logits, target[rows], reduction="sum")
        return {"loss_prompt_cls": loss / len(tasks)}

    def classify(self, batched_inputs: List[dict]) -> List[Dict[str, Tensor]]:
        """Per region input ``{"classification": (1, K) logits}`` over its vocabulary, with
        its task's prompts (no task: the first, as the release's semantic default)."""
        image = self.region_embeddings(batched_inputs)
        keys = [
            (self.input_vocabulary(x), TASK_ALIASES.get(x.get("task"), x.get("task")))
            for x in batched_inputs
        ]
        out: List[Dict[str, Tensor]] = [{} for _ in batched_inputs]
        for (names, task), idx in group_inputs(keys).items():
            with torch.no_grad():
                text = self.prompt(names, task or self.prompt.task_names[0])
            rows = image[batch_index(idx, len(batched_inputs), image.device)]
            logits = self.temperature * rows @ text.t()
            for i, row in zip(idx, logits):
                out[i]["classification"] = row[None]
        return out

    def forward(self, batched_inputs: List[dict]):
        """Training: the region loss. Eval: region inputs -> classification logits, plain
        images -> dense scores (see the module docstring)."""
        if self.training:
            return self.losses(batched_inputs)
        regions = ["instances" in x for x in batched_inputs]
        if all(regions):
            return self.classify(batched_inputs)
        if any(regions):
            raise ValueError("an eval batch mixes region inputs ('instances') and plain images")
        return self.inference(batched_inputs)

    # ------------------------------------------------------------------ inference
    def text_embeddings(self, names: Sequence[str]) -> Tensor:
        with torch.no_grad():
            return self.prompt(names, self.prompt.task_names[0])

    def predict(self, images: Tensor, text: Tensor) -> Tensor:
        raw = images * self.pixel_std + self.pixel_mean
        dense = self.teacher.dense_embeddings(raw)
        logits = self.temperature * torch.einsum("bdhw,kd->bkhw", dense, text.to(dense.dtype))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
