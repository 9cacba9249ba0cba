"""ONNX export of a student with a fixed vocabulary, and its check against PyTorch.

A student whose test path is :class:`~ovseg.modeling.meta_arch.base.OpenVocabSegmentor`'s
(``predictor(names)`` under whole-image or sliding-window inference) is a pure tensor
program once its vocabulary is fixed: the text embeddings are computed once and baked into
the graph as a constant, and the exported graph maps an image tensor to the scores the
PyTorch model gives for it. LSeg, ZegCLIP, MaskCLIP and MaskCLIP+ are such students; one
whose test path is its own (FreeSeg: per-image crops for its CLIP ensemble, instance and
panoptic post-processing) is refused with the reason.

Graph (docs/export.md): input ``image`` (B, 3, H, W) float32, the config's INPUT.FORMAT
channel order (RGB for every shipped student), values in [0, 255], H and W fixed at export;
output ``scores`` (B, K, H, W) float32 of the kind ``sem_seg`` holds (the ``score_kind``
metadata entry). The batch axis is dynamic.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .modeling.inference import semantic_inference
from .modeling.meta_arch.base import OpenVocabSegmentor
from .modeling.vocabulary_scores import max_over_synonyms
from .utils.io import atomic_write
from .vocab import Vocabulary

__all__ = [
    "DEFAULT_OPSET",
    "FixedVocabularySegmentor",
    "compare_with_onnxruntime",
    "export_blocker",
    "export_onnx",
]

# ONNX opset of the exported graphs: 18 is the lowest the dynamo exporter emits; every
# operator the students use (Resize, Einsum, LayerNormalization) is there
DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "scores"


def export_blocker(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot be exported with a fixed vocabulary, or None when it can."""
    name = type(model).__name__
    if not isinstance(model, OpenVocabSegmentor):
        return (
            f"{name} is not an ovseg open-vocabulary student (OpenVocabSegmentor); only "
            "students that score a vocabulary's text embeddings are exported"
        )
    reason = getattr(type(model), "export_unsupported", None)
    if reason:
        return f"{name} is not exported: {reason}"
    if model.own_test_path():
        return (
            f"{name} has its own test path (it overrides OpenVocabSegmentor.inference), which "
            "is not a fixed tensor program over the text embeddings"
        )
    if model.test_aug is not None:
        return (
            "test-time augmentation (TEST.AUG) is not exported; export with TEST.AUG.ENABLED "
            "False (the graph is one scale, no flip)"
        )
    return None


class FixedVocabularySegmentor(nn.Module):
    """``image`` (B, 3, H, W) float, 0-255, the model's channel order -> (B, K, H, W)
    scores over a vocabulary fixed at construction (its text embeddings are a constant),
    as the model's test path computes them (whole or sliding-window, the model's mode)."""

    def __init__(self, model: OpenVocabSegmentor, names: Sequence[str]):
        super().__init__()
        reason = export_blocker(model)
        if reason is not None:
            raise ValueError(reason)
        self.model = model.eval()
        self.names = Vocabulary(tuple(names)).names
        # classes with synonyms are scored as the test path scores them: with "max", every
        # distinct word is a channel and a class takes its words' maximum after inference
        words, self._members = model.scored_words(self.names)
        with torch.no_grad():
            self._fn = model.predictor(words)
        self.eval()

    def forward(self, image: Tensor) -> Tensor:
        m = self.model
        x = (image.float() - m.pixel_mean) / m.pixel_std
        scores = semantic_inference(
            self._fn, x, mode=m.inference_mode, window=m.slide_window, stride=m.slide_stride
        )
        if self._members is not None:
            scores = max_over_synonyms(scores, self._members)
        return scores.float()


def _metadata(wrapper: FixedVocabularySegmentor, size: Tuple[int, int], fmt: str) -> Dict:
    return {
        "vocabulary": json.dumps(list(wrapper.names)),
        "score_kind": wrapper.model.sem_seg_scores,
        "input_format": fmt,
        "input_size": json.dumps(list(size)),
        "meta_architecture": type(wrapper.model).__name__,
    }


def export_onnx(
    model: OpenVocabSegmentor,
    names: Sequence[str],
    path: os.PathLike,
    *,
    size: Tuple[int, int],
    input_format: str = "RGB",
    opset: int = DEFAULT_OPSET,
) -> FixedVocabularySegmentor:
    """Write ``model`` with the vocabulary ``names`` as one self-contained ONNX file.

    Args:
        model: an eval-mode student on the CPU.
        names: the K class names baked in.
        path: the ``.onnx`` file (written atomically; the weights inside it).
        size: (H, W) of the graph's input.
        input_format: the channel order the graph expects (the config's INPUT.FORMAT).
        opset: the ONNX opset.

    Returns:
        The wrapper that was exported (its forward is the PyTorch reference).
    """
    import onnx

    if opset < DEFAULT_OPSET:
        # torch's dynamo exporter writes opset 18 graphs and down-converts them with ONNX's
        # version converter, which has no adapter for the students' Pad/Resize: it fails, and
        # the file keeps opset 18
        raise ValueError(
            f"opset {opset} is below {DEFAULT_OPSET}, the lowest the exporter writes "
            f"(torch.onnx.export with dynamo); give --opset {DEFAULT_OPSET} or later"
        )
    wrapper = FixedVocabularySegmentor(model, names)
    example = torch.zeros(2, 3, *size)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_shapes={"image": {0: batch}},
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in _metadata(wrapper, size, input_format).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    # a folder or an unwritable place is named as the file asked for, not its temporary
    atomic_write(path, lambda tmp: onnx.save(proto, tmp), by_name=True)
    return wrapper


def compare_with_onnxruntime(
    wrapper: FixedVocabularySegmentor, path: os.PathLike, images: np.ndarray
) -> float:
    """The largest absolute difference between ``path`` run by onnxruntime (CPU) and the
    PyTorch model's own test path (``model(inputs)["sem_seg"]``) on ``images``.

    Args:
        images: (B, 3, H, W) float32, 0-255, at the graph's input size.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_scores,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.astype(np.float32)})
    names = list(wrapper.names)
    inputs = [{"image": torch.from_numpy(x), "vocabulary": names} for x in images]
    with torch.no_grad():
        reference = torch.stack([out["sem_seg"] for out in wrapper.model(inputs)])
    if onnx_scores.shape != tuple(reference.shape):
        raise RuntimeError(
            f"onnxruntime gave {onnx_scores.shape}, PyTorch {tuple(reference.shape)}"
        )
    return float(np.abs(onnx_scores - reference.float().numpy()).max())
