"""The 16-bit cross-dataset leaves (the COCO-Stuff ZegCLIP on ADE20K-847 and PASCAL
Context-459) evaluate end to end on fixtures in each set's real layout: class ids above 255
survive the label read, 65535 is ignored, and the evaluator's numbers are the model's own
prediction scored by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ovseg_testing import CONFIGS, ROOT, cpu_opts, tiny_clip_opts
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.data.dataset_mappers import build_dataset_mapper
from ovseg.data.datasets.common import datasets_root
from ovseg.data.datasets.register_ade20k_full import register_all_ade20k_full
from ovseg.data.datasets.register_pcontext_full import register_all_pcontext_full
from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 64
IGNORE = 65535

# leaf folder: (register function, image folder, label folder, label name, classes)
SETS = {
    "ade20k_full": (
        register_all_ade20k_full,
        "ADE20K_2021_17_01/images_detectron2/validation",
        "ADE20K_2021_17_01/annotations_detectron2/validation",
        "{stem}.png",
        847,
    ),
    "pcontext_full": (
        register_all_pcontext_full,
        "VOCdevkit/VOC2010/JPEGImages",
        "VOCdevkit/VOC2010/annotations_detectron2/pc459_val",
        "{stem}.png",
        459,
    ),
}


def _write_fixture(root, images: str, labels: str, name: str, classes: int) -> np.ndarray:
    """One 64x64 validation image: class 300 on the left, the last class on the right, an
    ignored corner; its label as a 16-bit PNG. Returns the label."""
    label = np.full((SIZE, SIZE), 300, np.uint16)
    label[:, SIZE // 2 :] = classes - 1
    label[:6, :6] = IGNORE
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[:, : SIZE // 2] = (200, 40, 40)
    image[:, SIZE // 2 :] = (40, 40, 200)
    (root / images).mkdir(parents=True)
    (root / labels).mkdir(parents=True)
    Image.fromarray(image).save(root / images / "2008_000001.jpg", quality=95)
    Image.fromarray(label).save(root / labels / name.format(stem="2008_000001"))
    return label


@pytest.mark.parametrize("folder", sorted(SETS))
def test_leaf_scores_its_16_bit_set_as_computed_by_hand(folder, tmp_path, monkeypatch):
    register, images, labels, name, classes = SETS[folder]
    leaf = CONFIGS / folder / "zegclip/zegclip_vitb16_coco-stuff-inductive_eval.yaml"
    label = _write_fixture(tmp_path / "datasets", images, labels, name, classes)
    monkeypatch.chdir(ROOT)
    register(str(tmp_path / "datasets"))
    try:
        opts = [*cpu_opts("ZegCLIP", tmp_path / "cache"), *tiny_clip_opts()]
        cfg = load_config(str(leaf), [*opts, "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path)])
        (test_set,) = cfg.DATASETS.TEST
        meta = MetadataCatalog.get(test_set)
        assert len(meta.stuff_classes) == classes and meta.ignore_label == IGNORE
        torch.manual_seed(0)
        model = Trainer.build_model(cfg).eval()
        results = Trainer.test(cfg, model)["sem_seg"]
        (record,) = DatasetCatalog.get(test_set)
        with torch.no_grad():
            sample = build_dataset_mapper(cfg, is_train=False)(record)
            pred = model([sample])[0]["sem_seg"].argmax(0).numpy()
    finally:
        register(datasets_root())

    valid = label != IGNORE
    gt, pr = label[valid].astype(np.int64), pred[valid]
    assert results["pACC"] == pytest.approx(100.0 * (gt == pr).mean(), abs=1e-4)
    names = meta.stuff_classes
    scored = {f"IoU-{names[c]}" for c in np.union1d(gt, pr)}
    assert {k for k in results if k.startswith("IoU-")} == scored
    for c in (300, classes - 1):  # the ground-truth classes, ids above 255
        union = np.logical_or(gt == c, pr == c).sum()
        iou = 100.0 * np.logical_and(gt == c, pr == c).sum() / union
        assert results[f"IoU-{names[c]}"] == pytest.approx(iou, abs=1e-4)
        assert results[f"ACC-{names[c]}"] == pytest.approx(100.0 * (pr[gt == c] == c).mean())
    assert {k for k in results if k.startswith("ACC-")} == {
        f"ACC-{names[c]}" for c in (300, classes - 1)
    }
