"""FSS-1000 as LSeg's zero-shot test runs it: HSNet's class ids, splits and episode order, the
thresholded masks, and the scores over the 240 test classes, on fixtures in HSNet's layout."""

import json

import numpy as np
import pytest
import torch
from ovseg_testing.data import write_fss_fixture
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.data.dataset_mappers.episode import BinaryEpisodeMapper
from ovseg.data.datasets.common import VOCABULARY_DIR, datasets_root
from ovseg.data.datasets.fss1000 import FSS_SPLITS, load_fss1000, register_fss1000
from ovseg.evaluation.fewshot_evaluator import FewShotEpisodeEvaluator


@pytest.fixture
def classes():
    with open(VOCABULARY_DIR / "fss1000.json", encoding="utf-8") as f:
        return json.load(f)["classes"]


@pytest.fixture
def registered(tmp_path):
    register_fss1000(str(tmp_path))
    yield tmp_path
    register_fss1000(datasets_root())


def test_class_ids_are_hsnets(classes):
    # lang-seg label_files/fewshot_fss.txt (the prompts, by HSNet class id): each split's
    # classes sorted, trn 0-519, val 520-759, test 760-999 (fss.py:22-24, :89-95)
    assert len(classes) == len(set(classes)) == 1000
    assert (classes[0], classes[519], classes[520], classes[759]) == (
        "ac_wall",
        "zucchini",
        "ab_wheel",
        "yonex_icon",
    )
    assert (classes[760], classes[999]) == ("abe's_flyingfish", "wooden_spoon")
    for start, end in FSS_SPLITS.values():
        assert classes[start:end] == sorted(classes[start:end])
    with open(VOCABULARY_DIR / "fss1000.json", encoding="utf-8") as f:
        assert json.load(f)["unseen"] == classes[760:]


def test_splits_list_every_image_in_hsnets_order(registered, classes):
    write_fss_fixture(registered, size=8, images=1)
    for n in (2, 10):  # the listing is sorted as strings: 1, 10, 2
        for ext in ("jpg", "png"):
            Image.new("L", (8, 8)).save(registered / "FSS-1000" / classes[760] / f"{n}.{ext}")
    train = DatasetCatalog.get("fss1000_train")
    assert [r["episode_class"] for r in train] == list(range(520))
    assert "episode" not in train[0]
    test = DatasetCatalog.get("fss1000_test")
    assert [r["image_id"] for r in test[:4]] == [
        f"{classes[760]}_1",
        f"{classes[760]}_10",
        f"{classes[760]}_2",
        f"{classes[761]}_1",
    ]
    assert [r["episode"] for r in test] == list(range(242))
    assert {r["episode_class"] for r in test} == set(range(760, 1000))
    assert test[1]["sem_seg_file_name"].endswith(f"{classes[760]}/10.png")
    meta = MetadataCatalog.get("fss1000_test")
    assert list(meta.novel_class_ids) == list(range(760, 1000)) and meta.num_episodes == 2400
    assert list(MetadataCatalog.get("fss1000_val").novel_class_ids) == list(range(520, 760))
    assert meta.mask_threshold == 128 and meta.stuff_classes == classes


def test_missing_files_are_named(tmp_path, classes):
    with pytest.raises(FileNotFoundError, match="class folder .*ab_wheel does not exist"):
        load_fss1000(str(tmp_path), "val")
    folder = tmp_path / "FSS-1000" / classes[520]
    folder.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no .jpg image"):
        load_fss1000(str(tmp_path), "val")
    Image.new("RGB", (8, 8)).save(folder / "1.jpg")
    with pytest.raises(FileNotFoundError, match=r"has no mask .*1\.png"):
        load_fss1000(str(tmp_path), "val")
    with pytest.raises(ValueError, match="split must be one of"):
        load_fss1000(str(tmp_path), "trn")


def test_mapper_thresholds_the_greyscale_mask(tmp_path, classes):
    folder = tmp_path / "FSS-1000" / classes[999]
    folder.mkdir(parents=True)
    Image.new("RGB", (4, 2), (10, 20, 30)).save(folder / "1.jpg")
    mask = np.zeros((2, 4, 3), np.uint8)
    mask[0] = [[255, 255, 255], [128, 128, 128], [127, 127, 127], [255, 0, 0]]
    mask[1] = [[0, 255, 0], [0, 0, 0], [255, 255, 255], [0, 0, 0]]
    Image.fromarray(mask).save(folder / "1.png")
    record = {
        "file_name": str(folder / "1.jpg"),
        "sem_seg_file_name": str(folder / "1.png"),
        "episode_class": 999,  # a class id over 255: the target must not wrap around
    }
    mapper = BinaryEpisodeMapper(False, class_names=classes, image_size=None, mask_threshold=128)
    out = mapper(record)
    # PIL's "L" of (255, 0, 0) is 76 and of (0, 255, 0) is 150 (ITU-R 601-2 luma)
    assert out["sem_seg"].tolist() == [[1, 1, 0, 0], [1, 0, 1, 0]]
    assert out["vocabulary"] == ["others", "wooden_spoon"]
    resized = BinaryEpisodeMapper(
        False, class_names=classes, image_size=(4, 8), mask_threshold=128
    )(dict(record))
    assert (
        resized["sem_seg"].tolist()
        == [[1, 1, 1, 1, 0, 0, 0, 0]] * 2 + [[1, 1, 0, 0, 1, 1, 0, 0]] * 2
    )


def test_scores_are_over_the_240_test_classes(registered):
    evaluator = FewShotEpisodeEvaluator("fss1000_test", distributed=False)
    target = torch.tensor([[1, 1], [0, 0]])
    perfect = torch.stack([1.0 - target, target.float()])  # scores over ['others', class]
    evaluator.process([{"sem_seg": target, "episode_class": 760}], [{"sem_seg": perfect}])
    # class 800: predicted foreground on 3 pixels, 2 of them true -> IoU 2/3; background 1/2
    wrong = torch.stack([torch.zeros(2, 2), torch.ones(2, 2)])
    wrong[1, 1, 1] = -1.0
    evaluator.process([{"sem_seg": target, "episode_class": 800}], [{"sem_seg": wrong}])
    res = evaluator.evaluate()["fewshot"]
    assert res["mIoU"] == pytest.approx(100 * (1 + 2 / 3) / 240)
    # FB-IoU: background (2 + 1) / (2 + 2), foreground (2 + 2) / (2 + 3)
    assert res["FB-IoU"] == pytest.approx(100 * (3 / 4 + 4 / 5) / 2)
    assert res["IoU-abe's_flyingfish"] == pytest.approx(100.0)


def test_mapper_keeps_the_stored_orientation_of_an_exif_tagged_image(tmp_path, classes):
    # HSNet reads images with Image.open (no EXIF turn), so mask and image stay aligned; a turn
    # would make this 6 x 10 image 10 x 6 and mismatch its mask
    folder = tmp_path / "FSS-1000" / classes[760]
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(folder / "1.jpg", quality=95, exif=exif.tobytes())
    mask = np.zeros((6, 10), np.uint8)
    mask[:, :3] = 255
    Image.fromarray(mask).save(folder / "1.png")
    record = {
        "file_name": str(folder / "1.jpg"),
        "sem_seg_file_name": str(folder / "1.png"),
        "episode_class": 760,
    }
    mapper = BinaryEpisodeMapper(False, class_names=classes, image_size=None, mask_threshold=128)
    out = mapper(record)
    stored = np.asarray(Image.open(folder / "1.jpg").convert("RGB"))
    assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), stored)
    assert out["sem_seg"][:, :3].all() and not out["sem_seg"][:, 3:].any()


def test_a_mask_of_another_size_is_resized_on_its_own_as_hsnet(tmp_path, classes, caplog):
    # HSNet resizes image and mask to 480 each on its own, so such a pair is scored; at the
    # original size it cannot be, and is refused
    folder = tmp_path / "FSS-1000" / classes[800]
    folder.mkdir(parents=True)
    Image.new("RGB", (4, 4), (9, 9, 9)).save(folder / "1.jpg")
    mask = np.zeros((2, 6), np.uint8)
    mask[:, :3] = 255
    Image.fromarray(mask).save(folder / "1.png")
    record = {
        "file_name": str(folder / "1.jpg"),
        "sem_seg_file_name": str(folder / "1.png"),
        "episode_class": 800,
    }
    resized = BinaryEpisodeMapper(False, class_names=classes, image_size=(4, 4), mask_threshold=128)
    with caplog.at_level("WARNING"):
        out = resized(dict(record))
    # torch nearest from 6 columns to 4: source columns 0, 1, 3, 4
    assert out["sem_seg"].tolist() == [[1, 1, 0, 0]] * 4
    assert "resized to (4, 4) on their own" in caplog.text
    original = BinaryEpisodeMapper(False, class_names=classes, image_size=None, mask_threshold=128)
    with pytest.raises(ValueError, match=r"is \(6, 2\) \(WxH\) but the image is \(4, 4\)"):
        original(dict(record))


def test_the_check_script_reports_every_problem_at_once(tmp_path, classes, prepare_script, capsys):
    script = prepare_script("prepare_fss1000")
    write_fss_fixture(tmp_path, size=8, images=2)
    script.main(["--root", str(tmp_path)])  # complete: no error
    assert "train 1040, val 480, test 480" in capsys.readouterr().out
    base = tmp_path / "FSS-1000"
    for name in (classes[3], classes[900]):
        for path in (base / name).iterdir():
            path.unlink()
        (base / name).rmdir()
    (base / classes[600] / "2.png").unlink()
    Image.new("L", (9, 8)).save(base / classes[700] / "1.png")  # allowed, listed
    with pytest.raises(FileNotFoundError) as error:
        script.main(["--root", str(tmp_path)])
    message = str(error.value)
    assert f"2 class folders missing ({classes[3]}, {classes[900]})" in message
    assert f"1 images without a mask ({base / classes[600] / '2.jpg'})" in message
    out = capsys.readouterr().out
    assert f"{base / classes[700] / '1.jpg'} is 8x8, its mask 9x8" in out
    assert "train 1038, val 480, test 478" in out
