"""ovseg.engine.demo_results: make demo's split average and its markdown tables."""

import math

from ovseg.engine.demo_results import MASK_KEYS, average_splits, results_markdown


def _run(miou_unseen, **mask):
    return {"mIoU-seen": 50.0, "mIoU-unseen": miou_unseen, "hIoU": 30.0, "seconds": 9.0, **mask}


def _results(students):
    return {
        "split": "a", "seed": 0, "mode": "quick", "students": students,
        "clip": {"zero_shot_accuracy": 100.0},
        "teacher": {"object_pixel_accuracy": 80.0, "chance_accuracy": 12.5, "mIoU": 11.0},
        "baselines": {
            "oracle_masks_random_names": {"mIoU-unseen": 1.2, "hIoU": 1.6},
            "uniform": {"mIoU-unseen": 1.2, "hIoU": 1.6},
        },
    }  # fmt: skip


def test_a_student_with_mask_results_gets_a_row_in_the_mask_table():
    mask = dict(zip(MASK_KEYS, (40.0, 20.0, 35.5, 30.0, float("nan"))))
    students = {
        "lseg": {"teacher": _run(20.0), "random_teacher": _run(1.0)},
        "freeseg": {"teacher": _run(25.0, **mask), "random_teacher": _run(2.0, **mask)},
    }
    text = results_markdown(_results(students), "make demo")
    assert "| freeseg | toy CLIP | 50.0 | 25.0 | 30.0 | 9.0 |" in text
    assert "| student | CLIP | AP-seen | AP-unseen | AP50-unseen | PQ-seen | PQ-unseen |" in text
    assert "| freeseg | random CLIP | 40.0 | 20.0 | 35.5 | 30.0 | - |" in text
    assert "| lseg | toy CLIP | 40.0" not in text  # semantic students stay out of it
    only_semantic = results_markdown(_results({"lseg": students["lseg"]}), "make demo")
    assert "AP-seen" not in only_semantic


def test_splits_average_their_numbers_and_drop_private_keys():
    per_split = {
        "a": {"students": {"freeseg": {"teacher": {"PQ-unseen": 10.0}, "_weights": "a.pth"}}},
        "b": {"students": {"freeseg": {"teacher": {"PQ-unseen": float("nan")}}}},
    }
    avg = average_splits(per_split)
    assert avg == {"students": {"freeseg": {"teacher": {"PQ-unseen": 10.0}}}}
    assert math.isnan(
        average_splits({"b": per_split["b"]})["students"]["freeseg"]["teacher"]["PQ-unseen"]
    )
