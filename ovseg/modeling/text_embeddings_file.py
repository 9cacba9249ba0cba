"""Class text embeddings read from a file instead of computed: the official runs' own.

The official ZegCLIP and MaskCLIP(+) runs do not embed their class names while training: they
read a (K, D) matrix computed once by OpenAI's ``clip`` package on a GPU in fp16.

- ZegCLIP: ``configs/_base_/datasets/text_embedding/{voc12_single,coco_single,coco_multi}.npy``
  (fp16, ``get_embedding.ipynb`` cells 1-2: each row L2-normalised in fp16, then
  ``np.save``), loaded by ``models/segmentor/zegclip.py:174-176, 199-201`` and used as stored
  (no renormalisation; the decoder's float32 layers see the fp16 values,
  ``decode_seg.py:325-332``);
- MaskCLIP and MaskCLIP+: ``pretrain/<set>_<model>_clip_text.pth``, a bare float32 tensor
  (``tools/maskclip_utils/prompt_engineering.py:48-61, 86, 93``: fp16 GPU embeddings,
  normalised, ``.float()``), copied into a buffer by ``maskclip_head.py:54-56`` (the teacher)
  and ``maskclip_plus_head.py:78-80`` (the student), then used as stored (``cls_seg``,
  ``maskclip_head.py:123-125``, ``maskclip_plus_head.py:123-137``); a learnt background
  (``cls_bg``) is not in the file.

``MODEL.OVSEG.TEXT_EMBEDDINGS_FILE`` gives such a file to ZegCLIP, MaskCLIP and MaskCLIP+
(the MaskCLIP+ teacher included). Its rows are the classes of the config's dataset in order
(:func:`file_classes`: the test set's, else the test vocabulary, else the training set's),
less the learnable background class (``MODEL.OVSEG.BG_EMBED``); both official repositories
order a set's classes by label index, as ovseg's dataset vocabularies do. Any subset of those
classes can then be classified (the training set's seen classes, the unseen ones the
teacher scores); any other name (a demo's free vocabulary) is refused.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from detectron2.data import MetadataCatalog

from ..vocab import Vocabulary, normalize_name, resolve_vocabulary
from .host_copy import device_memo

__all__ = [
    "FileTextEmbeddings",
    "cached_rows",
    "file_classes",
    "file_text_embeddings",
    "read_embeddings_file",
]

KEY = "MODEL.OVSEG.TEXT_EMBEDDINGS_FILE"
SUFFIXES = (".npy", ".pth", ".pt")


def read_embeddings_file(path: str) -> Tensor:
    """A (K, D) float32 CPU tensor from an ``.npy`` array or a ``torch.save``-d tensor.

    fp16 values become float32 exactly; nothing is normalised.
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{KEY} {path!r} does not exist; give the official embeddings file (e.g. ZegCLIP's "
            "configs/_base_/datasets/text_embedding/voc12_single.npy, MaskCLIP's "
            "pretrain/voc_RN50_clip_text.pth) or set it to '' to compute the embeddings"
        )
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        data = torch.from_numpy(np.load(path, allow_pickle=False))
    elif suffix in (".pth", ".pt"):
        data = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{KEY} {path!r}: the suffix {suffix!r} is not one of {list(SUFFIXES)}")
    if not isinstance(data, Tensor) or data.dim() != 2 or not data.is_floating_point():
        what = f"a {type(data).__name__}"
        if isinstance(data, Tensor):
            what = f"a {data.dtype} tensor of shape {tuple(data.shape)}"
        raise ValueError(
            f"{KEY} {path!r} holds {what}; expected one (K, D) floating-point matrix, a row "
            "per class (a bare tensor for .pth, as MaskCLIP's prompt_engineering.py saves)"
        )
    return data.float().contiguous()


class FileTextEmbeddings:
    """The rows of an embeddings file and the class each row belongs to."""

    def __init__(self, path: str, embeddings: Tensor, names: Sequence[str]):
        """
        Args:
            path (str): the file, for messages.
            embeddings (Tensor): (K, D) float32.
            names: the K classes of its rows, in order.
        """
        if embeddings.shape[0] != len(names):
            raise ValueError(
                f"{KEY} {path!r} holds {embeddings.shape[0]} rows, but the vocabulary it must "
                f"describe has {len(names)} classes {list(names)[:6]}...; give the file made "
                "for this dataset's classes (all of them, seen and unseen, in label order, "
                "less a learnable background)"
            )
        self.path = path
        self.embeddings = embeddings
        self.names = tuple(names)
        self._row = {normalize_name(n): i for i, n in enumerate(self.names)}

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def check_dim(self, dim: int) -> None:
        """Refuse rows whose width is not the text embedding width ``dim``."""
        if self.dim != dim:
            raise ValueError(
                f"{KEY} {self.path!r} holds {self.dim}-dimensional embeddings, but the CLIP "
                f"teacher's text embeddings are {dim}-dimensional (MODEL.CLIP.MODEL_NAME); the "
                "file was made for another CLIP model"
            )

    def check_names(self, names: Sequence[str], where: str) -> None:
        """Refuse names without a row (``where`` says whose they are)."""
        missing = [n for n in names if normalize_name(n) not in self._row]
        if missing:
            raise ValueError(
                f"{where} {missing[:6]} have no row in {KEY} {self.path!r}, which holds the "
                f"classes {list(self.names)[:6]}... only; a file of embeddings cannot describe "
                f"other names: set {KEY} '' to compute them (e.g. for a free vocabulary)"
            )

    def rows(self, names: Sequence[str], learnt: Optional[str] = None) -> Tensor:
        """(k, D) the rows of ``names`` (their own classes), on the CPU; the class ``learnt``
        (a learnable background, not in the file) gets zeros, to be replaced."""
        learnt = normalize_name(learnt) if learnt is not None else None
        self.check_names([n for n in names if normalize_name(n) != learnt], "The classes")
        zero = torch.zeros(1, self.dim)
        table = torch.cat([self.embeddings, zero])
        index = [self._row.get(normalize_name(n), len(self.names)) for n in names]
        return table.index_select(0, torch.tensor(index, dtype=torch.long))


def file_classes(cfg) -> Tuple[str, ...]:
    """The classes a config's file holds, in order: the first test dataset's, else
    MODEL.OVSEG.TEST_VOCABULARY, else the first training dataset's; less the learnable
    background (MODEL.OVSEG.BG_EMBED)."""
    names = None
    for datasets in (cfg.DATASETS.TEST, None, cfg.DATASETS.TRAIN):
        if datasets is None:
            spec = cfg.MODEL.OVSEG.TEST_VOCABULARY
            names = resolve_vocabulary(spec).names if spec.strip() else None
        elif datasets and MetadataCatalog.get(datasets[0]).get("stuff_classes", None):
            names = Vocabulary.from_metadata(MetadataCatalog.get(datasets[0])).names
        if names:
            break
    if not names:
        raise ValueError(
            f"{KEY} needs the classes its rows are for: set DATASETS.TEST, "
            "MODEL.OVSEG.TEST_VOCABULARY or DATASETS.TRAIN"
        )
    if cfg.MODEL.OVSEG.BG_EMBED:
        bg = normalize_name(cfg.MODEL.OVSEG.BACKGROUND_CLASS)
        names = [n for n in names if normalize_name(n) != bg]
    return tuple(names)


def file_text_embeddings(cfg) -> Optional[FileTextEmbeddings]:
    """The file of ``MODEL.OVSEG.TEXT_EMBEDDINGS_FILE`` with its classes
    (:func:`file_classes`); None when unset. The names a model is asked for are checked
    against them when it is asked (an evaluation-only config may name another training set)."""
    path = cfg.MODEL.OVSEG.TEXT_EMBEDDINGS_FILE
    if not path:
        return None
    return FileTextEmbeddings(path, read_embeddings_file(path), file_classes(cfg))


def cached_rows(
    emb: FileTextEmbeddings,
    names: Sequence[str],
    device: torch.device,
    cache: Dict,
    learnt: Optional[str] = None,
) -> Tensor:
    """:meth:`FileTextEmbeddings.rows` on ``device``, memoised in ``cache`` (no copy from
    the host per training step; :func:`~ovseg.modeling.host_copy.device_memo`)."""
    key = (tuple(names), str(device), learnt)
    return device_memo(cache, key, lambda: emb.rows(names, learnt).to(device))
