"""The 2-way episode mapper: binary target, boundary rule in training vs test, torch's
nearest resize of the mask, the ['others', class] vocabulary."""

import numpy as np
import pytest
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

from ovseg.config import add_ovseg_config
from ovseg.data.dataset_mappers.episode import BinaryEpisodeMapper, resize_label_nearest
from ovseg.data.image_io import LabelSizeError

# VOC-style mask: 0 background, 3 = class id 2 (+1), 7 = another class, 255 boundary
LABEL = np.array([[0, 3, 3, 7], [0, 3, 255, 7], [255, 0, 7, 7], [0, 0, 3, 3]], dtype=np.uint8)


@pytest.fixture
def record(tmp_path):
    img = tmp_path / "img.jpg"
    Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(img)
    lbl = tmp_path / "img.png"
    Image.fromarray(LABEL).save(lbl)
    return {"file_name": str(img), "sem_seg_file_name": str(lbl), "episode_class": 2}


def _mapper(boundary_ignored, size=None):
    return BinaryEpisodeMapper(
        is_train=not boundary_ignored,
        class_names=["a", "b", "potted plant", "d", "e", "f", "g"],
        image_size=size,
        boundary_ignored=boundary_ignored,
    )


def test_training_target_makes_boundary_others(record):
    out = _mapper(False)(record)
    want = (LABEL == 3).astype(np.int64)
    assert out["sem_seg"].numpy().tolist() == want.tolist()
    assert out["vocabulary"] == ["others", "potted plant"]
    assert (out["height"], out["width"]) == (4, 4) and "sem_seg_file_name" not in out


def test_test_target_ignores_boundary(record):
    out = _mapper(True)(record)
    target = out["sem_seg"].numpy()
    assert target[1, 2] == 255 and target[2, 0] == 255
    assert target[0, 1] == 1 and target[0, 3] == 0 and target[3, 0] == 0


def test_resize_uses_torch_nearest(record):
    # 4 -> 3: torch picks source rows/cols floor(i * 4 / 3) = 0, 1, 2 (PIL: 0, 2, 3)
    assert resize_label_nearest(LABEL, (3, 3)).tolist() == LABEL[:3, :3].tolist()
    out = _mapper(True, size=(8, 6))(record)
    assert tuple(out["image"].shape) == (3, 8, 6) and (out["height"], out["width"]) == (8, 6)
    assert out["sem_seg"].shape == (8, 6)


def test_bad_records_are_refused(record):
    with pytest.raises(ValueError, match="episode_class"):
        _mapper(False)({k: v for k, v in record.items() if k != "episode_class"})
    with pytest.raises(ValueError, match="not a class id"):
        _mapper(False)({**record, "episode_class": 9})
    # a mask of another size, no resize asked: one line with what to do (a DataFileError)
    Image.fromarray(LABEL[:3]).save(record["sem_seg_file_name"])
    with pytest.raises(LabelSizeError, match=r"is \(4, 3\) \(WxH\) but the image is \(4, 4\)"):
        _mapper(False)(dict(record))


@pytest.mark.parametrize("test_ignores", [True, False])
@pytest.mark.parametrize("train_boundary", ["others", "ignore"])
def test_the_test_boundary_rule_is_the_test_sets_not_the_trainings(test_ignores, train_boundary):
    # the test set's metadata decides (PASCAL-5i ignores 255 in the test, as HSNet; FSS-1000
    # and COCO-20i do not); INPUT.EPISODE.TRAIN_BOUNDARY is the training mapper's only
    name = f"episode_boundary_test_{test_ignores}"
    MetadataCatalog.get(name).set(
        stuff_classes=["a", "b"], label_offset=1, test_ignores_boundary=test_ignores
    )
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.INPUT.EPISODE.TRAIN_BOUNDARY = train_boundary
    try:
        test = BinaryEpisodeMapper.from_config(cfg, is_train=False, dataset_name=name)
        train = BinaryEpisodeMapper.from_config(cfg, is_train=True, dataset_name=name)
    finally:
        MetadataCatalog.remove(name)
    assert test["boundary_ignored"] is test_ignores
    assert train["boundary_ignored"] is (train_boundary == "ignore")
