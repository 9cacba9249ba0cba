"""Write a vocabulary's CLIP text embeddings to a plain tensor file (and the teacher's
cache), e.g. ahead of time on a GPU machine for an 847-class vocabulary;
``tools/dump_text_embeddings.py`` is the command line. The rows are what the config's text
classifier (:mod:`ovseg.modeling.text_classifier`) computes: MODEL.CLIP.PROMPT_NAMES's words,
a class with synonyms the normalised mean of its words' embeddings; those words are the ones
the teacher caches, as a model scoring the vocabulary asks for them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch

from detectron2.config import CfgNode

from ..utils.io import atomic_write
from .build import build_clip_teacher
from .prompt_names import apply_prompt_names, get_prompt_names
from .templates import get_templates

__all__ = ["export_text_embeddings"]


def export_text_embeddings(
    cfg: CfgNode, vocabulary: str, output: Union[str, os.PathLike], templates: str = ""
) -> torch.Tensor:
    """Encode a vocabulary with a config's CLIP teacher and write it to ``output``.

    The file holds ``{"names", "prompts", "templates", "embeddings" (K, D), "fingerprint"}``
    (``prompts``: the text embedded per class, MODEL.CLIP.PROMPT_NAMES applied); it is
    written atomically.

    Args:
        cfg (CfgNode): a config naming the CLIP (MODEL.CLIP.*).
        vocabulary (str): a builtin name (ade150, ade847, coco171, voc20, pc59, pc459), a
            JSON file, or a comma-separated list.
        output: the file to write (.pt); its folder is created.
        templates (str): a template set; default MODEL.CLIP.TEMPLATES.

    Returns:
        Tensor: the (K, D) embeddings written, on the CPU.
    """
    # the classifier's synonym rule; imported here, as the modeling package imports this one's
    from ..modeling.vocabulary_scores import mean_synonym_embeddings
    from ..vocab import Vocabulary, resolve_vocabulary

    output = Path(output)
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder; give a file name, e.g. {output}/x.pt")
    vocab = (
        Vocabulary.from_string(vocabulary) if "," in vocabulary else resolve_vocabulary(vocabulary)
    )
    chosen = get_templates(templates or cfg.MODEL.CLIP.TEMPLATES)
    teacher = build_clip_teacher(cfg)
    prompts = apply_prompt_names(vocab.names, get_prompt_names(cfg.MODEL.CLIP.PROMPT_NAMES))
    encode = lambda words: teacher.encode_text(words, chosen)  # noqa: E731
    embeddings = mean_synonym_embeddings(encode, prompts).cpu()
    data = {
        "names": list(vocab.names),
        "prompts": list(prompts),
        "templates": list(chosen),
        "embeddings": embeddings,
        "fingerprint": teacher.fingerprint,
    }
    atomic_write(output, lambda f: torch.save(data, f))
    return embeddings
