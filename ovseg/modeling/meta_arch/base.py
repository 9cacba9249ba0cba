"""The one base every ovseg meta-architecture derives from.

:class:`OpenVocabSegmentor` holds what every student shares: the frozen CLIP teacher (kept
out of checkpoints by the teacher itself; None for a model that reads no CLIP, as XPM with
BERT classes), the network's pixel normalisation, the device,
the vocabulary an input is scored over, padded training batches with their label check,
whole/sliding-window inference grouped by (size, vocabulary), and a declaration of what its
``"sem_seg"`` output holds, which the demo and pseudo-labelling read instead of guessing.

A subclass implements :meth:`losses` (training) and :meth:`predict` (network inputs and
text embeddings -> scores at the input size), or overrides :meth:`predictor` when its
prediction needs more than the text embeddings.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from detectron2.structures import ImageList
from detectron2.utils.logger import log_first_n

from ...clip import CLIPTeacher
from ...clip.prompt_names import PromptWords, apply_prompt_names
from ...pseudo.labels import SCORE_KINDS
from ...utils.choices import check_choice
from ...vocab import check_unique_names, normalize_name, one_class_warning
from ..host_copy import tensor_to_device
from ..inference import (
    INFERENCE_MODES,
    check_slide_layout,
    group_inputs,
    postprocess_to_original,
    semantic_inference,
    slide_pad_value,
)
from ..test_time_aug import TestTimeAug, multiscale_inference
from ..text_embeddings_file import KEY as TEXT_EMBEDDINGS_FILE_KEY
from ..text_embeddings_file import FileTextEmbeddings
from ..vocabulary_scores import (
    SYNONYM_MERGES,
    defer_to_smaller_classes,
    insert_background,
    max_over_synonyms,
    synonym_groups,
)
from .base_config import segmentor_config

__all__ = ["OpenVocabSegmentor", "group_inputs"]

Predictor = Callable[[Tensor], Tensor]


class OpenVocabSegmentor(nn.Module):
    """Base of every ovseg meta-architecture (see the module docstring).

    Training inputs need "image", "sem_seg" (labels index their "vocabulary") and
    "vocabulary"; test inputs need "image" and optionally "height"/"width" and "vocabulary"
    (default: the model's). In eval, :meth:`forward` returns per input
    ``{"sem_seg": (K, height, width)}`` scores over its K names, of the kind the class
    declares in ``sem_seg_scores``.
    """

    #: what "sem_seg" holds, one of ovseg.pseudo.labels.SCORE_KINDS: "logits" (a softmax over
    #: the classes gives the distribution) or "probabilities" (no softmax on top); every
    #: subclass must declare it
    sem_seg_scores: str
    #: parameters that moved (old state-dict name -> new), so old checkpoints still load: the
    #: text classifier's temperature and learnable background lived on the students
    renamed_state: Dict[str, str] = {
        "log_logit_scale": "classifier.log_logit_scale",
        "bg_embed.embedding": "classifier.bg_embed.embedding",
    }
    #: whether the class's text classifier can take its rows from MODEL.OVSEG.
    #: TEXT_EMBEDDINGS_FILE (``self.text_embeddings_file``); others refuse the key
    reads_text_embeddings_file: bool = False
    #: whether every eval output at an input's "height" x "width" is the output at the network
    #: input's unpadded size resized last: "sem_seg" bilinearly (``postprocess_to_original``),
    #: "instances" and "panoptic_seg" by nearest neighbour; then the API and the demo ask for
    #: the input size and resize a large photo's labels a few classes at a time
    #: (``ovseg/modeling/full_size.py``) instead of holding (K, H, W) at the photo's size
    resizes_outputs_last: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        kind = getattr(cls, "sem_seg_scores", None)
        if kind not in SCORE_KINDS:
            raise TypeError(
                f"{cls.__name__} must declare sem_seg_scores, one of {list(SCORE_KINDS)} "
                f"(what its eval output 'sem_seg' holds), got {kind!r}"
            )
        if "from_config" in cls.__dict__ and cls.__init__ is OpenVocabSegmentor.__init__:
            raise TypeError(
                f"{cls.__name__} defines from_config but no __init__: build_model(cfg) passes "
                "the cfg to __init__, which detectron2's @configurable (from detectron2.config "
                "import configurable) turns into from_config's arguments; write "
                "'@configurable def __init__(self, *, ..., **kwargs)' calling "
                "super().__init__(**kwargs) (docs/new_student.md)"
            )

    def __init__(
        self,
        *,
        teacher: Optional[CLIPTeacher],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        vocabulary: Optional[Sequence[str]] = None,
        ignore_value: int = 255,
        inference_mode: str = "whole",
        slide_window: Tuple[int, int] = (512, 512),
        slide_stride: Tuple[int, int] = (426, 426),
        slide_layout: str = "flush",
        slide_windows_per_forward: int = 1,
        size_divisibility: int = 1,
        prompt_names: Optional[Mapping[str, str]] = None,
        test_aug: Optional[TestTimeAug] = None,
        synonym_merge: str = "max",
        background_threshold: float = 0.0,
        background_name: str = "background",
        text_embeddings_file: Optional[FileTextEmbeddings] = None,
        sem_seg_scores: Optional[str] = None,
    ):
        """
        Args:
            teacher (CLIPTeacher, optional): the frozen CLIP; its weights never enter a
                checkpoint. None: the model reads no CLIP (a checkpoint's CLIP keys, from
                one saved with a tower, are ignored).
            pixel_mean, pixel_std: the network's input normalisation, RGB, 0-255 scale.
            vocabulary: names for test inputs without "vocabulary"; None = they must have one.
            ignore_value (int): label of ignored pixels.
            inference_mode (str): "whole" or "slide".
            slide_window, slide_stride ((int, int)): sliding-window size and stride.
            slide_layout (str): "flush" (mmsegmentation's grid, mean padding) or "encoding"
                (LSeg's: windows at multiples of the stride, black padding).
            slide_windows_per_forward (int): windows stacked into one forward.
            size_divisibility (int): a forward's input is padded (bottom/right, with the
                pixel mean) to a multiple of this.
            prompt_names (Mapping[str, str], optional): the text a class's display name is
                embedded as (:mod:`ovseg.clip.prompt_names`), for the model's text classifier.
            test_aug (TestTimeAug, optional): multi-scale / flip testing (TEST.AUG); merging
                logits needs a subclass with :meth:`logit_predictor`.
            synonym_merge (str): how a test class with synonyms is scored, one of
                :data:`SYNONYM_MERGES` (MODEL.OVSEG.SYNONYM_MERGE).
            background_threshold (float): > 0: a test vocabulary's ``background_name`` is
                not embedded but given to pixels whose best class probability is below it
                (TEST.BACKGROUND_THRESHOLD); 0: off.
            background_name (str): that class's name (MODEL.OVSEG.BACKGROUND_CLASS).
            text_embeddings_file (FileTextEmbeddings, optional): class text embeddings from
                a file, for a subclass that ``reads_text_embeddings_file``; None = computed.
            sem_seg_scores (str, optional): this instance's score kind, for a subclass whose
                kind follows its arguments (MaskCLIP's upsampled logits); None = the class's.
        """
        super().__init__()
        # the teacher comes first, so modules it shares (a ZegCLIP tower) are named after it
        self.teacher = teacher
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.vocabulary = tuple(vocabulary) if vocabulary is not None else None
        self.ignore_value = int(ignore_value)
        self.inference_mode = check_choice(inference_mode, INFERENCE_MODES, "TEST.INFERENCE_MODE")
        self.slide_window = tuple(int(v) for v in slide_window)
        self.slide_stride = tuple(int(v) for v in slide_stride)
        self.slide_layout = check_slide_layout(slide_layout)
        self.slide_windows_per_forward = int(slide_windows_per_forward)
        self.size_divisibility = max(int(size_divisibility), 1)
        self.prompt_names = dict(prompt_names or {})
        if sem_seg_scores is not None:
            self.sem_seg_scores = check_choice(sem_seg_scores, SCORE_KINDS, "sem_seg_scores")
        self.test_aug = self._accepted_test_aug(test_aug)
        self.synonym_merge = check_choice(
            synonym_merge, SYNONYM_MERGES, "MODEL.OVSEG.SYNONYM_MERGE"
        )
        if not 0 <= background_threshold <= 1:
            raise ValueError(
                f"TEST.BACKGROUND_THRESHOLD must be in [0, 1] (0 = off), got {background_threshold}"
            )
        self.background_threshold = float(background_threshold)
        self.background_name = background_name
        self.text_embeddings_file = self._accepted_file(text_embeddings_file)

    def _accepted_test_aug(self, test_aug: Optional[TestTimeAug]) -> Optional[TestTimeAug]:
        """``test_aug``, refused when it merges logits the model does not give."""
        if test_aug is not None and test_aug.uses_logits and not self.has_logits():
            raise ValueError(
                f"TEST.AUG.MERGE={test_aug.merge!r} merges logits, but {type(self).__name__}'s "
                f"scores are {self.sem_seg_scores} and it has no logit output; use "
                "TEST.AUG.MERGE 'scores_mean'"
            )
        return test_aug

    @classmethod
    def _accepted_file(cls, file: Optional[FileTextEmbeddings]) -> Optional[FileTextEmbeddings]:
        """``file``, refused by a class that computes its text embeddings."""
        if file is not None and not cls.reads_text_embeddings_file:
            raise ValueError(
                f"{TEXT_EMBEDDINGS_FILE_KEY} is read by ZegCLIP, MaskCLIP and MaskCLIP+ only; "
                f"{cls.__name__} computes its text embeddings: set it to ''"
            )
        return file

    #: the keyword arguments every subclass reads the same way from a config
    base_config = staticmethod(segmentor_config)

    def text_options(self) -> Dict[str, Any]:
        """The :class:`~ovseg.modeling.text_classifier.TextClassifier` arguments the base
        holds: the prompt names and the embeddings file."""
        return {"prompt_names": self.prompt_names, "embeddings_file": self.text_embeddings_file}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self.renamed_state.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        if self.teacher is None:  # no CLIP here: a tower's weights have nowhere to go
            for key in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
                del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ inputs
    def to_device(self, x: Tensor) -> Tensor:
        """``x`` on the model's device; from the CPU to CUDA through pinned memory without
        waiting (a plain copy from pageable memory synchronises host and device)."""
        return tensor_to_device(x, self.device)

    def normalize(self, images: List[Tensor]) -> List[Tensor]:
        """(3, H, W) 0-255 images -> float network inputs on the model's device."""
        return [(self.to_device(x).float() - self.pixel_mean) / self.pixel_std for x in images]

    def input_vocabulary(self, inp: dict, default: Optional[Sequence[str]] = ()) -> Tuple[str, ...]:
        """The class names an input's scores (or labels) refer to.

        Args:
            inp (dict): a model input; its "vocabulary" (list[str]) wins when present.
            default: names for inputs without one; () = the model's ``vocabulary``; None =
                such inputs are an error (training inputs must carry theirs).

        Returns:
            tuple[str, ...]: K names.
        """
        if default == ():
            default = self.vocabulary
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
            raise ValueError(
                f"{where}: 'vocabulary' must be a non-empty list of names, got {names!r}"
            )
        check_unique_names(names, where)  # two rows of one class would split its score
        return tuple(names)

    def training_batch(self, batched_inputs: List[dict]) -> Tuple[ImageList, Tensor]:
        """Padded network inputs and labels of a training batch (labels padded with ignore).

        The labels are checked against their input's vocabulary (:meth:`check_labels`) before
        they leave the host, where the check costs no device synchronisation.

        Returns:
            (ImageList, Tensor): the images, and (B, H, W) long labels on the device.
        """
        for inp in batched_inputs:
            if "sem_seg" not in inp or "vocabulary" not in inp:
                raise ValueError(
                    f"Training input {inp.get('file_name', '')!r} lacks 'sem_seg' or "
                    "'vocabulary'; train with ovseg's dataset mappers (INPUT.DATASET_MAPPER_NAME)"
                )
            self.check_labels(inp["sem_seg"], len(self.input_vocabulary(inp, None)), [inp])
        images = ImageList.from_tensors(
            self.normalize([x["image"] for x in batched_inputs]), self.size_divisibility
        )
        targets = ImageList.from_tensors(
            [self.to_device(x["sem_seg"]) for x in batched_inputs],
            self.size_divisibility,
            pad_value=self.ignore_value,
        ).tensor.long()
        return images, targets

    def content_masks(self, batched_inputs: List[dict], size: Tuple[int, int]) -> Tensor:
        """(B, H, W) bool on the device: each training sample's own pixels in its batch padded
        to ``size``, the mapper's ``"content_size"`` (the sample before the mapper padded it)
        or else the sample's image size (padding by the model only)."""
        sizes = [tuple(x.get("content_size", x["image"].shape[-2:])) for x in batched_inputs]
        hw = self.to_device(torch.tensor(sizes, dtype=torch.long))
        rows = torch.arange(size[0], device=hw.device)[None, :, None] < hw[:, 0, None, None]
        cols = torch.arange(size[1], device=hw.device)[None, None, :] < hw[:, 1, None, None]
        return rows & cols

    def vocabulary_groups(self, batched_inputs: List[dict]) -> Dict[Tuple[str, ...], List[int]]:
        """Indices of the training inputs per vocabulary, in order of first appearance."""
        return group_inputs([self.input_vocabulary(x, None) for x in batched_inputs])

    def check_labels(self, target: Tensor, num_names: int, inputs: List[dict]) -> None:
        """Refuse training labels outside ``[0, num_names)`` that are not the ignore value.

        Args:
            target (Tensor): (B, H, W) labels of a batch.
            num_names (int): size of the batch's vocabulary.
            inputs (list[dict]): the batch's inputs, named in the error.
        """
        ignore = self.ignore_value
        wrong = (target < 0) | ((target >= num_names) & (target != ignore))
        if bool(wrong.any()):
            bad = sorted(set(target[wrong].tolist()))[:5]
            files = [x.get("file_name", "") for x in inputs]
            raise ValueError(
                f"labels {bad} of {files} are outside the {num_names}-name vocabulary and not "
                f"the ignore value {ignore}; the mapper's vocabulary and labels disagree"
            )

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[dict]):
        """
        Args:
            batched_inputs (list[dict]): detectron2 inputs (see the class docstring).

        Returns:
            training: a dict of losses; eval: per input {"sem_seg": (K, height, width)}.
        """
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        """The training losses of a batch."""
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def predict(self, images: Tensor, text: Tensor) -> Tensor:
        """Scores of normalised (b, 3, h, w) images over (K, D) text embeddings, at the
        images' size: (b, K, h, w)."""
        raise NotImplementedError

    def text_embeddings(self, names: Sequence[str]) -> Tensor:
        """(K, D) embeddings the model classifies ``names`` with."""
        raise NotImplementedError

    def predictor(self, names: Tuple[str, ...]) -> Predictor:
        """``fn(images (b, 3, h, w) normalised) -> (b, K, h, w)`` scores over ``names``."""
        text = self.text_embeddings(names)
        return lambda x: self.predict(x, text)

    def has_logits(self) -> bool:
        """Whether :meth:`logit_predictor` gives logits (for test-time logit merging)."""
        return self.sem_seg_scores == "logits" or (
            type(self).logit_predictor is not OpenVocabSegmentor.logit_predictor
        )

    def logit_predictor(self, names: Tuple[str, ...]) -> Predictor:
        """``fn(images) -> (b, K, h, w)`` logits over ``names``, whose
        :meth:`scores_from_logits` are the model's declared scores. A subclass whose scores
        are not logits overrides both."""
        if self.sem_seg_scores != "logits":
            raise NotImplementedError(f"{type(self).__name__} has no logit output")
        return self.predictor(names)

    def scores_from_logits(self, logits: Tensor) -> Tensor:
        """(B, K, H, W) logits -> the declared scores (identity for "logits")."""
        return logits

    def _scores(self, names: Tuple[str, ...], images: Tensor) -> Tensor:
        """(B, K, H, W) scores of normalised images: the background by its threshold, the
        classes with synonyms merged (:mod:`ovseg.modeling.vocabulary_scores`)."""
        keys = [normalize_name(n) for n in names]
        bg = normalize_name(self.background_name)
        if self.background_threshold > 0 and bg in keys and len(names) > 1:
            i = keys.index(bg)
            scores = self._synonym_scores(names[:i] + names[i + 1 :], images)
            logits = self.sem_seg_scores == "logits"
            probs = scores.softmax(dim=1) if logits else scores
            out = insert_background(probs, i, self.background_threshold)
            # logits stay logits: the log keeps the argmax, and a softmax gives the probabilities
            return out.clamp_min(1e-12).log() if logits else out
        return self._synonym_scores(names, images)

    def scored_words(self, names: Tuple[str, ...]) -> Tuple[Tuple[str, ...], Optional[list]]:
        """The names the text side scores for the classes ``names``, and for each class the
        indices of its words (None: one channel per class). With SYNONYM_MERGE ``max``
        every distinct synonym is a channel; a text-embeddings file has one row per class.
        The prompt names map whole class names, so the words are :class:`PromptWords`, which
        the text classifier embeds as they are. The export (:mod:`ovseg.export`) reads the
        same answer."""
        groups = synonym_groups(apply_prompt_names(names, self.prompt_names))
        if self.synonym_merge == "max" and groups is not None and self.text_embeddings_file is None:
            words, members = groups
            return PromptWords(words), defer_to_smaller_classes(members)
        return names, None

    def _synonym_scores(self, names: Tuple[str, ...], images: Tensor) -> Tensor:
        words, members = self.scored_words(names)
        scores = self._protocol_scores(words, images)
        return scores if members is None else max_over_synonyms(scores, members)

    def _protocol_scores(self, names: Tuple[str, ...], images: Tensor) -> Tensor:
        """(B, K, H, W) scores of normalised images, with the test-time protocol."""
        aug = self.test_aug
        if aug is None:
            fn = self.predictor(names)
        else:
            fn = self.logit_predictor(names) if aug.uses_logits else self.predictor(names)
        pad = slide_pad_value(self.slide_layout, self.pixel_mean, self.pixel_std)
        kwargs = dict(mode=self.inference_mode, window=self.slide_window, stride=self.slide_stride,
                      layout=self.slide_layout, pad_value=pad,
                      windows_per_forward=self.slide_windows_per_forward)  # fmt: skip
        if aug is None:
            return semantic_inference(fn, images, **kwargs)
        scores = multiscale_inference(fn, images, aug, **kwargs)
        return self.scores_from_logits(scores) if aug.uses_logits else scores

    @classmethod
    def own_test_path(cls) -> bool:
        """Whether the class replaces :meth:`inference` (FreeSeg, XPM: whole images only)."""
        return cls.inference is not OpenVocabSegmentor.inference

    def inference(self, batched_inputs: List[dict]) -> List[Dict[str, Tensor]]:
        """Eval outputs, one forward per (size, vocabulary): inputs of one size and
        vocabulary share a forward; others are never padded together.

        Returns:
            list[dict]: ``{"sem_seg": (K, height, width)}`` per input.
        """
        keys = [(tuple(x["image"].shape), self.input_vocabulary(x)) for x in batched_inputs]
        results: List[Optional[Dict[str, Tensor]]] = [None] * len(batched_inputs)
        for (_, names), idx in group_inputs(keys).items():
            warning = one_class_warning(names, f"{type(self).__name__}'s test vocabulary")
            if warning:
                log_first_n(logging.WARNING, warning, n=1, key="message")
            images = torch.stack(self.normalize([batched_inputs[i]["image"] for i in idx]))
            scores = self._scores(names, images)
            h, w = images.shape[-2:]
            for j, i in enumerate(idx):
                inp = batched_inputs[i]
                height, width = inp.get("height", h), inp.get("width", w)
                results[i] = {"sem_seg": postprocess_to_original(scores[j], (h, w), height, width)}
        return results
