"""ovseg.pseudo.labels and .spec: the one score -> label rule, label tables, and what a
student expects of its teacher labels."""

import math

import numpy as np
import pytest
import torch
from ovseg_testing import NAMES5, make_store

from detectron2.config import get_cfg

from ovseg import add_ovseg_config
from ovseg.pseudo import (
    PseudoLabelSpec,
    expected_pseudo_labels,
    label_table,
    pixel_labels,
    scores_to_labels,
    store_ignore_value,
)


def test_pixel_labels_over_candidate_classes_hand_computed():
    # two images, scores over 2 candidates (training labels 7 and 3) at two pixels:
    # image 0: logits (0, ln 3) -> p = (1/4, 3/4): label 3; (ln 4, 0) -> (4/5, 1/5): label 7
    # image 1: a tie -> the first candidate, p = 1/2
    scores = torch.tensor(
        [
            [[[0.0, math.log(4)]], [[math.log(3), 0.0]]],
            [[[1.0, 1.0]], [[1.0, 1.0]]],
        ]
    )
    classes = torch.tensor([7, 3])
    labels, conf = pixel_labels(scores, threshold=0.0, ignore_value=255, classes=classes)
    assert labels.tolist() == [[[3, 7]], [[7, 7]]]
    torch.testing.assert_close(conf, torch.tensor([[[0.75, 0.8]], [[0.5, 0.5]]]))
    labels, _ = pixel_labels(scores, threshold=0.76, ignore_value=255, classes=classes)
    assert labels.tolist() == [[[255, 7]], [[255, 255]]]
    with pytest.raises(ValueError, match="2 classes but 3 labels"):
        pixel_labels(scores, threshold=0.0, ignore_value=255, classes=torch.tensor([1, 2, 3]))


def test_scores_to_labels_is_pixel_labels_of_one_map():
    scores = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(0)) * 3
    for kind in ("logits", "probabilities"):
        label, conf = scores_to_labels(scores, 0.4, 65535, kind)
        want_label, want_conf = pixel_labels(scores, threshold=0.4, ignore_value=65535, kind=kind)
        assert label.dtype == np.int64 and conf.dtype == np.float32
        np.testing.assert_array_equal(label, want_label.numpy())
        np.testing.assert_array_equal(conf, want_conf.numpy())
    with pytest.raises(ValueError, match=r"must be \(K, H, W\)"):
        scores_to_labels(scores[None], 0.0)


def test_label_table_by_name_with_the_smallest_dtype():
    table = label_table(["Sky", " cat", "tree"], NAMES5, source_ignore=255, target_ignore=255)
    assert table.shape == (256,) and table.dtype == np.uint8
    assert table[[0, 1, 2, 3, 255]].tolist() == [3, 0, 255, 255, 255]
    wide = label_table(["sky"], NAMES5, source_ignore=255, target_ignore=65535)
    assert wide.dtype == np.int64 and wide[[0, 1, 255]].tolist() == [3, 65535, 65535]
    assert store_ignore_value(255) == 255 and store_ignore_value(256) == 65535


def test_store_label_map_is_label_table(tmp_path):
    store = make_store(tmp_path / "s")
    want = label_table(NAMES5, ["road", "cat"], source_ignore=255, target_ignore=255)
    np.testing.assert_array_equal(store.label_map_to(["road", "cat"], 255), want)
    assert store.label_map_to(["road", "cat"], 255).dtype == np.uint8


def test_spec_refuses_another_store_and_names_the_fix(tmp_path):
    store = make_store(tmp_path / "s", threshold=0.5)
    spec = PseudoLabelSpec("store", tuple(reversed(NAMES5)), 0.5, command="make-it --please")
    spec.check_store(store)  # the same classes in another order fit
    other = PseudoLabelSpec("online", ("cat", "dog"), 0.25, command="make-it --please")
    with pytest.raises(ValueError) as e:
        other.check_store(store)
    msg = str(e.value)
    assert "does not fit this MaskCLIP+ config" in msg and "['cat', 'dog']" in msg
    assert "threshold is 0.5 but MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_THRESHOLD is 0.25" in msg
    assert msg.endswith("make-it --please")
    with pytest.raises(ValueError, match="PSEUDO_LABEL_SOURCE='disk' is not one of"):
        PseudoLabelSpec("disk", (), 0.0)


def test_only_students_that_declare_teacher_labels_expect_them():
    cfg = get_cfg()
    add_ovseg_config(cfg)
    for name in ("GeneralizedRCNN", "MaskCLIP", "LSeg", "NoSuchArchitecture"):
        cfg.MODEL.META_ARCHITECTURE = name
        assert expected_pseudo_labels(cfg) is None, name
    cfg.MODEL.META_ARCHITECTURE = "MaskCLIPPlus"
    cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE = "online"
    cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_THRESHOLD = 0.3
    spec = expected_pseudo_labels(cfg)
    assert (spec.source, spec.scored, spec.threshold) == ("online", (), 0.3)
