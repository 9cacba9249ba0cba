"""Every registered ovseg meta-architecture has one shape: it derives from
OpenVocabSegmentor, declares what its "sem_seg" holds, and the demo predictor and
pseudo-label generation read those scores exactly once (no softmax over probabilities)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ovseg_testing import (
    eval_mapper,
    load_demo_modules,
    make_store,
    tiny_freeseg_cfg,
    tiny_freeseg_prompt_cfg,
    tiny_lseg_cfg,
    tiny_maskclip_cfg,
    tiny_maskclip_plus_cfg,
    tiny_xpm_cfg,
    tiny_zegclip_cfg,
)
from PIL import Image

from detectron2.modeling import META_ARCH_REGISTRY

import ovseg  # noqa: F401  (registers the meta-architectures)
from ovseg.api import build_inference_model
from ovseg.modeling.full_size import labels_at_size, outputs_at_size, scores_at_size
from ovseg.modeling.meta_arch.base import OpenVocabSegmentor
from ovseg.pseudo import SCORE_KINDS, generate_pseudo_labels

NAMES = ["red thing", "green thing", "blue thing"]
# one tiny config per registered ovseg meta-architecture
TINY_CFGS = {
    "LSeg": tiny_lseg_cfg,
    "ZegCLIP": tiny_zegclip_cfg,
    "MaskCLIP": tiny_maskclip_cfg,
    "MaskCLIPPlus": tiny_maskclip_plus_cfg,
    "FreeSegPromptLearner": tiny_freeseg_prompt_cfg,
    "FreeSeg": tiny_freeseg_cfg,
    "XPMTeacher": lambda cache: tiny_xpm_cfg(cache, "XPMTeacher"),
    "XPMStudent": lambda cache: tiny_xpm_cfg(cache, "XPMStudent"),
}


def _ovseg_meta_archs():
    return {name: cls for name, cls in META_ARCH_REGISTRY if cls.__module__.startswith("ovseg.")}


def _cfg(name: str, cache: Path):
    assert name in TINY_CFGS, f"no tiny config for {name}: add one to ovseg_testing.models"
    return TINY_CFGS[name](cache)


def _image(h: int = 40, w: int = 52) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 40, 40)
    image[:, w // 2 :] = (40, 160, 40)
    image[h // 2 :, w // 3 :] = (30, 30, 190)
    return image


def _confidence_once(scores: torch.Tensor, kind: str) -> np.ndarray:
    """The confidence of scores read once: a softmax only over logits."""
    probs = scores.softmax(dim=0) if kind == "logits" else scores.clamp(0.0, 1.0)
    return probs.max(dim=0).values.numpy()


def test_every_meta_arch_has_the_one_shape():
    archs = _ovseg_meta_archs()
    assert {"LSeg", "ZegCLIP", "MaskCLIP", "MaskCLIPPlus"} <= set(archs)
    for name, cls in archs.items():
        assert issubclass(cls, OpenVocabSegmentor), f"{name} does not derive from the base"
        assert cls.sem_seg_scores in SCORE_KINDS, name


def test_an_undeclared_score_kind_is_refused():
    with pytest.raises(TypeError, match="must declare sem_seg_scores"):

        class Undeclared(OpenVocabSegmentor):
            pass


def test_a_from_config_without_a_configurable_init_is_refused_with_the_fix():
    """A student written as the guide's table reads (from_config, no __init__) failed at
    build with "__init__() takes 1 positional argument but 2 were given"."""
    with pytest.raises(TypeError, match=r"Mine defines from_config but no __init__.*@configurable"):

        class Mine(OpenVocabSegmentor):
            sem_seg_scores = "logits"

            @classmethod
            def from_config(cls, cfg):
                return {}


@pytest.mark.parametrize("name", sorted(_ovseg_meta_archs()))
def test_demo_and_pseudo_labels_read_scores_once(name, tmp_path):
    cache = tmp_path / "clip_cache"
    cfg = _cfg(name, cache)
    cfg.INPUT.MIN_SIZE_TEST = 0  # no resize: scores at the image's own size
    torch.manual_seed(0)
    predictor_module, _ = load_demo_modules()
    demo = predictor_module.VisualizationDemo(cfg)
    model = demo.predictor.model
    kind = model.sem_seg_scores  # the class's, or an instance's (MaskCLIP's UPSAMPLE_LOGITS)
    assert demo.predictor.score_kind == kind

    image = _image()
    predictions, _ = demo.run_on_image(image, NAMES)
    scores = predictions["sem_seg"]
    assert tuple(scores.shape) == (3, 40, 52)
    # the declaration matches the output: scores that already sum to one over the classes
    # (a softmax) must not be declared logits, which would be softmaxed a second time
    if torch.allclose(scores.sum(dim=0), torch.ones(()), atol=1e-4):
        assert kind == "probabilities", f"{name} returns a softmax but declares {kind!r}"
    want = _confidence_once(scores, kind)
    np.testing.assert_allclose(predictions["confidence"], want, rtol=1e-6, atol=1e-7)

    # the pseudo-label path: the same model, the same image, the stored confidence
    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    mapper = eval_mapper(NAMES)
    store = make_store(tmp_path / "store", NAMES, dataset="contract")
    dicts = [{"file_name": str(path), "image_id": "img"}]
    generate_pseudo_labels(model, dicts, mapper, store, threshold=0.0, progress=False)
    label, confidence = store.read("img")
    with torch.no_grad():
        again = model([mapper(dict(dicts[0]))])[0]["sem_seg"]
    np.testing.assert_allclose(confidence, _confidence_once(again, kind), atol=2e-3)
    assert (label == again.argmax(dim=0).numpy()).mean() > 0.99


@pytest.mark.parametrize(
    "name", sorted(n for n, c in _ovseg_meta_archs().items() if c.resizes_outputs_last)
)
def test_outputs_resized_last_are_the_models_own(name, tmp_path):
    """A model that declares ``resizes_outputs_last``: its outputs at a large size are its
    outputs at the input size resized by ovseg.modeling.full_size (what the API and the demo
    do for large photos), semantic, instance and panoptic alike."""
    cfg = _cfg(name, tmp_path / "clip_cache")
    if name == "FreeSeg":
        cfg.MODEL.FREESEG.TEST_TASKS = ["semantic", "instance", "panoptic"]
    torch.manual_seed(0)
    model = build_inference_model(cfg)
    image = torch.as_tensor(_image().transpose(2, 0, 1).copy())
    size = (83, 101)  # not a whole multiple of the input's 40 x 52
    with torch.no_grad():
        full = model([{"image": image, "height": size[0], "width": size[1], "vocabulary": NAMES}])
        small = model([{"image": image, "height": 40, "width": 52, "vocabulary": NAMES}])
    full, small = full[0], outputs_at_size(small[0], size)
    kind = model.sem_seg_scores
    want = full["sem_seg"].float()
    want = want.softmax(dim=0) if kind == "logits" else want
    got = scores_at_size(small["sem_seg"], size, kind=kind)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    label, confidence = labels_at_size(
        small["sem_seg"], size, kind=kind, max_elements=size[0] * size[1]
    )
    # the resize kernel vectorises over a chunk's classes, so scores may differ in the last
    # bit: labels agree wherever the best class leads by more than rounding
    top2 = want.topk(2, dim=0).values
    clear = top2[0] - top2[1] > 1e-6
    assert clear.float().mean() > 0.5
    assert torch.equal(label[clear], want.argmax(dim=0)[clear])
    torch.testing.assert_close(confidence, want.max(dim=0).values.clamp(0, 1), rtol=1e-5, atol=1e-6)
    assert sorted(full) == sorted(small)
    if name == "FreeSeg":
        assert {"instances", "panoptic_seg"} <= set(full)
    if "instances" in full:
        a, b = full["instances"], small["instances"]
        assert a.image_size == b.image_size == size
        for key in ("pred_masks", "pred_classes", "scores"):
            assert torch.equal(a.get(key), b.get(key)), key
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor)
    if "panoptic_seg" in full:
        assert torch.equal(full["panoptic_seg"][0], small["panoptic_seg"][0])
        assert full["panoptic_seg"][1] == small["panoptic_seg"][1]
