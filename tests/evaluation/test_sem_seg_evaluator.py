"""OpenVocabSemSegEvaluator on a temporary dataset of two tiny label PNGs."""

import logging
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ovseg_testing.distributed import gloo_world
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg import add_ovseg_config
from ovseg.evaluation import OpenVocabSemSegEvaluator, build_evaluator, segmentation_metrics

NAMES = ["a", "b", "c"]
GT = [
    np.array([[0, 0, 1], [2, 255, 1]], dtype=np.uint8),
    np.array([[2, 2], [255, 0]], dtype=np.uint8),
]
PRED = [
    np.array([[0, 1, 1], [2, 2, 0]]),  # the ignored pixel is predicted c
    np.array([[2, 0], [1, 0]]),  # the ignored pixel is predicted b
]
# conf[gt, pred], counted by hand from the pixel pairs above (ignored pixels excluded):
# image 0: (a,a) (a,b) (b,b) (c,c) (b,a); image 1: (c,c) (c,a) (a,a)
EXPECTED_CONF = np.array(
    [
        [2, 1, 0],
        [1, 1, 0],
        [1, 0, 2],
    ]
)


def _scores(pred: np.ndarray, k: int = 3) -> torch.Tensor:
    """(K, H, W) scores whose argmax is ``pred``."""
    return F.one_hot(torch.as_tensor(pred, dtype=torch.long), k).permute(2, 0, 1).float()


@pytest.fixture
def dataset(tmp_path):
    """Register a 2-image dataset; yields (name, [image paths], [label paths])."""
    name = f"ovseg_test_eval_{uuid.uuid4().hex[:8]}"
    images, labels = [], []
    for i, gt in enumerate(GT):
        label = tmp_path / f"label_{i}.png"
        Image.fromarray(gt).save(label)
        images.append(str(tmp_path / f"image_{i}.jpg"))
        labels.append(str(label))
    DatasetCatalog.register(
        name,
        lambda: [
            {"file_name": f, "sem_seg_file_name": s, "image_id": i}
            for i, (f, s) in enumerate(zip(images, labels))
        ],
    )
    MetadataCatalog.get(name).set(
        stuff_classes=NAMES, ignore_label=255, unseen_classes=["c"], evaluator_type="ovseg_sem_seg"
    )
    yield name, images, labels
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _run(evaluator, inputs):
    evaluator.reset()
    for inp, pred in zip(inputs, PRED):
        evaluator.process([inp], [{"sem_seg": _scores(pred)}])
    return evaluator.evaluate()


def test_metrics_from_label_files(dataset, tmp_path, caplog):
    name, images, _ = dataset
    out_dir = tmp_path / "eval"
    evaluator = OpenVocabSemSegEvaluator(name, distributed=True, output_dir=str(out_dir))
    with caplog.at_level(logging.INFO, logger="ovseg.evaluation.sem_seg_evaluator"):
        results = _run(evaluator, [{"file_name": f} for f in images])

    np.testing.assert_array_equal(evaluator.confusion_matrix, EXPECTED_CONF)
    expected = segmentation_metrics(EXPECTED_CONF, NAMES, unseen=["c"])
    assert list(results) == ["sem_seg"]
    assert results["sem_seg"] == pytest.approx(expected)
    # a: IoU 2 / (3 + 4 - 2); seen a, b; unseen c
    assert results["sem_seg"]["IoU-a"] == pytest.approx(40.0)
    assert "hIoU" in results["sem_seg"]

    np.testing.assert_array_equal(np.load(out_dir / "confusion_matrix.npy"), EXPECTED_CONF)
    saved = torch.load(out_dir / "sem_seg_evaluation.pth", weights_only=False)
    assert saved == pytest.approx(expected)
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".tmp")]
    assert "| a " in caplog.text and "unseen" in caplog.text and "mIoU-seen" in caplog.text


def test_in_memory_labels_match_files(dataset):
    name, _, _ = dataset
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    inputs = [
        {"file_name": f"not_in_dataset_{i}.jpg", "sem_seg": torch.as_tensor(gt.astype(np.int64))}
        for i, gt in enumerate(GT)
    ]
    results = _run(evaluator, inputs)
    np.testing.assert_array_equal(evaluator.confusion_matrix, EXPECTED_CONF)
    assert results["sem_seg"] == pytest.approx(
        segmentation_metrics(EXPECTED_CONF, NAMES, unseen=["c"])
    )


def test_resized_in_memory_label_falls_back_to_file(dataset):
    name, images, _ = dataset
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    # labels the mapper resized (2x) no longer match the original-size prediction
    inputs = [
        {"file_name": f, "sem_seg": torch.as_tensor(np.kron(gt, np.ones((2, 2), np.uint8)))}
        for f, gt in zip(images, GT)
    ]
    _run(evaluator, inputs)
    np.testing.assert_array_equal(evaluator.confusion_matrix, EXPECTED_CONF)


def test_no_output_dir_writes_nothing_and_matrix_optional(dataset, tmp_path):
    name, images, _ = dataset
    evaluator = OpenVocabSemSegEvaluator(
        name, output_dir=str(tmp_path / "o"), save_confusion_matrix=False
    )
    _run(evaluator, [{"file_name": f} for f in images])
    assert not (tmp_path / "o" / "confusion_matrix.npy").exists()
    assert (tmp_path / "o" / "sem_seg_evaluation.pth").exists()


def test_all_ignored_returns_no_metrics(dataset):
    name, _, _ = dataset
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    gt = torch.full((2, 2), 255)
    evaluator.process([{"file_name": "x", "sem_seg": gt}], [{"sem_seg": _scores(np.zeros((2, 2)))}])
    assert evaluator.evaluate() == {}


def test_wrong_class_count_is_rejected(dataset):
    name, images, _ = dataset
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match=r"has 3 classes.*dataset's vocabulary"):
        evaluator.process([{"file_name": images[0]}], [{"sem_seg": _scores(PRED[0], k=4)}])


def test_other_vocabulary_is_rejected(dataset):
    name, images, _ = dataset
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    inp = {"file_name": images[0], "vocabulary": ["a", "c", "b"]}
    with pytest.raises(ValueError, match="vocabulary"):
        evaluator.process([inp], [{"sem_seg": _scores(PRED[0])}])


def test_prediction_of_wrong_size_is_rejected(dataset):
    name, images, labels = dataset
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(2, 3\).*label_0\.png"):
        evaluator.process([{"file_name": images[0]}], [{"sem_seg": _scores(np.zeros((3, 3)))}])


def test_out_of_range_label_names_the_file(dataset, tmp_path):
    name, _, _ = dataset
    bad = tmp_path / "bad.png"
    Image.fromarray(np.array([[0, 7], [1, 255]], dtype=np.uint8)).save(bad)
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    inp = {"file_name": "bad.jpg", "sem_seg_file_name": str(bad)}
    with pytest.raises(ValueError, match=r"bad\.png.*\[7\]"):
        evaluator.process([inp], [{"sem_seg": _scores(np.zeros((2, 2)))}])


def test_unknown_image_without_label_is_rejected(dataset):
    name, _, _ = dataset
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match=r"'stranger\.jpg'.*ground truth"):
        evaluator.process([{"file_name": "stranger.jpg"}], [{"sem_seg": _scores(PRED[0])}])


def test_bad_metadata_is_rejected(dataset):
    name, _, _ = dataset
    with pytest.raises(ValueError, match="no 'stuff_classes'"):
        OpenVocabSemSegEvaluator(f"{name}_unregistered")
    MetadataCatalog.remove(f"{name}_unregistered")
    other = f"{name}_bad_split"
    MetadataCatalog.get(other).set(stuff_classes=NAMES, unseen_classes=["zebra"])
    try:
        with pytest.raises(ValueError, match=r"\['zebra'\]"):
            OpenVocabSemSegEvaluator(other)
    finally:
        MetadataCatalog.remove(other)


def test_matches_detectron2_when_every_class_has_ground_truth(dataset):
    """detectron2's own SemSegEvaluator agrees where the two conventions coincide."""
    pytest.importorskip("pycocotools")
    from detectron2.evaluation import SemSegEvaluator

    name, images, _ = dataset
    inputs = [{"file_name": f} for f in images]
    ours = _run(OpenVocabSemSegEvaluator(name, distributed=False), inputs)
    theirs = _run(SemSegEvaluator(name, distributed=False), inputs)
    for key in ["mIoU", "fwIoU", "mACC", "pACC", "IoU-a", "IoU-b", "IoU-c", "ACC-c"]:
        assert ours["sem_seg"][key] == pytest.approx(theirs["sem_seg"][key]), key


def test_predicted_only_class_counts_as_detectron2_v06_and_main_do(dataset):
    """A class predicted but absent from the ground truth: ``mIoU`` counts it as 0 as
    detectron2 v0.6 (SAN's pin) does, ``mIoU-gt`` leaves it out as detectron2 after v0.6
    (CAT-Seg's) does; each equals the installed detectron2's mIoU when it is that version."""
    pytest.importorskip("pycocotools")
    from detectron2.evaluation import SemSegEvaluator

    name, images, _ = dataset
    inputs = [{"file_name": f} for f in images]
    # c is never in this ground truth: (a, b) only; the model predicts c on two pixels
    gts = [np.array([[0, 0, 1], [1, 255, 1]]), np.array([[0, 0], [255, 1]])]
    preds = [np.array([[0, 2, 1], [1, 1, 0]]), np.array([[0, 2], [1, 1]])]
    for label, gt in zip(DatasetCatalog.get(name), gts):
        Image.fromarray(gt.astype(np.uint8)).save(label["sem_seg_file_name"])
    results = []
    for evaluator in (
        OpenVocabSemSegEvaluator(name, distributed=False),
        SemSegEvaluator(name, distributed=False),
    ):
        evaluator.reset()
        for inp, pred in zip(inputs, preds):
            evaluator.process([inp], [{"sem_seg": _scores(pred)}])
        results.append(evaluator.evaluate()["sem_seg"])
    ours, theirs = results
    # by hand (ignored pixels out): a gt 4, pred 3, tp 2 -> 2/5; b gt 4, pred 3, tp 3 -> 3/4;
    # c gt 0, pred 2 -> 0
    assert ours["IoU-c"] == 0.0
    assert ours["mIoU"] == pytest.approx(100 * (2 / 5 + 3 / 4 + 0) / 3)
    assert ours["mIoU-gt"] == pytest.approx(100 * (2 / 5 + 3 / 4) / 2)
    # the installed detectron2's mIoU is one of them (they differ here: 38.3 and 57.5): v0.6
    # divides by the classes with a non-empty union, later versions by those with ground truth
    assert theirs["mIoU"] in (pytest.approx(ours["mIoU"]), pytest.approx(ours["mIoU-gt"]))


def test_build_evaluator_by_evaluator_type(dataset, tmp_path):
    name, _, _ = dataset
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.TEST.SAVE_CONFUSION_MATRIX = False
    evaluator = build_evaluator(cfg, name, str(tmp_path))
    assert isinstance(evaluator, OpenVocabSemSegEvaluator)
    assert evaluator._save_confusion_matrix is False

    # detectron2's plain semantic datasets are evaluated by ours too
    plain = f"{name}_plain"
    MetadataCatalog.get(plain).set(stuff_classes=NAMES, evaluator_type="sem_seg")
    try:
        assert isinstance(build_evaluator(cfg, plain, str(tmp_path)), OpenVocabSemSegEvaluator)
    finally:
        MetadataCatalog.remove(plain)


def test_build_evaluator_unknown_type_lists_supported(dataset, tmp_path):
    name, _, _ = dataset
    other = f"{name}_coco"
    MetadataCatalog.get(other).set(stuff_classes=NAMES, evaluator_type="coco")
    cfg = get_cfg()
    add_ovseg_config(cfg)
    try:
        with pytest.raises(ValueError, match=r"'coco'.*'ovseg_sem_seg'.*'sem_seg'"):
            build_evaluator(cfg, other, str(tmp_path))
    finally:
        MetadataCatalog.remove(other)


def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str, queue) -> None:
    """One gloo process: evaluates image ``rank`` alone; rank 0 must see both images."""
    with gloo_world(rank, world_size, init_file):
        name = "ovseg_test_eval_distributed"
        MetadataCatalog.get(name).set(stuff_classes=NAMES, ignore_label=255, unseen_classes=["c"])
        evaluator = OpenVocabSemSegEvaluator(name, distributed=True, output_dir=out_dir)
        evaluator.reset()
        inp = {"file_name": f"image_{rank}.jpg", "sem_seg": torch.as_tensor(GT[rank])}
        evaluator.process([inp], [{"sem_seg": _scores(PRED[rank])}])
        local = evaluator.confusion_matrix.copy()
        results = evaluator.evaluate()
        queue.put((rank, local, None if results is None else dict(results["sem_seg"])))


@pytest.mark.slow
def test_distributed_sums_confusion_matrices(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    args = (2, str(tmp_path / "init"), str(tmp_path / "out"), queue)
    mp.spawn(_distributed_worker, args=args, nprocs=2, join=True)
    got = {rank: (local, res) for rank, local, res in (queue.get() for _ in range(2))}
    # each process saw one image only; the main process reports the sum of both
    assert got[0][0].sum() == 5 and got[1][0].sum() == 3
    assert got[1][1] is None
    assert got[0][1] == pytest.approx(segmentation_metrics(EXPECTED_CONF, NAMES, unseen=["c"]))
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "confusion_matrix.npy"), EXPECTED_CONF)


def test_outputs_without_sem_seg_are_left_to_the_other_evaluators(dataset):
    # a panoptic test set runs this evaluator beside PQ's: a panoptic-only test task
    # (FreeSeg TEST_TASKS ["panoptic"]) returns no "sem_seg", which is not this one's to score
    name, _, _ = dataset
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    gt = torch.as_tensor(GT[0].astype(np.int64))
    ids = torch.zeros(gt.shape, dtype=torch.int32)
    evaluator.process([{"file_name": "x", "sem_seg": gt}], [{"panoptic_seg": (ids, [])}])
    assert evaluator.confusion_matrix.sum() == 0 and evaluator.evaluate() == {}
