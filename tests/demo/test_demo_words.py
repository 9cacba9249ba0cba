"""demo/demo.py's words: synonyms, --augment-vocabulary and --background-threshold, each label
PNG checked against the predictor's probabilities."""

from __future__ import annotations

import numpy as np
import torch
from ovseg_testing import (
    MASKCLIP_CONFIG,
    load_demo_modules,
    tiny_maskclip_opts,
    write_two_region_image,
)
from PIL import Image

from ovseg.engine.defaults import load_config
from ovseg.modeling.vocabulary_scores import VocabularyPlan

predictor_module, demo_cli = load_demo_modules()


def _run(tmp_path, *extra):
    image = write_two_region_image(tmp_path / "in" / "a.png")
    argv = ["--config-file", str(MASKCLIP_CONFIG), "--input", str(image)]
    argv += ["--output", str(tmp_path / "out"), *extra]
    argv += ["--opts", *tiny_maskclip_opts(tmp_path / "cache")]
    torch.manual_seed(0)
    code = demo_cli.main(argv)
    label = np.asarray(Image.open(tmp_path / "out" / "a_label.png")) if code == 0 else None
    return code, label, image


def _probs(tmp_path, image, names):
    torch.manual_seed(0)
    cfg = load_config(str(MASKCLIP_CONFIG), tiny_maskclip_opts(tmp_path / "cache"))
    predictor = predictor_module.OpenVocabPredictor(cfg)
    rgb = np.asarray(Image.open(image).convert("RGB"))
    scores = predictor(rgb, names)["sem_seg"]  # the shipped MaskCLIP config: logits
    return scores.softmax(dim=0) if predictor.score_kind == "logits" else scores


def test_background_threshold_and_augmentation(tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    code, label, image = _run(tmp_path, "--custom-vocabulary", "cat; dog, puppy; grass",
                              "--background-threshold", "0.4")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    # the label values' names, background first, are in the log
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Label PNG")]
    assert said == ["Label PNG values: 0 background, 1 cat, 2 dog, puppy, 3 grass"]
    probs = _probs(tmp_path, image, ["cat", "dog, puppy", "grass"])
    expected = (
        VocabularyPlan.make(["cat", "dog, puppy", "grass"], None, 0.4)
        .probabilities(probs[None])[0]
        .argmax(0)
    )
    np.testing.assert_array_equal(label, expected.numpy())
    code, label, image = _run(tmp_path, "--custom-vocabulary", "cat,grass",
                              "--augment-vocabulary", "voc20")  # fmt: skip
    assert code == 0
    plan = VocabularyPlan.make(["cat", "grass"], "voc20")
    probs = _probs(tmp_path, image, plan.model_names)
    np.testing.assert_array_equal(label, plan.probabilities(probs[None])[0].argmax(0).numpy())
    assert plan.names == ("cat", "grass", "other")


def test_bad_words_are_refused(tmp_path, capsys):
    code, _, _ = _run(tmp_path, "--custom-vocabulary", "cat,dog", "--background-threshold", "2")
    assert (
        code == 2
        and "--background-threshold 2.0 is not in [0, 1] (0: none)" in capsys.readouterr().err
    )
    code, _, _ = _run(tmp_path, "--custom-vocabulary", "cat,dog", "--augment-vocabulary", "x9")
    assert code == 2 and "Unknown vocabulary 'x9'" in capsys.readouterr().err


def test_bad_words_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """A misspelt --augment-vocabulary or a bad --background-threshold costs no model load
    (a ViT-L CLIP's takes a minute)."""

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the words were checked")

    monkeypatch.setattr(demo_cli, "VisualizationDemo", no_model)
    code, _, _ = _run(tmp_path, "--custom-vocabulary", "cat,dog", "--augment-vocabulary", "coco17")
    assert code == 2 and "Unknown vocabulary 'coco17'" in capsys.readouterr().err
    code, _, _ = _run(tmp_path, "--custom-vocabulary", "cat,dog", "--background-threshold", "-1")
    assert code == 2 and "--background-threshold -1.0 is not in [0, 1]" in capsys.readouterr().err
    code, _, _ = _run(tmp_path, "--augment-vocabulary", "voc20", "--task", "panoptic")
    assert code == 2 and "need --task semantic" in capsys.readouterr().err
