"""Class names longer than the text context: never a silent collision; a one-class
vocabulary warns (model and demo)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ovseg_testing import (
    MASKCLIP_CONFIG,
    TINY_VIT,
    load_demo_modules,
    random_clip_model,
    tiny_maskclip_cfg,
    tiny_maskclip_opts,
    write_two_region_image,
)
from ovseg_testing.logs import records

from ovseg.clip import CLIPTeacher

LONG = " ".join(["striped"] * 80)  # 80 tokens: past the tiny CLIP's 77-token context


@pytest.fixture(scope="module")
def teacher():
    model, tokenizer, name = random_clip_model(TINY_VIT)
    return CLIPTeacher(model, tokenizer, name=name)


def test_names_equal_within_the_context_are_an_error(teacher):
    with pytest.raises(ValueError, match="identical text tokens") as info:
        teacher.encode_text([f"{LONG} cat", f"{LONG} dog", "grass"], ["a photo of a {}."])
    assert "cat" in str(info.value) and "dog" in str(info.value)
    assert "striped striped" in str(info.value)  # the text kept is shown


def test_a_cut_keeping_names_distinct_warns_with_the_cut_text(teacher):
    with records("ovseg.clip.tokens") as got:
        emb = teacher.encode_text([f"cat {LONG}", f"dog {LONG}"], ["a photo of a {}."])
    assert emb.shape[0] == 2 and not torch.allclose(emb[0], emb[1])
    messages = [r.getMessage() for r in got]
    assert len(messages) == 1 and "cut" in messages[0]
    assert "'a photo of a cat striped" in messages[0]  # what the text encoder sees


def test_short_names_give_no_warning(teacher):
    with records("ovseg.clip.tokens") as got:
        teacher.encode_text(["cat", "dog"], ["a photo of a {}."])
    assert got == []


def test_model_warns_about_a_one_class_vocabulary(tmp_path):
    predictor_module, _ = load_demo_modules()
    torch.manual_seed(0)
    predictor = predictor_module.OpenVocabPredictor(tiny_maskclip_cfg(tmp_path / "cache"))
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with records("ovseg.modeling.meta_arch.base") as got:
        predictor(image, ["zebra"])
    assert any("one class ('zebra')" in r.getMessage() for r in got)
    with records("ovseg.modeling.meta_arch.base") as got:
        predictor(image, ["zebra", "horse"])
    assert got == []


def test_demo_warns_about_a_one_class_vocabulary(tmp_path):
    _, demo_cli = load_demo_modules()
    image = write_two_region_image(tmp_path / "in.png")
    argv = ["--config-file", str(MASKCLIP_CONFIG), "--input", str(image)]
    argv += ["--output", str(tmp_path / "out"), "--custom-vocabulary", "zebra"]
    argv += ["--opts", *tiny_maskclip_opts(tmp_path / "cache")]
    with records("demo") as got:
        assert demo_cli.main(argv) == 0
    assert any("one class ('zebra')" in r.getMessage() for r in got)
