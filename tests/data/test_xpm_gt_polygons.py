"""MODEL.XPM.GT_POLYGONS (ovseg/data/dataset_mappers/gt_polygons.py): the XPM mappers keep a
COCO annotation's polygons and ``bbox``, moved as maskrcnn_benchmark moves them under
LEGACY_BOXES (flip x -> W - x - 1), and the XPM models train their ground-truth masks on them;
hand-made annotations with hand-computed coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ovseg_testing import ROOT, tiny_xpm_cfg
from ovseg_testing import official_boxes as ref
from ovseg_testing.xpm import XPM_TRAIN, registered_captioned_coco
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from ovseg.data import build_dataset_mapper
from ovseg.data.dataset_mappers import InstanceDatasetMapper, XPMInstanceDatasetMapper
from ovseg.data.dataset_mappers.xpm_instance import seen_label_map
from ovseg.engine.defaults import load_config
from ovseg.modeling.xpm.legacy_masks import legacy_mask_targets
from ovseg.pseudo import InstancePseudoLabelStore, attach_pseudo_instances
from ovseg.pseudo.instances import encode_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = ["person", "dog", "tv"]  # contiguous dataset ids; dog unseen
H, W = 32, 48  # the image; the transforms double it (64 x 96) and may flip it
# person: a rectangle with fractional corners; tv: a triangle reaching past the image
PERSON = [2.5, 3.0, 12.25, 3.0, 12.25, 10.5, 2.5, 10.5]
TV = [40.0, 20.0, 50.0, 20.0, 40.0, 34.0]
CROWD_RLE = {"size": [H, W], "counts": [0, 4, H * W - 4]}  # skipped: crowd is never a target


def _annotations(rle_person: bool = False) -> list:
    person = {"size": [H, W], "counts": [100, 20, H * W - 120]} if rle_person else [PERSON]
    xywh = BoxMode.XYWH_ABS
    return [
        {"category_id": 0, "iscrowd": 0, "bbox": [2.5, 3.0, 9.75, 7.5], "bbox_mode": xywh,
         "segmentation": person},
        {"category_id": 1, "iscrowd": 1, "bbox": [0, 0, 4, 4], "bbox_mode": xywh,
         "segmentation": CROWD_RLE},
        {"category_id": 2, "iscrowd": 0, "bbox": [40.0, 20.0, 10.0, 14.0], "bbox_mode": xywh,
         "segmentation": [TV]},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("polygons")
    path = root / "1.png"
    pixels = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return {"file_name": str(path), "image_id": 1, "height": H, "width": W,
            "annotations": _annotations()}  # fmt: skip


def _augs(flip: bool) -> list:
    return [T.ResizeTransform(H, W, 2 * H, 2 * W)] + ([T.HFlipTransform(2 * W)] if flip else [])


def _kwargs(flip: bool, legacy: bool) -> dict:
    return dict(
        augmentations=_augs(flip), image_format="RGB", ignore_label=255, size_divisibility=-1,
        vocabulary=VOCAB, label_map=seen_label_map(VOCAB, ["dog"], VOCAB, 255),
        gt_polygons=True, legacy_boxes=legacy,
    )  # fmt: skip


def _teacher_mapper(flip: bool, legacy: bool = True) -> InstanceDatasetMapper:
    return InstanceDatasetMapper(is_train=True, **_kwargs(flip, legacy))


def _student_mapper(flip: bool, legacy: bool = True) -> XPMInstanceDatasetMapper:
    return XPMInstanceDatasetMapper(is_train=True, **_kwargs(flip, legacy))


# hand-computed: x2 doubled; the official flip x -> 96 - x - 1, detectron2's x -> 96 - x.
# Official boxes are inclusive (x + w - 1, clipped to 47 x 31 before the resize), stored as
# x2 + 1; the tv's polygon keeps its points outside the image
LEGACY = {
    False: ([[5, 6, 24.5, 6, 24.5, 21, 5, 21], [80, 40, 100, 40, 80, 68]],
            [[5, 6, 23.5, 20], [80, 40, 95, 63]]),
    True: ([[90, 6, 70.5, 6, 70.5, 21, 90, 21], [15, 40, -5, 40, 15, 68]],
           [[72.5, 6, 91, 20], [1, 40, 16, 63]]),
}  # fmt: skip
DETECTRON2 = {
    False: ([[5, 6, 24.5, 6, 24.5, 21, 5, 21], [80, 40, 100, 40, 80, 68]],
            [[5, 6, 24.5, 21], [80, 40, 96, 64]]),
    True: ([[91, 6, 71.5, 6, 71.5, 21, 91, 21], [16, 40, -4, 40, 16, 68]],
           [[71.5, 6, 91, 21], [0, 40, 16, 64]]),
}  # fmt: skip


def _polygons(inst: Instances) -> list:
    return [[p.tolist() for p in polys] for polys in inst.gt_polygons.polygons]


@pytest.mark.parametrize("mapper", [_teacher_mapper, _student_mapper])
@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("flip", [False, True])
def test_mappers_keep_the_moved_polygons_and_annotation_boxes(record, mapper, legacy, flip):
    inst = mapper(flip, legacy)(record)["instances"]
    polygons, boxes = (LEGACY if legacy else DETECTRON2)[flip]
    assert inst.gt_classes.tolist() == [0, 2]  # the crowd annotation is no target
    assert isinstance(inst.gt_polygons, PolygonMasks) and len(inst.gt_polygons) == 2
    assert _polygons(inst) == [[p] for p in polygons]
    assert inst.gt_boxes.tensor.tolist() == boxes
    masks = inst.gt_masks.tensor if isinstance(inst.gt_masks, BitMasks) else inst.gt_masks
    assert masks.dtype == torch.bool and masks.shape == (2, 2 * H, 2 * W)  # bitmasks stay


@pytest.mark.parametrize("mapper", [_teacher_mapper, _student_mapper])
@pytest.mark.parametrize("legacy", [True, False])
def test_annotations_whose_box_has_no_area_are_dropped(record, mapper, legacy):
    """A box without area gave the RPN an infinite loss: dropped as detectron2 drops it
    (no area after the transforms) or, under LEGACY_BOXES, as the official loader does
    (inclusive box of one pixel or less at the image's size: w <= 1 or h <= 1)."""
    xywh = BoxMode.XYWH_ABS
    sliver = [20.0, 5.0, 21.0, 5.0, 21.0, 25.0, 20.0, 25.0]  # a valid 1-px-wide polygon
    extra = [
        {"category_id": 2, "iscrowd": 0, "bbox": [20.0, 5.0, 0.0, 20.0], "bbox_mode": xywh,
         "segmentation": [sliver]},  # zero width: no area anywhere
        {"category_id": 0, "iscrowd": 0, "bbox": [20.0, 5.0, 1.0, 20.0], "bbox_mode": xywh,
         "segmentation": [sliver]},  # one pixel wide: only the official loader drops it
    ]  # fmt: skip
    inst = mapper(False, legacy)({**record, "annotations": _annotations() + extra})["instances"]
    assert inst.gt_classes.tolist() == ([0, 2] if legacy else [0, 2, 0])
    assert bool(inst.gt_boxes.nonempty().all()) and len(inst.gt_polygons) == len(inst)
    masks = inst.gt_masks.tensor if isinstance(inst.gt_masks, BitMasks) else inst.gt_masks
    assert masks.shape[0] == len(inst)


def test_default_mappers_are_unchanged(record):
    kwargs = {**_kwargs(True, True), "gt_polygons": False}
    teacher = InstanceDatasetMapper(is_train=True, **kwargs)(record)["instances"]
    assert not teacher.has("gt_polygons") and not teacher.has("gt_boxes")
    student = XPMInstanceDatasetMapper(is_train=True, **kwargs)(record)["instances"]
    assert not student.has("gt_polygons")
    extent = BitMasks(student.gt_masks.tensor).get_bounding_boxes().tensor
    assert torch.equal(student.gt_boxes.tensor, extent)  # the masks' extents


def _store(tmp_path) -> InstancePseudoLabelStore:
    manifest = {"fingerprint": "f" * 64, "vocabulary": VOCAB, "threshold": 0.0,
                "dataset": "hand", "unseen": ["dog"]}  # fmt: skip
    store = InstancePseudoLabelStore.create(str(tmp_path / "store"), manifest)
    mask = np.zeros((H, W), dtype=bool)
    mask[4:28, 16:32] = True
    pseudo = {"noun": "dog", "category": "dog", "category_id": 1, "box": [16.0, 4.0, 32.0, 28.0],
              "mask": encode_mask(mask), "cosine": 0.3, "score": 0.6, "proposal": 0}  # fmt: skip
    store.write("1", {"height": H, "width": W, "instances": [pseudo]})
    return store


def test_pseudo_rows_get_no_polygons_and_keep_their_boxes(record, tmp_path):
    (d,) = attach_pseudo_instances([record], _store(tmp_path))
    inst = _student_mapper(flip=True)(d)["instances"]
    assert inst.gt_is_pseudo.tolist() == [False, False, True]
    assert _polygons(inst)[2] == []
    # the teacher's box doubled and flipped by detectron2 (96 - x), as without the key
    assert inst.gt_boxes.tensor[2].tolist() == [32.0, 8.0, 64.0, 56.0]
    gt = inst[~inst.gt_is_pseudo]  # Instances indexing keeps the polygons aligned
    assert _polygons(gt) == [[p] for p in LEGACY[True][0]]
    both = Instances.cat([inst, inst]).to("cpu")
    assert len(both.gt_polygons) == 6 and _polygons(both)[5] == []


def _model(tmp_path, arch: str, legacy: bool = True):
    torch.manual_seed(0)
    opts = ["MODEL.XPM.LEGACY_BOXES", str(legacy), "MODEL.XPM.GT_POLYGONS", "True"]
    return build_model(tiny_xpm_cfg(tmp_path, arch, *opts)).train()


def test_ground_truth_mask_targets_are_the_official_polygon_targets(record, tmp_path):
    model = _model(tmp_path, "XPMTeacher")
    out = _teacher_mapper(flip=True)(record)
    (gt,), _ = model.gt_targets([out], tuple(VOCAB), torch.arange(len(VOCAB)))
    assert isinstance(gt.gt_masks, PolygonMasks) and not gt.has("gt_polygons")
    # the official inclusive boxes, converted once
    assert gt.gt_boxes.tensor.tolist() == [[72.5, 6, 90, 19], [1, 40, 15, 62]]
    rois = torch.tensor([[70.0, 4.0, 92.0, 22.0], [72.5, 6.0, 90.0, 19.0], [0.0, 38.0, 16.0, 63]])
    matched = Instances(gt.image_size, proposal_boxes=Boxes(rois), gt_masks=gt.gt_masks[[0, 0, 1]])
    got = model.roi_heads._mask_targets(matched, 14)
    polygons = LEGACY[True][0]
    want = [
        ref.project_polygons([polygons[i]], b, 2 * W, 2 * H, 14) for i, b in zip([0, 0, 1], rois)
    ]
    assert torch.equal(got, torch.stack(want).float())
    bits = legacy_mask_targets(out["instances"].gt_masks[[0, 0, 1]], rois, 14, gt.image_size)
    assert not torch.equal(got, bits)  # the bitmasks (detectron2's flip) cut other targets


@pytest.mark.parametrize("legacy", [True, False])  # official polygon targets / detectron2's
@pytest.mark.parametrize("arch", ["XPMTeacher", "XPMStudent"])
def test_a_training_step_runs_on_polygon_targets(record, tmp_path, arch, legacy):
    model = _model(tmp_path, arch, legacy)
    (d,) = attach_pseudo_instances([record], _store(tmp_path))
    mapper = _teacher_mapper if arch == "XPMTeacher" else _student_mapper
    batch = [mapper(flip=False, legacy=legacy)(d), mapper(flip=True, legacy=legacy)(d)]
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and float(losses["loss_mask"]) > 0


def test_rle_ground_truth_is_refused_naming_the_file_and_the_key(record):
    bad = {**record, "annotations": _annotations(rle_person=True)}
    with pytest.raises(ValueError, match=r"1\.png.*RLE.*MODEL\.XPM\.GT_POLYGONS False"):
        _student_mapper(flip=False)(bad)
    with pytest.raises(ValueError, match=r"1\.png.*RLE"):
        _teacher_mapper(flip=False)(bad)
    plain = InstanceDatasetMapper(is_train=True, **{**_kwargs(False, True), "gt_polygons": False})
    assert len(plain(bad)["instances"]) == 2  # without the key RLE is read as before


def test_the_paper_leaves_train_on_polygons_and_configs_build_the_mappers(tmp_path):
    for leaf in ("xpm_teacher_bert_ovrcnn_90k_bs8", "xpm_student_bert_ovrcnn_70k_bs8"):
        cfg = load_config(str(ROOT / "configs/coco/xpm" / f"{leaf}.yaml"), [])
        assert cfg.MODEL.XPM.GT_POLYGONS and cfg.MODEL.XPM.LEGACY_BOXES, leaf
    with registered_captioned_coco(tmp_path):
        opts = ["DATASETS.TRAIN", f"('{XPM_TRAIN}',)", "MODEL.XPM.GT_POLYGONS", "True",
                "MODEL.XPM.LEGACY_BOXES", "True", "INPUT.MIN_SIZE_TRAIN", "(32,)"]  # fmt: skip
        for name in ("ovseg_instance", "ovseg_xpm_instance"):
            cfg = load_config(
                str(ROOT / "configs/Base-xpm.yaml"), [*opts, "INPUT.DATASET_MAPPER_NAME", name]
            )
            mapper = build_dataset_mapper(cfg, True)
            assert mapper.gt_polygons and mapper.legacy_boxes
            # the fixture's masks are RLE: refused, naming the key
            with pytest.raises(ValueError, match="MODEL.XPM.GT_POLYGONS"):
                mapper(DatasetCatalog.get(XPM_TRAIN)[0])
