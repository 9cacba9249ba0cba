"""Helpers every open-vocabulary meta-architecture needs: which class names an input is
scored over, and grouping inputs that can share one forward."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from detectron2.data import MetadataCatalog
from detectron2.structures import ImageList

from ...vocab import resolve_vocabulary
from ..inference import postprocess_to_original, semantic_inference

__all__ = [
    "LearnedBackground",
    "check_labels",
    "training_batch",
    "default_test_vocabulary",
    "group_inputs",
    "input_vocabulary",
    "vocabulary_inference",
]


def default_test_vocabulary(cfg) -> Optional[Tuple[str, ...]]:
    """The names used for test inputs that carry no "vocabulary".

    MODEL.OVSEG.TEST_VOCABULARY when set, else the first test dataset's stuff_classes, else
    None (then every input must carry its own).
    """
    spec = cfg.MODEL.OVSEG.TEST_VOCABULARY
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    if spec.strip() or (meta is not None and meta.get("stuff_classes", None)):
        return resolve_vocabulary(spec, meta).names
    return None


def input_vocabulary(inp: dict, default: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    """The class names an input's scores (or labels) refer to.

    Args:
        inp (dict): a model input; its "vocabulary" (list[str]) wins when present.
        default: names for inputs without one; None = such inputs are an error.

    Returns:
        tuple[str, ...]: K names.
    """
    names = inp.get("vocabulary")
    where = f"Input {inp.get('file_name', '')!r}"
    if names is None:
        if default is None:
            raise ValueError(
                f"{where} carries no 'vocabulary' and the model has no default; set "
                "MODEL.OVSEG.TEST_VOCABULARY or DATASETS.TEST, or use ovseg's dataset mappers"
            )
        return tuple(default)
    if isinstance(names, str) or len(names) == 0:
        raise ValueError(f"{where}: 'vocabulary' must be a non-empty list of names, got {names!r}")
    return tuple(names)


def group_inputs(keys: Sequence[Hashable]) -> Dict[Hashable, List[int]]:
    """Indices of equal keys, in order of first appearance (e.g. key = (size, vocabulary))."""
    groups: Dict[Hashable, List[int]] = OrderedDict()
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def check_labels(target: Tensor, num_names: int, ignore_value: int, inputs: List[dict]) -> None:
    """Refuse training labels outside ``[0, num_names)`` that are not the ignore value.

    Args:
        target (Tensor): (B, H, W) labels of a batch.
        num_names (int): size of the batch's vocabulary.
        ignore_value (int): the unlabelled value.
        inputs (list[dict]): the batch's inputs, named in the error.
    """
    valid = target[target != ignore_value]
    if valid.numel() and (int(valid.max()) >= num_names or int(valid.min()) < 0):
        bad = sorted(set(valid[(valid >= num_names) | (valid < 0)].tolist()))[:5]
        files = [x.get("file_name", "") for x in inputs]
        raise ValueError(
            f"labels {bad} of {files} are outside the {num_names}-name vocabulary and not "
            f"the ignore value {ignore_value}; the mapper's vocabulary and labels disagree"
        )


def vocabulary_inference(
    model: nn.Module,
    batched_inputs: List[dict],
    predictor: Optional[Callable[[Tuple[str, ...]], Callable[[Tensor], Tensor]]] = None,
) -> List[Dict[str, Tensor]]:
    """Eval outputs of a dense open-vocabulary model, one forward per (size, vocabulary).

    Inputs of one size and vocabulary share a forward; others are never padded together.
    The model provides its settings: ``vocabulary`` (names for inputs without a
    "vocabulary"), ``_normalize`` (the inputs' images -> network inputs of the same sizes),
    ``inference_mode``, ``slide_window`` and ``slide_stride`` (``semantic_inference``).

    Args:
        model: the meta-architecture.
        batched_inputs: model inputs ("image", optional "vocabulary", "height", "width").
        predictor: ``predictor(names)`` returns ``fn(images (b, 3, h, w)) -> (b, K, h', w')``;
            default: ``model.predict(images, model.text_embeddings(names))``.

    Returns:
        list[dict]: ``{"sem_seg": (K, height, width)}`` per input.
    """
    if predictor is None:

        def predictor(names):
            text = model.text_embeddings(names)
            return lambda x: model.predict(x, text)

    keys = [
        (tuple(x["image"].shape), input_vocabulary(x, model.vocabulary)) for x in batched_inputs
    ]
    results: List[Optional[Dict[str, Tensor]]] = [None] * len(batched_inputs)
    for (_, names), idx in group_inputs(keys).items():
        images = torch.stack(model._normalize([batched_inputs[i]["image"] for i in idx]))
        scores = semantic_inference(
            predictor(names),
            images,
            mode=model.inference_mode,
            window=model.slide_window,
            stride=model.slide_stride,
        )
        h, w = images.shape[-2:]
        for j, i in enumerate(idx):
            inp = batched_inputs[i]
            height, width = inp.get("height", h), inp.get("width", w)
            results[i] = {"sem_seg": postprocess_to_original(scores[j], (h, w), height, width)}
    return results


def training_batch(
    batched_inputs: List[dict],
    normalize: Callable[[List[Tensor]], List[Tensor]],
    size_divisibility: int,
    ignore_value: int,
    device: torch.device,
) -> Tuple[ImageList, Tensor]:
    """Padded network inputs and labels of a training batch (labels padded with ignore).

    Args:
        batched_inputs: mapper outputs; each needs "image", "sem_seg" and "vocabulary".
        normalize: turns the inputs' images into network inputs.
        size_divisibility: pad both sides to a multiple of this (0: no padding beyond the max).
        ignore_value: the label of padded pixels.
        device: where the labels go.

    Returns:
        (ImageList, Tensor): the images, and (B, H, W) long labels.
    """
    for inp in batched_inputs:
        if "sem_seg" not in inp or "vocabulary" not in inp:
            raise ValueError(
                f"Training input {inp.get('file_name', '')!r} lacks 'sem_seg' or "
                "'vocabulary'; train with ovseg's dataset mappers (INPUT.DATASET_MAPPER_NAME)"
            )
    images = ImageList.from_tensors(
        normalize([x["image"] for x in batched_inputs]), size_divisibility
    )
    targets = ImageList.from_tensors(
        [x["sem_seg"].to(device) for x in batched_inputs],
        size_divisibility,
        pad_value=ignore_value,
    ).tensor.long()
    return images, targets


class LearnedBackground(nn.Module):
    """A learnable embedding that stands in for one class's CLIP text embedding.

    A "background" class is not a thing CLIP has a word for: its text embedding is a generic
    direction near every class's (MaskCLIP+'s official ``cls_bg``). Where the vocabulary holds
    ``name`` (case-insensitively), :meth:`forward` puts this embedding in its row.
    """

    def __init__(self, name: str, dim: int):
        super().__init__()
        self.name = name.strip().casefold()
        self.embedding = nn.Parameter(torch.randn(1, dim) * 0.02)

    @staticmethod
    def check_trained(key: str, name: str, trained: Sequence[str], where: str) -> None:
        """Refuse a background class outside the names that get a loss (``where`` says
        which), whose embedding would never learn; no names (no training set) pass.

        Args:
            key (str): the method's config node, e.g. "MODEL.ZEGCLIP".
            name (str): its BACKGROUND_CLASS.
            trained: the names that get a loss.
            where (str): e.g. "in the training vocabulary".
        """
        if trained and name.strip().casefold() not in {n.strip().casefold() for n in trained}:
            raise ValueError(
                f"{key}.BG_EMBED: the background class {name!r} (BACKGROUND_CLASS) is not "
                f"{where} {list(trained)[:8]}...; its learnable embedding would never be trained"
            )

    def forward(self, text: Tensor, names: Sequence[str]) -> Tensor:
        """(K, D) text embeddings of ``names`` -> the same with the background row replaced."""
        rows = [n.strip().casefold() == self.name for n in names]
        if not any(rows):
            return text
        rows = torch.tensor(rows, device=text.device).unsqueeze(1)
        return torch.where(rows, self.embedding.to(text.dtype), text)
