# Follows the shape of Mask2Former's demo/predictor.py (a predictor + VisualizationDemo over
# detectron2's Visualizer), re-written for per-image vocabularies.
"""Open-vocabulary prediction for the demo: any ovseg config, any list of class names."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from detectron2.config import CfgNode
from detectron2.utils.visualizer import VisImage

from ovseg.api import (
    ask_smaller_outputs,
    build_inference_model,
    check_image,
    model_input,
    sem_seg_of,
)
from ovseg.clip import get_templates
from ovseg.data.dataset_mappers import inference_resize
from ovseg.modeling.full_size import labels_at_size
from ovseg.modeling.meta_arch.maskclip import cosine_logits
from ovseg.modeling.vocabulary_scores import VocabularyPlan, mean_synonym_embeddings
from ovseg.pseudo import find_teacher, score_kind_of
from ovseg.utils.mask_visualization import draw_instance_predictions, draw_panoptic_prediction
from ovseg.utils.visualization import (
    HeatmapLayout,
    draw_semantic,
    heatmap_grid,
    label_dtype_for,
    overlay_scale,
    vocabulary_metadata,
)
from ovseg.vocab import Vocabulary

__all__ = ["TASK_OUTPUTS", "OpenVocabPredictor", "VisualizationDemo"]

# the longest side of the picture the heat maps are drawn over (panels are 240 px wide)
HEATMAP_MAX_SIDE = 960

# the demo's tasks and the model output each draws
TASK_OUTPUTS = {"semantic": "sem_seg", "instance": "instances", "panoptic": "panoptic_seg"}


class OpenVocabPredictor:
    """Run an ovseg model on one image with a vocabulary of one's choice.

    Like detectron2's ``DefaultPredictor``: builds the model from the config, loads
    ``MODEL.WEIGHTS`` when set, puts it in eval mode and resizes each image as the test
    mapper does (``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``; 0 = no resize;
    ``INPUT.RESIZE_BACKEND``'s pixels).
    The vocabulary reaches the model through the input's ``"vocabulary"`` key. The model
    and its inputs are built as ``ovseg.Predictor`` (``ovseg/api.py``) builds them.
    """

    def __init__(self, cfg: CfgNode):
        """
        Args:
            cfg (CfgNode): an ovseg config (``ovseg.engine.defaults.load_config``).
        """
        self.cfg = cfg.clone()
        self.model = build_inference_model(self.cfg)
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT {self.input_format!r} is not 'RGB' or 'BGR'")
        self.aug = inference_resize(self.cfg) if self.cfg.INPUT.MIN_SIZE_TEST > 0 else None
        self.score_kind = score_kind_of(self.model)
        self.teacher = find_teacher(self.model)

    def _resize(self, image: np.ndarray) -> np.ndarray:
        return self.aug.get_transform(image).apply_image(image) if self.aug else image

    def __call__(self, image: np.ndarray, vocabulary: Sequence[str]) -> Dict[str, torch.Tensor]:
        """
        Args:
            image (np.ndarray): (H, W, 3) uint8 in ``cfg.INPUT.FORMAT`` channel order (what
                ``detectron2.data.detection_utils.read_image(path, format=...)`` returns).
            vocabulary: K class names; duplicates or empty names raise ``ValueError``.

        Returns:
            dict: {"sem_seg": (K, H, W) scores at the original size, on the CPU}.
        """
        output = self.raw_output(image, vocabulary)
        return {"sem_seg": sem_seg_of(self.model, output).float().cpu()}

    def raw_output(
        self, image: np.ndarray, vocabulary: Sequence[str], *, input_size: bool = False
    ) -> Dict:
        """The model's whole output for one image ("sem_seg", "instances", "panoptic_seg",
        whichever it gives), at the original size; with ``input_size``, at the network
        input's size when the model resizes its outputs last (``resizes_outputs_last``) and
        the input holds fewer pixels than the image."""
        names = Vocabulary(tuple(vocabulary)).names
        inp = model_input(image, self.aug, names)
        if input_size:
            ask_smaller_outputs(self.model, inp)
        with torch.no_grad():
            return self.model([inp])[0]

    def semantic_scores(self, image: np.ndarray, vocabulary: Sequence[str]) -> torch.Tensor:
        """(K, h, w) "sem_seg" scores, at the network input's size (the image resized as the
        test mapper does) when the model resizes last and the input is the smaller, else at
        the image's size; what
        :func:`ovseg.modeling.full_size.labels_at_size` labels at the image's size."""
        output = self.raw_output(image, vocabulary, input_size=True)
        return sem_seg_of(self.model, output).float()

    def similarity_maps(
        self,
        image: np.ndarray,
        vocabulary: Sequence[str],
        size: Optional[Tuple[int, int]] = None,
    ) -> np.ndarray:
        """What the CLIP teacher "sees" for each word: pixel-text cosine similarity.

        The teacher's dense embeddings (MaskCLIP's rule) of the resized image against the
        prompt-ensembled text embedding of each name, upsampled to the original size.

        Args:
            image (np.ndarray): as for ``__call__``.
            vocabulary: K class names.
            size ((int, int), optional): the maps' (H, W); default the image's.

        Returns:
            np.ndarray: (K, H, W) float32 cosines in [-1, 1].
        """
        if self.teacher is None:
            raise ValueError(
                f"Heat maps need a CLIP teacher, and {type(self.model).__name__} "
                f"(MODEL.META_ARCHITECTURE) holds none; run without --heatmaps"
            )
        check_image(image)
        names = Vocabulary(tuple(vocabulary)).names
        templates = getattr(self.model, "templates", None) or get_templates(
            self.cfg.MODEL.CLIP.TEMPLATES
        )
        height, width = image.shape[:2]
        resized = self._resize(image)
        if self.input_format == "BGR":
            resized = resized[:, :, ::-1]  # the teacher takes RGB
        x = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))[None].float()
        dense = self.teacher.dense_embeddings(x)
        text = mean_synonym_embeddings(lambda w: self.teacher.encode_text(w, templates), names)
        sims = cosine_logits(dense, text)  # (1, K, gh, gw)
        # cell (i, j) covers pixels [i*s, (i+1)*s) of the bottom/right-padded input
        s = self.teacher.stride
        gh, gw = sims.shape[-2:]
        sims = F.interpolate(sims, size=(gh * s, gw * s), mode="bilinear", align_corners=False)
        sims = sims[:, :, : resized.shape[0], : resized.shape[1]]
        size = (height, width) if size is None else tuple(int(v) for v in size)
        sims = F.interpolate(sims, size=size, mode="bilinear", align_corners=False)
        return sims[0].cpu().numpy().astype(np.float32)


class VisualizationDemo:
    """Predictions drawn for people: labelled overlays, label maps and heat maps."""

    def __init__(
        self,
        cfg: CfgNode,
        *,
        confidence_threshold: float = 0.0,
        min_overlay_size: int = 320,
        predictor: Optional[OpenVocabPredictor] = None,
    ):
        """
        Args:
            cfg (CfgNode): an ovseg config.
            confidence_threshold (float): pixels whose confidence (the largest class
                probability; a softmax over the scores for logit models) is below this are
                left unlabelled.
            min_overlay_size (int): overlays of smaller images are enlarged (by an integer
                factor) until their short side reaches this, so class names stay readable.
            predictor (OpenVocabPredictor, optional): reuse an already built one.
        """
        if not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(f"confidence threshold {confidence_threshold} is not in [0, 1]")
        self.confidence_threshold = float(confidence_threshold)
        self.min_overlay_size = int(min_overlay_size)
        self.predictor = predictor if predictor is not None else OpenVocabPredictor(cfg)
        self._metadata = {}

    def metadata(self, vocabulary: Sequence[str]):
        """detectron2 ``Metadata`` of a vocabulary (deterministic colours), cached."""
        key = tuple(vocabulary)
        if key not in self._metadata:
            self._metadata[key] = vocabulary_metadata(key, name="demo")
        return self._metadata[key]

    def _rgb(self, image: np.ndarray) -> np.ndarray:
        return image[:, :, ::-1] if self.predictor.input_format == "BGR" else image

    def run_on_image(
        self,
        image: np.ndarray,
        vocabulary: Sequence[str],
        unseen: Sequence[str] = (),
        plan: Optional[VocabularyPlan] = None,
    ) -> Tuple[Dict, VisImage]:
        """Predict and draw one image.

        Args:
            image (np.ndarray): (H, W, 3) uint8 in ``cfg.INPUT.FORMAT`` order.
            vocabulary: K class names.
            unseen: names to draw in the unseen style (a zero-shot split's unseen classes).
            plan (VocabularyPlan, optional): an augmented vocabulary and/or a background by
                a threshold; then ``vocabulary`` must be ``plan.names``.

        Returns:
            tuple: (predictions, overlay). ``predictions``: "sem_seg" (K, h, w) the model's
            scores on the CPU (at the network input's size when the model resizes last and
            the input is the smaller, else at the image's), "label" (H, W) uint8 (uint16
            for K > 255) class indices with 255 (65535) where the confidence is below the
            threshold, "confidence" (H, W) float32 in [0, 1]. The labels are the argmax of
            the scores resized to the image's size, taken a few classes at a time (a large
            photo's (K, H, W) is never held).
        """
        names = Vocabulary(tuple(vocabulary)).names
        if plan is not None and not plan.identity and tuple(plan.names) != names:
            raise ValueError(f"vocabulary {names} is not the plan's names {plan.names}")
        words = plan.model_names if plan is not None else names
        scores = self.predictor.semantic_scores(image, words)
        h, w = image.shape[:2]
        label, confidence = labels_at_size(
            scores, (h, w), kind=self.predictor.score_kind, plan=plan
        )
        scores, label, confidence = scores.cpu(), label.cpu(), confidence.cpu()
        dtype, ignore = label_dtype_for(len(names))
        label = label.masked_fill(confidence < self.confidence_threshold, ignore)
        predictions = {
            "sem_seg": scores,
            "label": label.numpy().astype(dtype),
            "confidence": confidence.numpy(),
        }
        overlay = draw_semantic(
            np.ascontiguousarray(self._rgb(image)),
            predictions["label"],
            self.metadata(names),
            ignore_label=ignore,
            unseen=unseen,
            scale=overlay_scale(h, w, self.min_overlay_size),
        )
        return predictions, overlay

    def draw_prediction(
        self,
        image: np.ndarray,
        output: Dict,
        vocabulary: Sequence[str],
        task: str,
        unseen: Sequence[str] = (),
    ) -> VisImage:
        """Draw a model output's "instances" (task "instance", instances below the confidence
        threshold left out) or "panoptic_seg" (task "panoptic"), detectron2's way.

        Args:
            image (np.ndarray): (H, W, 3) uint8 in ``cfg.INPUT.FORMAT`` order.
            output (dict): a model's output for the image, classes indexing ``vocabulary``.
            vocabulary: the K class names.
            task (str): "instance" or "panoptic".
            unseen: names to draw hatched.
        """
        key = TASK_OUTPUTS.get(task)
        if key is None or task == "semantic":
            raise ValueError(f"task {task!r}: draw_prediction draws 'instance' or 'panoptic'")
        if key not in output:
            raise ValueError(f"task {task!r} needs the output key {key!r}; got {sorted(output)}")
        rgb = np.ascontiguousarray(self._rgb(image))
        scale = overlay_scale(*image.shape[:2], self.min_overlay_size)
        if task == "instance":
            return draw_instance_predictions(
                rgb, output["instances"], vocabulary, unseen=unseen, scale=scale,
                score_threshold=self.confidence_threshold,
            )  # fmt: skip
        ids, segments = output["panoptic_seg"]
        if segments is None:
            raise ValueError("panoptic_seg without segments_info is not drawn; give the segments")
        return draw_panoptic_prediction(rgb, ids, segments, vocabulary, unseen=unseen, scale=scale)

    def heatmaps(
        self, image: np.ndarray, vocabulary: Sequence[str]
    ) -> Tuple[np.ndarray, HeatmapLayout]:
        """A titled grid with one teacher similarity map per name, over the image scaled
        down to at most ``HEATMAP_MAX_SIDE`` pixels (the maps made at that size).

        Returns:
            tuple: (picture (h, w, 3) uint8 RGB, its :class:`HeatmapLayout`).
        """
        names = Vocabulary(tuple(vocabulary)).names
        h, w = image.shape[:2]
        # panels are 240 px wide: a photo's maps at its own size would be K * 48 MB at 12 MP
        scale = min(1.0, HEATMAP_MAX_SIDE / max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        maps = self.predictor.similarity_maps(image, names, size=size)
        rgb = np.ascontiguousarray(self._rgb(image))
        if size != (h, w):
            rgb = np.asarray(Image.fromarray(rgb).resize(size[::-1], Image.BILINEAR))
        return heatmap_grid(rgb, maps, names)
