"""The frozen text side of every student: CLIP text embeddings of a vocabulary as a classifier.

:class:`TextClassifier` turns class names into the (K, D) matrix a student classifies pixel
(or query) embeddings with: the teacher's prompt-ensembled text embeddings (memoised per
vocabulary by the teacher, in memory and on disk), optionally one class's row replaced by
a learnable embedding (:class:`LearnedBackground`), and the temperature multiplying cosines.
The text encoder may see other words than the display names (a method's official prompt
names, MODEL.CLIP.PROMPT_NAMES); outputs are always indexed by the display names. A name with
synonyms (``"road, route"``) gets the normalised mean of its synonyms' embeddings. With an
embeddings file (MODEL.OVSEG.TEXT_EMBEDDINGS_FILE, :mod:`.text_embeddings_file`) a class's row
is read from it instead, as stored (the official code does not renormalise it).
The teacher is not a submodule of the classifier: it belongs to the meta-architecture, and
its weights never enter a checkpoint.
"""

from __future__ import annotations

import math
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..clip import CLIPTeacher
from ..clip.prompt_names import apply_prompt_names
from ..vocab import check_templates, normalize_name
from .host_copy import device_memo
from .text_embeddings_file import FileTextEmbeddings, cached_rows
from .vocabulary_scores import mean_synonym_embeddings

__all__ = ["LearnedBackground", "TextClassifier", "pixel_text_product"]


class LearnedBackground(nn.Module):
    """A learnable embedding that stands in for one class's CLIP text embedding.

    A "background" class is not a thing CLIP has a word for: its text embedding is a generic
    direction near every class's (MaskCLIP+'s official ``cls_bg``). Where the vocabulary holds
    ``name`` (case-insensitively), :meth:`forward` puts this embedding in its row.
    """

    def __init__(self, name: str, dim: int):
        super().__init__()
        self.name = normalize_name(name)
        self.embedding = nn.Parameter(torch.randn(1, dim) * 0.02)

    @staticmethod
    def check_trained(name: str, trained: Sequence[str], where: str) -> None:
        """Refuse a background class outside the names that get a loss (``where`` says
        which), whose embedding would never learn; no names (no training set) pass.

        Args:
            name (str): MODEL.OVSEG.BACKGROUND_CLASS.
            trained: the names that get a loss.
            where (str): e.g. "in the training vocabulary".
        """
        if trained and normalize_name(name) not in {normalize_name(n) for n in trained}:
            raise ValueError(
                f"MODEL.OVSEG.BG_EMBED: the background class {name!r} (MODEL.OVSEG."
                f"BACKGROUND_CLASS) is not {where} {list(trained)[:8]}...; its learnable "
                "embedding would never be trained"
            )

    def _rows(self, names: Tuple[str, ...], device: torch.device) -> Optional[Tensor]:
        """(K, 1) bool on ``device``: the background's rows (None: no row); memoised, so a
        training step copies nothing from the host (a copy from pageable memory waits)."""

        def make():
            rows = [normalize_name(n) == self.name for n in names]
            return torch.tensor(rows, device=device)[:, None] if any(rows) else None

        return device_memo(self.__dict__.setdefault("_rows_cache", {}), (names, device), make)

    def forward(self, text: Tensor, names: Sequence[str], normalize: bool = False) -> Tensor:
        """(K, D) text embeddings of ``names`` -> the same with the background row replaced
        (by the L2-normalised embedding with ``normalize``)."""
        rows = self._rows(tuple(names), text.device)
        if rows is None:
            return text
        embedding = F.normalize(self.embedding, dim=-1) if normalize else self.embedding
        return torch.where(rows, embedding.to(text.dtype), text)


class TextClassifier(nn.Module):
    """CLIP text embeddings of class names, a learnable background and a temperature."""

    def __init__(
        self,
        teacher: CLIPTeacher,
        templates: Sequence[str],
        *,
        logit_scale: float = 1 / 0.07,
        learnable_logit_scale: bool = False,
        background_class: Optional[str] = None,
        renormalize: bool = False,
        prompt_names: Optional[Mapping[str, str]] = None,
        embeddings_file: Optional[FileTextEmbeddings] = None,
    ):
        """
        Args:
            teacher (CLIPTeacher): the frozen CLIP whose text encoder embeds the names.
            templates: prompt templates, each with one "{}".
            logit_scale (float): the temperature multiplying cosines.
            learnable_logit_scale (bool): learn it (in log space, capped at 100 as CLIP).
            background_class (str, optional): name whose text embedding is replaced by a
                learnable one (None = CLIP's text for every name).
            renormalize (bool): L2-normalise the rows again after the background is put in
                (always done when there is a learnable background).
            prompt_names (Mapping[str, str], optional): normalised display name -> the text
                embedded for it (:mod:`ovseg.clip.prompt_names`); None = the names as given.
            embeddings_file (FileTextEmbeddings, optional): the classes' rows read from a
                file, used as stored instead of the teacher's (templates, prompt names and
                ``renormalize`` then do not apply; a learnable background row is normalised).
        """
        super().__init__()
        if not logit_scale > 0:
            raise ValueError(f"MODEL.OVSEG.LOGIT_SCALE must be positive, got {logit_scale}")
        # a list, not an attribute: the teacher is the meta-architecture's submodule only
        self._teacher: List[CLIPTeacher] = [teacher]
        self.templates = check_templates(templates, "MODEL.CLIP.TEMPLATES")
        # a fixed temperature stays a Python float, multiplied as given
        self.fixed_logit_scale = None if learnable_logit_scale else float(logit_scale)
        if learnable_logit_scale:
            self.log_logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))
        self.bg_embed = (
            LearnedBackground(background_class, teacher.embed_dim)
            if background_class is not None
            else None
        )
        self.renormalize = bool(renormalize)
        self.prompt_names = dict(prompt_names or {})
        if embeddings_file is not None:
            embeddings_file.check_dim(teacher.embed_dim)
        # a plain attribute: the file's rows never enter a checkpoint
        self.embeddings_file = embeddings_file
        self._file_rows: dict = {}

    @property
    def from_file(self) -> bool:
        """Whether the classes' embeddings are an embeddings file's rows."""
        return self.embeddings_file is not None

    def unit(self, text: Tensor) -> Tensor:
        """``text`` L2-normalised, or as it is when it holds an embeddings file's rows (the
        official code uses those as stored: ZegCLIP ``zegclip.py:174-176``, MaskCLIP
        ``maskclip_head.py:123-125``)."""
        return text if self.from_file else F.normalize(text, dim=-1)

    @property
    def teacher(self) -> CLIPTeacher:
        return self._teacher[0]

    @property
    def logit_scale(self) -> Union[float, Tensor]:
        """The temperature: the fixed float, or the learnt scalar tensor (capped at 100)."""
        if self.fixed_logit_scale is not None:
            return self.fixed_logit_scale
        return self.log_logit_scale.exp().clamp(max=100.0)

    def forward(self, names: Sequence[str]) -> Tensor:
        """(K, D) L2-normalised embeddings of ``names`` on the classifier's device (an
        embeddings file's rows as stored)."""
        if self.embeddings_file is not None:
            bg = self.bg_embed.name if self.bg_embed is not None else None
            file, device = self.embeddings_file, self.teacher.device
            text = cached_rows(file, names, device, self._file_rows, bg)
            if self.bg_embed is not None:  # normalised alone (maskclip_plus_head.py:133)
                text = self.bg_embed(text, names, normalize=True)
            return text
        prompts = apply_prompt_names(names, self.prompt_names)
        encode = lambda words: self.teacher.encode_text(words, self.templates)  # noqa: E731
        text = mean_synonym_embeddings(encode, prompts).to(self.teacher.device)
        if self.bg_embed is not None:
            text = self.bg_embed(text, names)
        if self.bg_embed is not None or self.renormalize:
            text = F.normalize(text, dim=-1)
        return text

    def logits(self, embeddings: Tensor, text: Tensor) -> Tensor:
        """``logit_scale * (embeddings . text)``: (B, D, h, w) x (K, D) -> (B, K, h, w)."""
        return self.logit_scale * pixel_text_product(embeddings, text.to(embeddings.dtype))


def pixel_text_product(embeddings: Tensor, text: Tensor) -> Tensor:
    """Each pixel's dot product with each text row: (B, D, h, w) x (K, D) -> (B, K, h, w).

    One batched product with the text broadcast over the batch, reading the embeddings as
    they lie (channels-last too) and writing the logits in place: neither operand is copied,
    forward or backward, where ``einsum("bdhw,kd->bkhw")`` first copied the embeddings
    pixel-major (a pass over LSeg's full-size (B, 512, h, w) embeddings per step).
    """
    b, _, h, w = embeddings.shape
    return torch.bmm(text.expand(b, -1, -1), embeddings.flatten(2)).view(b, -1, h, w)
