"""HSNet's episode metrics on hand-computed episodes: per-class accumulation, ignored
boundary pixels, a novel class no episode drew, FB-IoU and the mean over folds."""

import json
import logging

import numpy as np
import pytest
import torch
from ovseg_testing import load_script
from ovseg_testing.logs import records

from detectron2.data import MetadataCatalog

from ovseg.evaluation import FewShotEpisodeEvaluator, fewshot_metrics, mean_over_folds
from ovseg.evaluation.fewshot_evaluator import episode_areas, load_fold_result

# episode A (class 0): 5 scored pixels, one ignored
TARGET_A = np.array([[1, 1, 0], [0, 255, 0]])
PRED_A = np.array([[1, 0, 0], [1, 1, 0]])
# episode B (class 0): all background, predicted all background
TARGET_B = np.zeros((2, 3), dtype=np.int64)
PRED_B = np.zeros((2, 3), dtype=np.int64)


def test_episode_areas_by_hand():
    inter, union = episode_areas(PRED_A, TARGET_A)
    # fg: pred {(0,0),(1,0)}, gt {(0,0),(0,1)} -> 1 / 3; bg: pred 3, gt 3, both 2 -> 2 / 4
    assert inter.tolist() == [2, 1] and union.tolist() == [4, 3]
    with pytest.raises(ValueError, match="differ in size"):
        episode_areas(PRED_A, TARGET_A[:, :2])


def test_metrics_by_hand():
    inter, union = np.zeros((2, 20)), np.zeros((2, 20))
    for pred, target in ((PRED_A, TARGET_A), (PRED_B, TARGET_B)):
        i, u = episode_areas(pred, target)
        inter[:, 0] += i
        union[:, 0] += u
    out = fewshot_metrics(inter, union, [0, 1])
    # class 0: fg 1/3; class 1 never drawn: 0 -> mIoU 16.67
    assert out["mIoU"] == pytest.approx(100 * (1 / 3 + 0) / 2)
    assert out["IoU-0"] == pytest.approx(100 / 3) and out["IoU-1"] == 0
    # bg (2 + 6) / (4 + 6) = 0.8, fg 1/3 -> FB-IoU 56.67
    assert out["FB-IoU"] == pytest.approx(100 * (0.8 + 1 / 3) / 2)


def _scores(pred):
    """(2, H, W) scores whose argmax is ``pred``."""
    pred = torch.as_tensor(pred)
    return torch.stack([(pred == 0).float(), (pred == 1).float()])


@pytest.fixture
def fold_meta():
    name = "_test_fewshot_fold1"
    MetadataCatalog.get(name).set(
        stuff_classes=["a", "b", "c"],
        novel_class_ids=[0, 2],
        ignore_label=255,
        benchmark="toy",
        fold=1,
        num_episodes=3,
    )
    yield name
    MetadataCatalog.remove(name)


def test_evaluator_accumulates_per_class_and_writes_json(fold_meta, tmp_path):
    ev = FewShotEpisodeEvaluator(fold_meta, distributed=False, output_dir=str(tmp_path))
    ev.reset()
    inputs = [
        {"sem_seg": torch.as_tensor(TARGET_A), "episode_class": 0},
        {"sem_seg": torch.as_tensor(TARGET_B), "episode_class": 0},
        {"sem_seg": torch.ones(2, 2, dtype=torch.long), "episode_class": 2},
    ]
    preds = [PRED_A, PRED_B, np.array([[1, 1], [0, 0]])]
    ev.process(inputs, [{"sem_seg": _scores(p)} for p in preds])
    with records("ovseg.evaluation.fewshot_evaluator", logging.INFO) as got:
        res = ev.evaluate()["fewshot"]
    logged = [r.getMessage() for r in got]
    # FB-IoU reaches the log although the copypaste lines skip keys with '-'
    assert any(f"FB-IoU {res['FB-IoU']:.2f}" in m and "3 episodes" in m for m in logged), logged
    # class 0 fg 1/3, class 2 fg 2/4; bg: (2+6+0) / (4+6+2), fg: (1+0+2) / (3+0+4)
    assert res["mIoU"] == pytest.approx(100 * (1 / 3 + 1 / 2) / 2)
    assert res["IoU-c"] == pytest.approx(50)
    assert res["FB-IoU"] == pytest.approx(100 * (8 / 12 + 3 / 7) / 2)
    saved = load_fold_result(str(tmp_path))
    assert (
        saved["fold"] == 1
        and saved["episodes"] == 3
        and saved["metrics"] == json.loads(json.dumps(dict(res)))
    )
    with pytest.raises(ValueError, match="2-way"):
        ev.process(inputs[:1], [{"sem_seg": torch.zeros(3, 2, 3)}])


def test_mean_over_folds():
    folds = [
        {"benchmark": "pascal5i", "fold": f, "metrics": {"mIoU": 40.0 + f, "FB-IoU": 60.0}}
        for f in range(4)
    ]
    out = mean_over_folds(folds)
    assert out["mIoU"] == pytest.approx(41.5) and out["FB-IoU"] == 60.0
    assert out["mIoU-fold3"] == 43.0 and out["folds"] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="repeat a fold"):
        mean_over_folds(folds + folds[:1])
    with pytest.raises(ValueError, match="different benchmarks"):
        mean_over_folds(folds[:1] + [{**folds[1], "benchmark": "coco20i"}])


def test_average_folds_command_prints_and_writes_the_mean(tmp_path, capsys):
    tool = load_script("tools/average_fewshot_folds.py")
    for fold in range(4):  # train_net.py --eval-only writes each into <OUTPUT_DIR>/inference
        folder = tmp_path / f"fold{fold}/inference"
        folder.mkdir(parents=True)
        result = {"benchmark": "pascal5i", "fold": fold,
                  "metrics": {"mIoU": 50.0 + 2 * fold, "FB-IoU": 70.0 - fold}}  # fmt: skip
        (folder / "fewshot_evaluation.json").write_text(json.dumps(result))
    folders = [str(tmp_path / f"fold{f}/inference") for f in range(4)]
    out = tmp_path / "mean.json"
    assert tool.main([*folders, "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["mIoU"] == pytest.approx(53.0) and printed["FB-IoU"] == pytest.approx(68.5)
    assert printed["folds"] == [0, 1, 2, 3] and printed["mIoU-fold2"] == 54.0
    assert tool.main([folders[0], str(tmp_path / "fold9")]) == 2  # not evaluated: one line
    assert "fold9 does not exist; evaluate a pascal5i_" in capsys.readouterr().err


def test_fold_files_that_are_not_fold_results_are_named(tmp_path, caplog):
    (tmp_path / "cut.json").write_text('{"benchmark": "pascal5i", "fold": ')
    with pytest.raises(ValueError, match=r"cut.json is not valid JSON"):
        load_fold_result(str(tmp_path / "cut.json"))
    (tmp_path / "sem_seg_evaluation.json").write_text('{"sem_seg": {"mIoU": 3.0}}')
    with pytest.raises(ValueError, match=r"sem_seg_evaluation.json is not a fewshot_evaluat"):
        load_fold_result(str(tmp_path / "sem_seg_evaluation.json"))
    three = [
        {"benchmark": "coco20i", "fold": f, "metrics": {"mIoU": 1.0, "FB-IoU": 2.0}}
        for f in (0, 1, 3)
    ]
    assert mean_over_folds(three)["folds"] == [0, 1, 3]
    assert "Averaged 3 folds [0, 1, 3]: the papers' mean is over all 4 folds" in caplog.text
