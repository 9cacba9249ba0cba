"""Prompt-name maps: a method's official words reach the text encoder, display names stay."""

from __future__ import annotations

import json

import pytest
import torch

from ovseg.clip.prompt_names import apply_prompt_names, builtin_prompt_name_maps, get_prompt_names
from ovseg.modeling.text_classifier import TextClassifier

VOC = ["dining table", "dog", "Potted Plant", "tv monitor"]


def test_builtin_map_and_application():
    assert "zegclip_voc20" in builtin_prompt_name_maps()
    names = get_prompt_names("zegclip_voc20")
    # matched by normalised display name, unmapped names unchanged, order kept
    assert apply_prompt_names(VOC, names) == ("diningtable", "dog", "pottedplant", "tvmonitor")
    assert get_prompt_names("") == {}


def test_bad_maps_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown prompt-name map 'voc21'.*zegclip_voc20"):
        get_prompt_names("voc21")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(["cat"]))
    with pytest.raises(ValueError, match="JSON object of non-empty strings"):
        get_prompt_names(str(bad))
    twice = tmp_path / "twice.json"
    twice.write_text('{"Cat": "kitty", "cat ": "feline"}')
    with pytest.raises(ValueError, match="lists 'cat ' twice"):
        get_prompt_names(str(twice))
    with pytest.raises(ValueError, match="'cat' and 'kitten' would both be embedded as 'cat'"):
        apply_prompt_names(["cat", "kitten"], {"kitten": "cat"})


def test_classifier_embeds_prompt_names(vit_teacher):
    templates = ("a photo of a {}.",)
    mapped = TextClassifier(vit_teacher, templates, prompt_names=get_prompt_names("zegclip_voc20"))
    plain = TextClassifier(vit_teacher, templates)
    want = vit_teacher.encode_text(("diningtable", "dog", "pottedplant", "tvmonitor"), templates)
    assert torch.allclose(mapped(VOC), want)
    # rows follow the display names; an unmapped name embeds as itself
    assert torch.allclose(mapped(VOC)[1], plain(VOC)[1])
    assert not torch.allclose(mapped(VOC)[0], plain(VOC)[0])


def test_lseg_ade150_uses_the_official_first_word():
    names = get_prompt_names("lseg_ade150")
    # lseg_module.py get_labels: the first ';'-separated word of each official label
    assert names["window"] == "windowpane" and names["road, route"] == "road"
    assert names["chest of drawers, chest, bureau, dresser"] == "chest"
    # the official "screen" for both screen classes would give identical embeddings
    assert names["screen door, screen"] == "screen door"
