"""demo --task instance|panoptic: hand-made predictions drawn by the demo's own functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ovseg_testing import MASKCLIP_CONFIG, load_demo_modules, tiny_maskclip_cfg, tiny_maskclip_opts

from detectron2.structures import Instances

predictor_module, demo_cli = load_demo_modules()
NAMES = ["cat", "dog", "grass"]
H, W = 240, 320


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    torch.manual_seed(0)
    predictor = predictor_module.OpenVocabPredictor(
        tiny_maskclip_cfg(tmp_path_factory.mktemp("clip_cache"))
    )
    return predictor_module.VisualizationDemo(
        predictor.cfg, predictor=predictor, confidence_threshold=0.5, min_overlay_size=0
    )


def _image():
    return np.full((H, W, 3), 128, np.uint8)


def _box(y0, y1, x0, x1):
    """A rectangle given on a 48 x 64 grid, drawn 5 times larger (names stay small)."""
    m = np.zeros((H, W), bool)
    m[5 * y0 : 5 * y1, 5 * x0 : 5 * x1] = True
    return m


def _changed(drawn: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the mask's pixels the drawing changed from the plain grey image."""
    return float((np.abs(drawn.astype(int) - 128).sum(-1) > 10)[mask].mean())


def test_instances_are_drawn_above_the_threshold_and_unseen_hatched(demo):
    cat, dog, faint = _box(4, 20, 4, 24), _box(24, 44, 30, 60), _box(30, 44, 2, 20)
    inst = Instances((H, W))
    inst.pred_masks = torch.from_numpy(np.stack([cat, dog, faint]))
    inst.pred_classes = torch.tensor([0, 1, 2])
    inst.scores = torch.tensor([0.9, 0.8, 0.2])  # the last is below the 0.5 threshold
    out = {"instances": inst}
    seen = demo.draw_prediction(_image(), out, NAMES, "instance").get_image()
    hatched = demo.draw_prediction(_image(), out, NAMES, "instance", unseen=["dog"]).get_image()
    assert seen.shape == (H, W, 3)
    inner = lambda m: m & np.roll(m, 9, 0) & np.roll(m, -9, 0) & np.roll(m, 9, 1)  # noqa: E731
    assert _changed(seen, inner(cat)) > 0.9 and _changed(seen, inner(dog)) > 0.9
    assert _changed(seen, inner(faint)) < 0.05  # not drawn
    # only the unseen instance differs (its stripes)
    diff = np.abs(seen.astype(int) - hatched.astype(int)).sum(-1) > 30
    assert diff[inner(dog)].mean() > 0.2 and not diff[inner(cat)].any()


def test_panoptic_segments_are_drawn_and_void_is_not(demo):
    ids = np.zeros((H, W), np.int32)
    ids[_box(0, 24, 0, 64)] = 1  # grass (stuff)
    ids[_box(30, 44, 10, 40)] = 2  # a cat
    segments = [
        {"id": 1, "category_id": 2, "isthing": False},
        {"id": 2, "category_id": 0, "isthing": True},
    ]
    out = {"panoptic_seg": (torch.from_numpy(ids), segments)}
    drawn = demo.draw_prediction(_image(), out, NAMES, "panoptic").get_image()
    assert _changed(drawn, _box(2, 20, 2, 60)) > 0.9
    assert _changed(drawn, _box(33, 41, 13, 37)) > 0.9
    assert _changed(drawn, _box(46, 48, 45, 64)) == 0  # VOID stays the image
    hatched = demo.draw_prediction(_image(), out, NAMES, "panoptic", unseen=["grass"])
    diff = np.abs(drawn.astype(int) - hatched.get_image().astype(int)).sum(-1) > 30
    assert diff[_box(4, 18, 4, 58)].mean() > 0.2 and not diff[_box(33, 41, 13, 37)].any()


def test_bad_predictions_are_refused(demo):
    ids = torch.ones((H, W), dtype=torch.int32)
    bad = {"panoptic_seg": (ids, [{"id": 1, "category_id": 7, "isthing": False}])}
    with pytest.raises(ValueError, match="category_id 7, outside the 3-name vocabulary"):
        demo.draw_prediction(_image(), bad, NAMES, "panoptic")
    with pytest.raises(ValueError, match="needs the output key 'instances'"):
        demo.draw_prediction(_image(), {"sem_seg": None}, NAMES, "instance")


def test_instance_task_on_a_semantic_only_model_is_a_clear_error(tmp_path, capsys):
    image = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(_image()).save(image)
    argv = ["--config-file", str(MASKCLIP_CONFIG), "--input", str(image), "--task", "instance"]
    argv += ["--output", str(tmp_path / "out"), "--custom-vocabulary", "cat,dog"]
    argv += ["--opts", *tiny_maskclip_opts(tmp_path / "cache")]
    assert demo_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--task instance: MaskCLIP outputs only ['sem_seg'], no 'instances'" in err
    assert "Use --task semantic" in err
    assert not list((tmp_path / "out").glob("*.png"))
