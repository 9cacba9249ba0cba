# Follows how XPM's class embeddings are made (hbdat/cvpr22_cross_modal_pseudo_labeling
# @b460423: preprocess/coco/construct_coco_json.py:176, 200-244; modeling/language_backbone/
# transformers.py:11-24, 27-68; modeling/detector/st_generalized_rcnn.py:164-177, 202-215),
# re-written.
"""XPM's official class embeddings: BERT's input word-piece embeddings of a class name.

The official classes are not CLIP text: a class is the mean of ``bert-base-uncased``'s input
word embeddings (the token table, no transformer layer) over the word pieces of its name,
special tokens and padding left out (``construct_coco_json.py:206-224``: ``special_tokens_
mask`` marks [CLS], [SEP] and the padding). These ``BertEmb`` vectors are stored
unnormalised in the annotation json and the teacher scores them as they are
(``data/datasets/coco.py:74-91``, ``engine/inference.py:124-127``); the student L2-normalises
them first (``st_generalized_rcnn.py:164-177, 413-415``, no exemplar ever being collected).
The background is a zero row (logit 0). Logits are the raw dot product with the projected
RoI feature (``roi_box_predictors.py:65-67``), no temperature.

Needs ``transformers`` (``pip install -e .[xpm-official]``); the BERT is read from the
Hugging Face cache or a local folder (``save_pretrained``), never stored in a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["BertClassEmbeddings", "bert_width", "check_bert_folder", "name_embedding"]


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "MODEL.XPM.CLASS_EMBEDDING 'bert' needs the transformers package: "
            "pip install -e .[xpm-official] (or pip install transformers)"
        ) from e
    return transformers


def _one_line(error: Exception) -> str:
    """transformers' multi-line message on one line (errors end a tool in one line)."""
    return " ".join(str(error).split())


def check_bert_folder(name: str) -> None:
    """Refuse a local MODEL.XPM.BERT_NAME that is not a ``save_pretrained`` folder:
    transformers reads a folder without ``config.json`` as the default BERT, silently."""
    if os.path.isdir(name):
        missing = [f for f in ("config.json", "vocab.txt") if not os.path.isfile(f"{name}/{f}")]
        if missing:
            raise OSError(
                f"MODEL.XPM.BERT_NAME={name!r} is a folder without {', '.join(missing)}; give "
                "the folder a BERT and its tokenizer were saved into with save_pretrained"
            )
    elif name.startswith(("/", "./", "../", "~")):
        raise OSError(
            f"MODEL.XPM.BERT_NAME={name!r} does not exist; give the folder of a BERT saved "
            "with save_pretrained, or a Hugging Face name (bert-base-uncased)"
        )


def bert_width(name: str) -> int:
    """The hidden width of the BERT ``name`` (a hub name or a ``save_pretrained`` folder)."""
    tf = _transformers()
    check_bert_folder(name)
    try:
        return int(tf.BertConfig.from_pretrained(name).hidden_size)
    except OSError as e:
        raise OSError(
            f"MODEL.XPM.BERT_NAME={name!r} cannot be read ({_one_line(e)}); give the folder of a "
            "BERT saved with save_pretrained, or download bert-base-uncased into the Hugging "
            "Face cache first"
        ) from e


def name_embedding(table: Tensor, token_ids: Sequence[int]) -> Tensor:
    """The mean of ``table``'s rows of a name's word pieces (``(D,)``).

    Args:
        table (Tensor): (V, D) input word embeddings.
        token_ids: the name's word pieces, without special tokens.
    """
    if len(token_ids) == 0:
        raise ValueError("a class name without any word piece cannot be embedded")
    return table[torch.as_tensor(list(token_ids), dtype=torch.long)].mean(dim=0)


class BertClassEmbeddings:
    """Class names -> (K, D) official BERT class embeddings, memoised; no module state."""

    def __init__(self, name: str = "bert-base-uncased"):
        """
        Args:
            name (str): ``bert-base-uncased`` (the official) or a local folder holding a BERT
                saved with ``save_pretrained`` (its tokenizer beside it).
        """
        self.name = name
        self._table = None
        self._tokenizer = None
        self._memo: Dict[str, Tensor] = {}
        self._fingerprint: Optional[str] = None

    def _load(self) -> None:
        tf = _transformers()
        check_bert_folder(self.name)
        try:
            # the official tokenizer class (transformers.py:13): the slow WordPiece one
            self._tokenizer = tf.BertTokenizer.from_pretrained(self.name)
            # transformers < 4.36 draws from torch's global generator while loading; forked,
            # the layers built after it start from the same weights on every version
            with torch.random.fork_rng(devices=[]):
                model = tf.BertModel.from_pretrained(self.name)
        except OSError as e:
            raise OSError(
                f"MODEL.XPM.BERT_NAME={self.name!r} cannot be loaded ({_one_line(e)}); give the "
                "folder "
                "of a BERT and its tokenizer saved with save_pretrained, or download "
                "bert-base-uncased into the Hugging Face cache first"
            ) from e
        self._table = model.get_input_embeddings().weight.detach().float().clone()

    @property
    def table(self) -> Tensor:
        """(V, D) the input word-embedding table (official ``bert.embeddings``)."""
        if self._table is None:
            self._load()
        return self._table

    def token_ids(self, name: str) -> list:
        """A class name's word pieces (lower-cased by the uncased tokenizer)."""
        if self._tokenizer is None:
            self._load()
        return self._tokenizer(name, add_special_tokens=False)["input_ids"]

    def fingerprint(self) -> str:
        """SHA-256 hex of what decides the embeddings: the tokenizer's word pieces and case
        folding and the input word-embedding table (not the name or folder they came from)."""
        if self._fingerprint is None:
            table = self.table.contiguous()
            tok = self._tokenizer
            head = {"vocab": sorted(tok.get_vocab().items()), "lower": tok.do_lower_case}
            digest = hashlib.sha256(json.dumps(head).encode())
            digest.update(str(tuple(table.shape)).encode())
            digest.update(table.numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @torch.no_grad()
    def __call__(self, names: Sequence[str]) -> Tensor:
        """(K, D) unnormalised embeddings of ``names`` (the official ``BertEmb``)."""
        for n in names:
            if n not in self._memo:
                self._memo[n] = name_embedding(self.table, self.token_ids(n))
        return torch.stack([self._memo[n] for n in names])
