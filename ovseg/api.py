"""The Python API: segment images with any ovseg model and any words, in a few lines.

Example::

    import ovseg

    predictor = ovseg.Predictor("toy/maskclip.yaml")  # a config under configs/, or a file
    [pred] = predictor.predict(["photo.png"], "circle,square,background")
    pred.labels        # (H, W) int64 vocabulary indices, at the image's size
    pred.confidence    # (H, W) float32 probability of each pixel's class
    pred.masks.get("circle")  # (H, W) bool; only the names present in ``labels`` have one
    pred.scores        # (K, H, W) float32 class probabilities, made on first access

``demo/predictor.py`` builds its model and inputs through :func:`build_inference_model`
and :func:`model_input`.
"""

from __future__ import annotations

import logging
import numbers
import os
import shlex
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from .data.dataset_mappers.resize import inference_resize
from .data.image_io import pil_to_numpy, read_image
from .engine.checkpoint import load_model_weights
from .engine.defaults import REPO_ROOT as ENGINE_REPO_ROOT
from .engine.defaults import load_config
from .modeling.full_size import ScoresAtSize, outputs_at_size, smaller_output_size
from .modeling.vocabulary_scores import VocabularyPlan
from .pseudo import score_kind_of
from .vocab import Vocabulary, resolve_vocabulary

__all__ = [
    "Prediction",
    "Predictor",
    "ask_smaller_outputs",
    "build_inference_model",
    "check_image",
    "model_input",
    "resolve_config_path",
    "sem_seg_of",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(ENGINE_REPO_ROOT)
CONFIGS_DIR = REPO_ROOT / "configs"

ImageLike = Union[np.ndarray, "os.PathLike[str]", str, Any]  # Any: a PIL image


@dataclass(frozen=True, eq=False)
class Prediction:
    """One image's prediction over one vocabulary, on the CPU, at the image's size.

    Predictions compare (and hash) by identity, as numpy arrays have no single truth value;
    compare their fields with ``np.array_equal``.

    Attributes:
        names: the K class names, in index order.
        labels: (H, W) int64, the index of the best-scoring name per pixel.
        confidence: (H, W) float32, the score of each pixel's class clipped to [0, 1]
            (a background by a threshold: the threshold).
        masks: name -> (H, W) bool, for each name that labels some pixel.
        instances: the model's detectron2 ``Instances`` (mask students), else None; their
            ``pred_classes`` index ``names`` (an added class is "other").
        panoptic: (segment ids (H, W) int array, segments_info list) when the model gives
            "panoptic_seg", else None; each segment's ``category_id`` indexes ``names``.
        model_scores: the model's "sem_seg" (at its input size, the image resized as the
            test mapper does, when the model resizes its outputs last and the input holds
            fewer pixels than the image; else at (H, W)) with
            what resizes it to (H, W): :attr:`scores` and :meth:`score_maps` are made from it.
    """

    names: Tuple[str, ...]
    labels: np.ndarray
    confidence: np.ndarray = field(repr=False)
    masks: Dict[str, np.ndarray] = field(repr=False)
    instances: Any = field(default=None, repr=False)
    panoptic: Optional[Tuple[np.ndarray, Any]] = field(default=None, repr=False)
    model_scores: Optional[ScoresAtSize] = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        shape = getattr(self.confidence, "shape", None)
        if shape != self.labels.shape:
            raise ValueError(
                f"confidence must be (H, W) like labels {self.labels.shape}, got {shape}: "
                "Prediction(names, labels, confidence, masks, instances, panoptic, "
                "model_scores) takes no scores since they are made from model_scores"
            )

    @cached_property
    def scores(self) -> np.ndarray:
        """(K, H, W) float32 per-class scores in [0, 1] whose argmax is ``labels``, made on
        first access (K * H * W * 4 bytes: 7.2 GB for 150 classes on a 4000x3000 photo;
        ``labels``, ``confidence`` and ``masks`` never hold them).

        The model's "sem_seg" with a softmax over the classes when it declares logits, else
        as given. They sum to 1 over the classes only for a softmax student with plain
        names: ZegCLIP's are per-class sigmoids, MaskCLIP's key smoothing and FreeSeg's mask
        sums are not renormalised, a class with synonyms holds its best word's probability,
        "other" the best added class's, and a background by a threshold holds the threshold
        where it wins, else 0.
        """
        return self._model_scores().probabilities().numpy()

    def score_maps(
        self, classes: Sequence[Union[int, str]], size: Optional[Tuple[int, int]] = None
    ) -> np.ndarray:
        """(len(classes), H, W) float32 rows of :attr:`scores` for a few classes (indices or
        names), each made on its own: a large photo's heat maps without all K; with ``size``
        (h, w), the model's scores resized to it instead (a display's maps)."""
        if isinstance(classes, str):
            raise ValueError(f"classes must be a list of names or indices; for one, [{classes!r}]")
        index, num = {n: i for i, n in enumerate(self.names)}, len(self.names)
        wanted = []
        for c in classes:
            if isinstance(c, str):
                if c not in index:
                    raise ValueError(f"{c!r} is not one of this prediction's names {self.names}")
                c = index[c]
            elif isinstance(c, bool) or not isinstance(c, numbers.Integral):
                raise ValueError(f"class {c!r} is neither a name nor an integer index")
            elif -num <= c < 0:  # as pred.scores[-1]
                c += num
            wanted.append(int(c))
        scores = self._model_scores()
        return (scores if size is None else scores.at_size(size)).probabilities(wanted).numpy()

    def _model_scores(self) -> ScoresAtSize:
        if self.model_scores is None:
            raise ValueError("this Prediction was made without its model's scores")
        return self.model_scores


def resolve_config_path(config: Union[str, os.PathLike]) -> str:
    """A config file: ``config`` itself when it is a file, else ``configs/<config>``."""
    path = Path(config)
    if path.is_file():
        return str(path)
    under = CONFIGS_DIR / path
    if under.is_file():
        return str(under)
    raise FileNotFoundError(
        f"Config {str(config)!r} is neither a file nor a path under {CONFIGS_DIR} "
        "(e.g. 'toy/maskclip.yaml')"
    )


def _pick_device(device: Optional[str]) -> str:
    if device is None:
        if torch.cuda.is_available():
            return "cuda"
        logger.info("CUDA is not available: the predictor runs on the CPU.")
        return "cpu"
    device = str(device)
    try:
        torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is unavailable; use 'cpu'")
    return device


def build_inference_model(cfg: CfgNode, weights: Optional[str] = None) -> torch.nn.Module:
    """detectron2's model of ``cfg`` in eval mode with ``weights`` (``cfg.MODEL.WEIGHTS``
    when None; nothing when both are empty) loaded through ovseg's safe checkpoint loader,
    which refuses a file that does not fit the model."""
    model = build_model(cfg)
    model.eval()
    weights = cfg.MODEL.WEIGHTS if weights is None else str(weights)
    if weights:
        load_model_weights(model, weights, cfg=cfg)
    elif any(p.requires_grad for p in model.parameters()):
        logger.warning(
            "No weights given (MODEL.WEIGHTS is empty): %s's trainable parts are randomly "
            "initialised, so its predictions mean nothing. Pass a trained checkpoint: "
            "MODEL.WEIGHTS output/<run>/model_final.pth, or Predictor(config, weights=...)",
            type(model).__name__,
        )
    return model


def check_image(image: Any, what: str = "image") -> None:
    """Raise ``ValueError`` unless ``image`` is an (H, W, 3) uint8 numpy array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(
            f"{what} must be an (H, W, 3) numpy array, got {type(image)} {shape}; repeat a "
            "grayscale (H, W) array to three channels (np.stack([x] * 3, axis=-1)) and drop "
            "an alpha channel (x[..., :3]), or pass the image file or a PIL image"
        )
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            hint = "(x // 257).astype(np.uint8) for 16-bit values"
        elif image.dtype.kind in "biu":  # bool, integers: values already in [0, 255]?
            hint = "x.astype(np.uint8) for values in [0, 255] (x * 255 for a bool mask)"
        else:
            hint = "(x * 255).round().astype(np.uint8) for floats in [0, 1]"
        raise ValueError(
            f"{what} must be uint8 in [0, 255], got dtype {image.dtype}; convert it, e.g. {hint}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} is empty: its shape is {image.shape}")


def model_input(image: np.ndarray, aug: Optional[T.Augmentation], names: Sequence[str]) -> dict:
    """A model input dict for one (H, W, 3) uint8 image already in the model's channel order:
    resized as the test mapper does, with its original size and its vocabulary."""
    check_image(image)
    height, width = image.shape[:2]
    resized = aug.get_transform(image).apply_image(image) if aug is not None else image
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return {"image": tensor, "height": height, "width": width, "vocabulary": list(names)}


def ask_smaller_outputs(model: torch.nn.Module, inp: dict) -> Tuple[int, int]:
    """Point a model input's "height"/"width" at the size its outputs are wanted at: for a
    model that resizes its outputs last, the smaller of the network input's and the image's
    (:func:`~ovseg.modeling.full_size.smaller_output_size`; the caller resizes them after),
    else the image's.

    Returns:
        (int, int): the image's (height, width), what the outputs stand for.
    """
    size = (inp["height"], inp["width"])
    if getattr(model, "resizes_outputs_last", False):
        inp["height"], inp["width"] = smaller_output_size(inp["image"].shape[-2:], size)
    return size


def sem_seg_of(model: torch.nn.Module, output: dict) -> torch.Tensor:
    """``output["sem_seg"]`` detached, or an error naming what ``model`` returned instead."""
    if "sem_seg" not in output:
        raise RuntimeError(f"{type(model).__name__} returned {sorted(output)} without 'sem_seg'")
    return output["sem_seg"].detach()


def _as_rgb(image: ImageLike, index: int) -> np.ndarray:
    what = f"image {index}"
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, format="RGB")
    if not isinstance(image, np.ndarray) and hasattr(image, "convert"):  # a PIL image
        return pil_to_numpy(image, "RGB", f"{what} (a PIL {image.mode} image)")
    check_image(image, what)
    return image


def _vocabulary(vocabulary: Union[str, Sequence[str], Vocabulary]) -> Tuple[str, ...]:
    if isinstance(vocabulary, Vocabulary):
        return vocabulary.names
    if isinstance(vocabulary, (str, os.PathLike)):  # a path: a .json vocabulary
        return resolve_vocabulary(os.fspath(vocabulary)).names
    if not isinstance(vocabulary, (list, tuple)):
        raise ValueError(
            f"vocabulary must be a list of names, a comma-separated string, a builtin "
            f"name or a .json file, got {type(vocabulary).__name__}"
        )
    return Vocabulary(tuple(vocabulary)).names


def _as_opts(opts: Union[str, Sequence[str]]) -> List[str]:
    """KEY VALUE pairs; a string is split as a shell would ("MODEL.DEVICE cpu")."""
    return shlex.split(opts) if isinstance(opts, str) else [str(o) for o in opts]


class Predictor:
    """Segment images with one ovseg model and a vocabulary per call.

    Batching: the images of a call share its vocabulary; those whose resized sizes are
    equal go through the model in one forward, and each other size in its own forward (so
    no image is padded by another, and a batch gives what single calls give).
    """

    def __init__(
        self,
        config: Union[str, os.PathLike],
        weights: Optional[Union[str, os.PathLike]] = None,
        *,
        device: Optional[str] = None,
        opts: Union[str, Sequence[str]] = (),
    ):
        """
        Args:
            config: a config file, or a path under the repository's ``configs/``
                (``"toy/maskclip.yaml"``).
            weights: a checkpoint; None for the config's ``MODEL.WEIGHTS`` (models such as
                MaskCLIP need none beyond their CLIP).
            device: "cpu", "cuda", "cuda:1", ...; None for CUDA when available, else CPU.
            opts: config overrides as KEY VALUE pairs (a list, or one string).
        """
        cfg = load_config(resolve_config_path(config), _as_opts(opts))
        cfg.MODEL.DEVICE = _pick_device(device)
        self.cfg = cfg
        self.model = build_inference_model(cfg, None if weights is None else str(weights))
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT {self.input_format!r} is not 'RGB' or 'BGR'")
        self.aug = inference_resize(cfg) if cfg.INPUT.MIN_SIZE_TEST > 0 else None
        self.score_kind = score_kind_of(self.model)

    def predict(
        self,
        images: Union[ImageLike, Sequence[ImageLike]],
        vocabulary: Union[str, Sequence[str], Vocabulary],
        *,
        augment_vocabulary: Optional[str] = None,
        background_threshold: Optional[float] = None,
    ) -> Union[Prediction, List[Prediction]]:
        """
        Args:
            images: one image or a list: (H, W, 3) uint8 RGB numpy arrays, PIL images or
                image files.
            vocabulary: a list of names, a string ("cat,dog,grass"; with synonyms
                "pickup truck, truck; sky"; one class: "cat;"), a builtin vocabulary name
                ("voc20") or a .json vocabulary file.
            augment_vocabulary: a builtin vocabulary ("coco171") whose classes are added
                for open-ended scenes; their pixels are labelled "other" (the last name).
            background_threshold: in (0, 1]: pixels whose best class probability is below
                it are labelled "background" (at its place in the vocabulary, else first),
                a name that is then not given to the model.

        Returns:
            One :class:`Prediction` for one image, a list for a list.
        """
        plan = VocabularyPlan.make(_vocabulary(vocabulary), augment_vocabulary,
                                   background_threshold)  # fmt: skip
        names = plan.model_names
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            raise ValueError("no images given: pass one image or a non-empty list")
        rgb = [_as_rgb(image, i) for i, image in enumerate(batch)]
        inputs = [
            model_input(x[:, :, ::-1] if self.input_format == "BGR" else x, self.aug, names)
            for x in rgb
        ]
        sizes = [ask_smaller_outputs(self.model, x) for x in inputs]  # resized in _prediction
        outputs: List[Optional[dict]] = [None] * len(inputs)
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x["image"].shape[-2:]), []).append(i)
        with torch.no_grad():
            for indices in groups.values():
                for i, out in zip(indices, self.model([inputs[i] for i in indices])):
                    outputs[i] = out
        predictions = [self._prediction(out, plan, size) for out, size in zip(outputs, sizes)]
        return predictions[0] if single else predictions

    def _prediction(self, output: dict, plan: VocabularyPlan, size: Tuple[int, int]) -> Prediction:
        scores = sem_seg_of(self.model, output)
        output = outputs_at_size(output, size)
        # labelled where the model ran (a GPU's resize takes milliseconds), then kept on the CPU
        model_scores = ScoresAtSize(scores, size, kind=self.score_kind, plan=plan)
        model_scores.labels()
        label, confidence = model_scores.to("cpu").labels()
        names = plan.names
        # copies: the held labels make score_maps' background rows, whatever the caller edits
        labels, confidence = label.cpu().numpy().copy(), confidence.cpu().numpy().copy()
        masks = {names[k]: labels == k for k in np.unique(labels).tolist()}
        # instance and segment classes index the model's words: map them to ``names``
        instances = output["instances"].to("cpu") if "instances" in output else None
        if instances is not None and instances.has("pred_classes") and not plan.identity:
            instances.pred_classes = plan.class_index(instances.pred_classes)
        panoptic = None
        if "panoptic_seg" in output:
            ids, segments = output["panoptic_seg"]
            if segments is not None and not plan.identity:
                segments = [
                    {**seg, "category_id": int(plan.class_index(seg["category_id"]))}
                    for seg in segments
                ]
            panoptic = (ids.cpu().numpy(), segments)
        return Prediction(names, labels, confidence, masks, instances, panoptic, model_scores)
