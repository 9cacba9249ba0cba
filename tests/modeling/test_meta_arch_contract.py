"""Every registered ovseg meta-architecture has one shape: it derives from
OpenVocabSegmentor, declares what its "sem_seg" holds, and the demo predictor and
pseudo-label generation read those scores exactly once (no softmax over probabilities)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lseg_utils import tiny_lseg_cfg
from maskclip_plus_utils import tiny_cfg as tiny_maskclip_plus_cfg
from ovseg_testing import ROOT
from PIL import Image
from zegclip_utils import tiny_zegclip_cfg

from detectron2.modeling import META_ARCH_REGISTRY

import ovseg  # noqa: F401  (registers the meta-architectures)
from ovseg.data.dataset_mappers import SemanticDatasetMapper
from ovseg.engine.defaults import load_config
from ovseg.modeling.meta_arch.base import SEM_SEG_SCORES, OpenVocabSegmentor
from ovseg.pseudo import PseudoLabelStore, generate_pseudo_labels

NAMES = ["red thing", "green thing", "blue thing"]
TINY_VIT = str(ROOT / "configs" / "clip" / "tiny_vit.json")


def _demo_predictor_module():
    """demo/predictor.py, imported as ``python demo/demo.py`` imports it."""
    import sys

    if str(ROOT / "demo") not in sys.path:
        sys.path.insert(0, str(ROOT / "demo"))
    import predictor  # noqa: PLC0415  (found through demo/)

    return predictor


def _ovseg_meta_archs():
    return {name: cls for name, cls in META_ARCH_REGISTRY if cls.__module__.startswith("ovseg.")}


def _cfg(name: str, cache: Path):
    if name == "LSeg":
        return tiny_lseg_cfg(cache)
    if name == "ZegCLIP":
        return tiny_zegclip_cfg(cache)
    if name == "MaskCLIP":
        config = ROOT / "configs" / "voc" / "maskclip" / "maskclip_vitb16_bs1.yaml"
        return load_config(
            str(config),
            ["MODEL.DEVICE", "cpu", "MODEL.CLIP.MODEL_NAME", TINY_VIT, "MODEL.CLIP.PRETRAINED", "",
             "MODEL.CLIP.CACHE_DIR", str(cache)],
        )  # fmt: skip
    if name == "MaskCLIPPlus":
        return tiny_maskclip_plus_cfg(cache)
    raise AssertionError(f"no tiny config for {name}: add one to this test")


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
        assert cls.sem_seg_scores in SEM_SEG_SCORES, name


def test_an_undeclared_score_kind_is_refused():
    with pytest.raises(TypeError, match="must declare sem_seg_scores"):

        class Undeclared(OpenVocabSegmentor):
            pass


@pytest.mark.parametrize("name", sorted(_ovseg_meta_archs()))
def test_demo_and_pseudo_labels_read_scores_once(name, tmp_path):
    cache = tmp_path / "clip_cache"
    cfg = _cfg(name, cache)
    cfg.INPUT.MIN_SIZE_TEST = 0  # no resize: scores at the image's own size
    torch.manual_seed(0)
    demo = _demo_predictor_module().VisualizationDemo(cfg)
    model = demo.predictor.model
    kind = type(model).sem_seg_scores
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
    mapper = SemanticDatasetMapper(
        is_train=False,
        augmentations=[],
        image_format="RGB",
        ignore_label=255,
        size_divisibility=-1,
        vocabulary=NAMES,
    )
    manifest = {
        "fingerprint": "f" * 64,
        "teacher": {"clip": "c" * 64, "settings": {"method": name}},
        "vocabulary": NAMES,
        "unseen": [],
        "threshold": 0.0,
        "dataset": "contract",
    }
    store = PseudoLabelStore.create(str(tmp_path / "store"), manifest)
    dicts = [{"file_name": str(path), "image_id": "img"}]
    generate_pseudo_labels(model, dicts, mapper, store, threshold=0.0, progress=False)
    label, confidence = store.read("img")
    with torch.no_grad():
        again = model([mapper(dict(dicts[0]))])[0]["sem_seg"]
    np.testing.assert_allclose(confidence, _confidence_once(again, kind), atol=2e-3)
    assert (label == again.argmax(dim=0).numpy()).mean() > 0.99
