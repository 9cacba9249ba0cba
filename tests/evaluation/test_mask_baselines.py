"""PQ and mask AP of the baselines: perfect masks with true / random names, uniform pixels."""

from __future__ import annotations

import pytest
from ovseg_testing import registered_toy_world
from ovseg_testing.panoptic import INSTANCE, PANOPTIC, registered_tiny_panoptic

from ovseg.evaluation.baselines import mask_baseline


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    with registered_toy_world(tmp_path_factory.mktemp("toy"), num_train=2, num_val=8) as root:
        yield root


def test_perfect_masks_with_perfect_names_score_100_on_the_hand_made_image(tmp_path):
    # one image: sky, a cat, a dog (unseen), a crowd of cats left VOID by the prediction
    with registered_tiny_panoptic(tmp_path):
        res = mask_baseline(PANOPTIC, "oracle")
        for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "PQ-seen", "PQ-unseen"):
            assert res["panoptic_seg"][key] == pytest.approx(100.0), key
        for key in ("AP", "AP50", "AP75", "AP-seen", "AP-unseen"):
            assert res["segm"][key] == pytest.approx(100.0), key
        assert mask_baseline(INSTANCE, "oracle")["segm"]["AP"] == pytest.approx(100.0)


def test_toy_world_baselines_are_ordered(toy):
    oracle = mask_baseline("toy_world_panoptic_val", "oracle")
    random_names = mask_baseline("toy_world_panoptic_val", "oracle_masks_random_names")
    uniform = mask_baseline("toy_world_panoptic_val", "uniform")
    for key in ("PQ", "PQ-seen", "PQ-unseen"):
        assert oracle["panoptic_seg"][key] == pytest.approx(100.0)
        assert uniform["panoptic_seg"][key] < 5
    assert oracle["segm"]["AP"] == pytest.approx(100.0)
    assert uniform["segm"]["AP"] < 5
    # perfect masks: every match is exact (a category's SQ is 1 or it has no match), so each
    # category's PQ equals its RQ; names drawn from 9 classes match about one segment in nine
    pan = random_names["panoptic_seg"]
    for key in ("", "-seen", "-unseen"):
        assert pan["PQ" + key] == pytest.approx(pan["RQ" + key])
    assert 0 < pan["PQ"] < 60 and 0 < random_names["segm"]["AP"] < 60
    instance = mask_baseline("toy_world_b_instance_val", "oracle")["segm"]
    assert instance["AP-unseen"] == pytest.approx(100.0)


def test_bad_baseline_requests_are_refused(toy):
    with pytest.raises(ValueError, match="unknown baseline 'perfect'"):
        mask_baseline("toy_world_panoptic_val", "perfect")
    with pytest.raises(ValueError, match="need a panoptic"):
        mask_baseline("toy_world_sem_seg_val", "oracle")
