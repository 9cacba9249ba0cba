# Follows the official FreeSeg OpenVocabulary meta-architecture (mask2former/
# open_vocabulary_model.py:35-655 with heads/open_transformer_predictor.py and
# clip_adapter/adapter.py), re-written on ovseg's shared modules.
"""FreeSeg: one mask-classification model for semantic, instance and panoptic segmentation,
told its task by adaptive prompts.

backbone -> MSDeformAttn pixel decoder -> text/visual interaction (the 3 multi-scale maps and
the mask features attend to the task-prompted class texts plus the no-object embedding) ->
masked-attention decoder whose class head scores ``100 * cos(query, [text; no-object])``.

Training: each forward draws one task (``random.choice``) among those the batch supports
(its inputs' ``"task"`` or MODEL.FREESEG.TRAIN_TASKS), recomputes the text with that task's
prompts and builds its targets from the samples' segments (semantic: one mask per class,
instance: the things, panoptic: all); Hungarian-matched CE + focal + dice. The prompt tokens
come from the prompt stage (MODEL.FREESEG.PROMPT_CHECKPOINT) and stay frozen; without a
checkpoint they train with the model.

Test: per task the head runs with that task's prompts; every query's mask crop is classified
by the frozen CLIP and ensembled with the query's classes (seen / unseen weights from the
training vocabulary); then ``sem_seg`` (C, H, W) = sum_q p(c) sigmoid(mask), detectron2's
``panoptic_seg`` and ``instances``. ``"sem_seg"`` holds those sums: probabilities, not
logits (a pixel's scores need no softmax; they may exceed 1 where queries overlap).
"""

from __future__ import annotations

import contextlib
import random
from typing import Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.structures import ImageList, Instances

from ...clip import CLIPTeacher
from ...vocab import normalize_name
from ..freeseg import (
    AdaptivePromptLearner,
    TextClassHead,
    TextVisualInteraction,
    check_expand_ratio,
    clip_region_probs,
    ensemble_probs,
    query_probs,
)
from ..freeseg.tasks import (
    POST_DEFAULTS,
    TASK_KEYS,
    TASKS,
    task_targets,
    task_texts,
)
from ..freeseg.test_time import TestTimePromptTuning
from ..host_copy import instances_to_device
from ..inference import postprocess_to_original
from ..mask_classification import (
    MaskClassificationCriterion,
    MaskedAttentionDecoder,
    freeseg_instance_inference,
    instance_inference,
    panoptic_inference,
    resize_instances,
    resize_panoptic,
    semantic_inference,
)
from .base import OpenVocabSegmentor
from .freeseg_build import freeseg_config

__all__ = ["FreeSeg"]


def _facts(facts: Mapping[str, Sequence[str]]) -> Tuple[Tuple[str, ...], frozenset, frozenset]:
    """(test tasks, normalised seen classes, normalised thing classes) of a facts mapping."""
    seen, things = (
        frozenset(map(normalize_name, facts[k])) for k in ("seen_classes", "thing_classes")
    )
    return tuple(facts["test_tasks"]), seen, things


@META_ARCH_REGISTRY.register()
class FreeSeg(OpenVocabSegmentor):
    """FreeSeg's main stage (see the module docstring)."""

    sem_seg_scores = "probabilities"
    #: why ovseg.export refuses it
    export_unsupported = (
        "its test path crops and masks each image per predicted query for the CLIP "
        "ensemble (a data-dependent number of crops) and post-processes instances and "
        "panoptic segments per task; use ovseg.Predictor"
    )

    @configurable
    def __init__(
        self,
        *,
        teacher: CLIPTeacher,
        backbone: Backbone,
        pixel_decoder: nn.Module,
        interaction: TextVisualInteraction,
        decoder: MaskedAttentionDecoder,
        criterion: MaskClassificationCriterion,
        prompt: AdaptivePromptLearner,
        train_tasks: Sequence[str] = TASKS,
        test_tasks: Sequence[str] = ("semantic",),
        seen_classes: Sequence[str] = (),
        thing_classes: Sequence[str] = (),
        dataset_facts: Optional[Mapping[str, Mapping[str, Sequence[str]]]] = None,
        clip_ensemble: bool = True,
        ensemble_weight: float = 0.8,
        mask_threshold: float = 0.5,
        mask_expand_ratio: float = 1.0,
        clip_temperature: float = 100.0,
        post: Optional[Dict] = None,
        test_prompt_tuning: Optional[TestTimePromptTuning] = None,
        semantic_targets: str = "segments",
        **base,
    ):
        """
        Args:
            teacher (CLIPTeacher): the frozen CLIP (text tower under the prompts, image
                tower for the test-time ensemble).
            backbone, pixel_decoder, interaction, decoder: the network; the decoder's class
                head takes ``text_features`` (K, D).
            criterion: the set loss.
            prompt (AdaptivePromptLearner): the task prompts (frozen once loaded).
            train_tasks, test_tasks: subsets of ("semantic", "instance", "panoptic").
            seen_classes: names the ensemble weights as seen (``ensemble_seen_classes``).
            thing_classes: names of thing classes (instance targets, panoptic things).
            dataset_facts: per test set, its own "test_tasks", "seen_classes" and
                "thing_classes" (freeseg_build's), for test inputs carrying its
                "dataset_name" (ovseg's test mappers give it); others: the arguments above.
            clip_ensemble (bool): ensemble with CLIP's mask-crop classes at test.
            ensemble_weight (float): the ensemble's lambda.
            mask_threshold (float): a crop keeps pixels whose mask probability is above this.
            mask_expand_ratio (float): the crop box's scale about its centre (>= 1).
            clip_temperature (float): CLIP's logit scale in the ensemble.
            post (dict): panoptic / instance post-processing (see :func:`post_config`).
            test_prompt_tuning (TestTimePromptTuning, optional): tune the class prompts per
                test image (ovseg/modeling/freeseg/test_time.py); None = off.
            semantic_targets (str): the semantic task's masks: "segments" (each class's
                segments united) or "sem_seg" (the samples' label maps, as the release).
            base: :class:`OpenVocabSegmentor`'s arguments.
        """
        super().__init__(teacher=teacher, **base)
        self._check_test_settings()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.interaction = interaction
        self.decoder = decoder
        self.criterion = criterion
        self.prompt = prompt
        self.no_object = TextClassHead(dim=teacher.embed_dim)
        self.task_texts = task_texts(prompt.task_names)
        self.train_tasks = tuple(train_tasks)
        self.test_tasks, self.seen_classes, self.thing_classes = _facts(
            {"test_tasks": test_tasks, "seen_classes": seen_classes, "thing_classes": thing_classes}
        )
        self.dataset_facts = {name: _facts(f) for name, f in (dataset_facts or {}).items()}
        self.clip_ensemble = bool(clip_ensemble)
        self.ensemble_weight = float(ensemble_weight)
        self.mask_threshold = float(mask_threshold)
        self.mask_expand_ratio = check_expand_ratio(mask_expand_ratio)  # at build
        self.clip_temperature = float(clip_temperature)
        self.post = {**POST_DEFAULTS, **(post or {})}
        self.test_prompt_tuning = test_prompt_tuning
        self.semantic_from_labels = semantic_targets == "sem_seg"

    def _check_test_settings(self) -> None:
        if self.inference_mode != "whole" or self.test_aug is not None:
            raise ValueError(
                "FreeSeg tests whole images at one scale: set TEST.INFERENCE_MODE 'whole' and "
                "TEST.AUG.ENABLED False"
            )
        if self.background_threshold > 0:
            raise ValueError(
                "FreeSeg's test outputs do not take a background by a threshold; set "
                "TEST.BACKGROUND_THRESHOLD 0 (or threshold its probabilities afterwards, as "
                "ovseg.Predictor.predict(..., background_threshold=t) does)"
            )

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return freeseg_config(cfg)

    # ------------------------------------------------------------------ network
    def text_features(self, names: Sequence[str], task: str) -> Tensor:
        """(K, D) prompted text of ``names`` for ``task`` (differentiable while the prompt
        tokens train)."""
        return self.prompt(names, self.task_texts[task]).to(self.device)

    def pixel_features(self, images: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """Backbone and pixel decoder: the mask features and the 3 multi-scale maps."""
        mask_features, _, multi_scale = self.pixel_decoder.forward_features(self.backbone(images))
        return mask_features, multi_scale

    def decode(self, pixels: Tuple[Tensor, List[Tensor]], text: Tensor) -> Dict:
        """Interaction with the text and the masked-attention decoder.

        Args:
            pixels: :meth:`pixel_features`' output.
            text (Tensor): (C, D) class texts.

        Returns:
            dict: the decoder's outputs; ``pred_logits`` (B, Q, C + 1), no-object last.
        """
        mask_features, multi_scale = pixels
        keys = self.no_object.text_with_no_object(text)
        *maps, mask_features = self.interaction([*multi_scale, mask_features], keys)
        return self.decoder(maps, mask_features, text_features=keys)

    # ------------------------------------------------------------------ training
    def is_thing(
        self, names: Sequence[str], things: Optional[Collection[str]] = None
    ) -> List[bool]:
        things = self.thing_classes if things is None else things
        return [normalize_name(n) in things for n in names]

    def input_facts(self, x: dict) -> Tuple[Tuple[str, ...], frozenset, frozenset]:
        """The test tasks, ensemble-seen and thing classes (normalised) of a test input: its
        test set's own (``"dataset_name"``), else the model's."""
        facts = self.dataset_facts.get(x.get("dataset_name", ""))
        return facts or (self.test_tasks, self.seen_classes, self.thing_classes)

    def batch_task(self, batched_inputs: List[dict]) -> str:
        """The batch's task: its inputs' common ``"task"``, else one drawn at random among
        the training tasks (official: one per forward pass and GPU)."""
        tasks = {TASK_KEYS.get(x["task"], x["task"]) for x in batched_inputs if "task" in x}
        if len(tasks) > 1:
            raise ValueError(f"a batch must have one task, got {sorted(tasks)}")
        if tasks:
            (task,) = tasks
            if task not in TASKS:
                raise ValueError(f"input task {task!r} is not one of {TASKS}")
            return task
        return random.choice(self.train_tasks)

    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        groups = self.vocabulary_groups(batched_inputs)
        if len(groups) != 1:
            raise ValueError(
                f"FreeSeg trains on one vocabulary per batch, got {len(groups)}; train on one "
                "dataset"
            )
        names = next(iter(groups))
        task = self.batch_task(batched_inputs)
        targets = self.task_targets(batched_inputs, names, task)
        images = ImageList.from_tensors(
            self.normalize([x["image"] for x in batched_inputs]), self.size_divisibility
        )
        outputs = self.decode(self.pixel_features(images.tensor), self.text_features(names, task))
        targets = [instances_to_device(t, self.device) for t in targets]
        return self.criterion(outputs, targets, tuple(images.tensor.shape[-2:]))

    @property
    def mask_count(self):
        return self.criterion.mask_count

    def count_masks(self, batched_inputs: List[dict]) -> float:
        """The masks the criterion will count in this training batch (before its forward,
        for an accumulating step: ovseg/modeling/mask_count.py). A batch without a ``"task"``
        gets its drawn one, which its forward then uses."""
        names = self.input_vocabulary(batched_inputs[0], None)
        task = self.batch_task(batched_inputs)
        for x in batched_inputs:
            x.setdefault("task", task)
        return float(sum(len(t) for t in self.task_targets(batched_inputs, names, task)))

    def task_targets(self, batched_inputs: List[dict], names, task: str) -> List[Instances]:
        """The batch's training targets for ``task``."""
        missing = [x.get("file_name", "") for x in batched_inputs if "instances" not in x]
        if missing:
            raise ValueError(
                f"Training inputs {missing} have no 'instances'; FreeSeg needs mask targets "
                "(INPUT.DATASET_MAPPER_NAME ovseg_panoptic, ovseg_instance or ovseg_semantic_mask)"
            )
        things = self.is_thing(names)
        labels = [x.get("sem_seg") if self.semantic_from_labels else None for x in batched_inputs]
        targets = [
            task_targets(x["instances"], task, things, y, self.ignore_value)
            for x, y in zip(batched_inputs, labels)
        ]
        for t in targets:
            if t.gt_classes.numel() and int(t.gt_classes.max()) >= len(names):
                raise ValueError(
                    f"target classes {sorted(set(t.gt_classes.tolist()))} fall outside the "
                    f"{len(names)}-name vocabulary"
                )
        return targets

    # ------------------------------------------------------------------ inference
    def text_embeddings(self, names: Sequence[str], task: str = "semantic") -> Tensor:
        with torch.no_grad():
            return self.text_features(names, task)

    def class_probs(
        self, image: Tensor, masks: Tensor, logits: Tensor, text: Tensor, names, seen_set=None
    ):
        """(Q, C) class probabilities of one image's queries: the CLIP ensemble, or the
        query softmax with no-object dropped.

        Args:
            image (Tensor): (3, H, W) in [0, 255]; masks (Tensor): (Q, H, W) mask logits.
            logits (Tensor): (Q, C + 1); text (Tensor): (C, D); names: the C names.
            seen_set: normalised names the ensemble weights as seen (None: the model's).
        """
        p_query = query_probs(logits)
        if not self.clip_ensemble:
            return p_query
        p_clip = clip_region_probs(
            self.teacher,
            image.to(self.device),
            masks.sigmoid(),
            text,
            threshold=self.mask_threshold,
            temperature=self.clip_temperature,
            expand_ratio=self.mask_expand_ratio,
        )
        seen, seen_set = None, self.seen_classes if seen_set is None else seen_set
        if seen_set:
            seen = torch.tensor([normalize_name(n) in seen_set for n in names])
        return ensemble_probs(p_query, p_clip.to(p_query), seen, self.ensemble_weight)

    def task_output(
        self, task: str, probs: Tensor, masks: Tensor, names, size, things=None
    ) -> Dict:
        """One task's detectron2 output from (Q, C) probabilities and (Q, h, w) mask logits at
        the network input's size, resized to the output ``size`` (H, W) afterwards as the
        release does (open_vocabulary_model.py:284, 328-352, 398-407): the semantic
        probabilities bilinearly, the panoptic ids and instance masks by nearest neighbour.
        ``things``: the normalised thing classes (None: the model's)."""
        post = self.post
        if task == "semantic":
            sem = semantic_inference(probs, masks, has_no_object=False)
            return {"sem_seg": postprocess_to_original(sem, sem.shape[-2:], *size)}
        things = self.thing_classes if things is None else things
        thing_ids = {i for i, t in enumerate(self.is_thing(names, things)) if t}
        if task == "panoptic":
            keys = ("temperature", "object_mask_threshold", "thing_score_threshold", "drop_label")
            kwargs = {k: post[k] for k in keys}
            seg, segments = panoptic_inference(
                probs,
                masks,
                thing_ids=thing_ids,
                has_no_object=False,
                overlap_threshold=post["overlap_threshold"],
                pixel_assignment=post["pixel_assignment"],
                **kwargs,
            )
            return {"panoptic_seg": resize_panoptic(seg, segments, size)}
        things = thing_ids if things else None  # no thing list: every class
        if post["instance_mode"] == "topk":
            inst = instance_inference(
                probs, masks, topk=post["topk"], has_no_object=False, thing_ids=things
            )
        else:
            inst = freeseg_instance_inference(
                probs,
                masks,
                has_no_object=False,
                thing_ids=things,
                temperature=post["temperature"] or 0.01,
                score_threshold=post["thing_score_threshold"],
                overlap_threshold=post["overlap_threshold"],
                official_defects=post["official_defects"],
            )
        return {"instances": resize_instances(inst, size)}

    def inference(self, batched_inputs: List[dict]) -> List[Dict]:
        """Per input, the outputs of every test task (one head pass per task prompt).

        Returns:
            list[dict]: per input ``sem_seg`` (C, height, width) probabilities,
            ``panoptic_seg`` (int32 (height, width), segments) and ``instances``, as
            the test tasks ask.
        """
        results = []
        for x in batched_inputs:
            names = self.input_vocabulary(x)
            tasks, seen, things = self.input_facts(x)
            images = ImageList.from_tensors(self.normalize([x["image"]]), self.size_divisibility)
            h, w = x["image"].shape[-2:]
            size = (x.get("height", h), x.get("width", w))
            pixels = self.pixel_features(images.tensor)
            out: Dict = {}
            ttpt = self.test_prompt_tuning
            # each image starts from the trained prompts, also after an error or Ctrl-C
            tuned = ttpt.applied(self, pixels, names, tasks[0], seen) if ttpt else None
            with tuned or contextlib.nullcontext():
                for task in tasks:
                    text = self.text_embeddings(names, task)
                    pred = self.decode(pixels, text)
                    # official: aligned (open_vocabulary_model.py:261-266)
                    masks = F.interpolate(
                        pred["pred_masks"],
                        images.tensor.shape[-2:],
                        mode="bilinear",
                        align_corners=self.post["align_corners"],
                    )[0, :, :h, :w]
                    logits = pred["pred_logits"][0]
                    probs = self.class_probs(x["image"], masks, logits, text, names, seen)
                    out.update(self.task_output(task, probs, masks, names, size, things))
            results.append(out)
        return results
