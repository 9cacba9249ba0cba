"""A prompt-name map renames whole display names once: the synonyms a class is split into
under SYNONYM_MERGE max are embedded as they are, as under mean.

The shipped VOC MaskCLIP config maps "aeroplane" to "airplane" (maskclip_voc20, official
MaskCLIP tools/maskclip_utils/prompt_engineering.py:12). Under max the base split the mapped
names into words and the text classifier applied the map to those words again, so a synonym
that is also a key of the map was renamed ("aeroplane, jet" embedded "airplane", "jet"; under
mean "aeroplane", "jet"), and a class holding both ("aeroplane, airplane"), or ADE20K-847 under
the ADE20K MaskCLIP config ("window" and "windowpane", maskclip_ade150), was refused as a
collision.
"""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import random_image, tiny_maskclip_cfg

from detectron2.modeling import build_model

from ovseg.clip.prompt_names import PromptWords, apply_prompt_names, get_prompt_names


@pytest.fixture(scope="module")
def maskclip(tmp_path_factory):
    cfg = tiny_maskclip_cfg(tmp_path_factory.mktemp("cache"))
    assert cfg.MODEL.CLIP.PROMPT_NAMES == "maskclip_voc20"
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _embedded(model, names, merge):
    """The word lists the teacher's text encoder is asked for when ``names`` are scored."""
    asked = []
    encode = model.teacher.encode_text
    model.teacher.encode_text = lambda words, templates: (asked.append(tuple(words)), encode(
        words, templates))[1]  # fmt: skip
    model.synonym_merge = merge
    try:
        with torch.no_grad():
            model([{"image": random_image(32, 32), "vocabulary": list(names)}])
    finally:
        model.synonym_merge = "max"
        del model.teacher.encode_text
    return asked


@pytest.mark.parametrize("merge", ["max", "mean"])
def test_synonyms_are_embedded_as_written(maskclip, merge):
    assert _embedded(maskclip, ["aeroplane, jet", "cat"], merge) == [("aeroplane", "jet", "cat")]


def test_a_whole_display_name_is_still_mapped(maskclip):
    assert _embedded(maskclip, ["aeroplane", "cat"], "max") == [("airplane", "cat")]


def test_a_class_holding_a_key_and_its_prompt_scores(maskclip):
    assert _embedded(maskclip, ["aeroplane, airplane", "dog"], "max") == [
        ("aeroplane", "airplane", "dog")
    ]


def test_prompt_words_pass_unchanged():
    ade = get_prompt_names("maskclip_ade150")
    words = PromptWords(("window", "windowpane", "tv"))
    assert apply_prompt_names(words, ade) == ("window", "windowpane", "tv")
    with pytest.raises(ValueError, match="collide"):  # as display names they would collide
        apply_prompt_names(tuple(words), ade)
