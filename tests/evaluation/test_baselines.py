"""Chance baselines: uniform names per pixel, perfect masks with random names."""

import numpy as np
import pytest

from ovseg.evaluation.baselines import oracle_masks_random_names, uniform_baseline


def test_single_class_vocabulary_is_perfect():
    labels = [np.zeros((4, 4), np.uint8)]
    assert uniform_baseline(labels, ["a"])["mIoU"] == 100.0
    assert oracle_masks_random_names(labels, ["a"])["mIoU"] == 100.0


def test_uniform_matches_expected_iou():
    # class 0 covers 3/4 of the pixels, class 1 a quarter; with K=2 uniform guesses the
    # expected confusion gives IoU_c = (n_c/2) / (n_c + (N - n_c)/2)
    label = np.zeros((200, 200), np.uint8)
    label[:, 150:] = 1
    res = uniform_baseline([label], ["a", "b"], unseen=["b"], seed=1)
    n, n1 = label.size, (label == 1).sum()
    expected_b = 100 * (n1 / 2) / (n1 + (n - n1) / 2)
    assert res["mIoU-unseen"] == pytest.approx(expected_b, abs=0.5)
    expected_a = 100 * ((n - n1) / 2) / ((n - n1) + n1 / 2)
    assert res["mIoU-seen"] == pytest.approx(expected_a, abs=0.5)


def test_ignore_pixels_do_not_count():
    label = np.array([[0, 1], [1, 0]], np.uint8)
    with_ignore = np.array([[0, 1, 255], [1, 0, 255]], np.uint8)
    for fn in (uniform_baseline, oracle_masks_random_names):
        a = fn([label], ["a", "b"], seed=3)
        b = fn([with_ignore], ["a", "b"], seed=3)
        assert a == b


def test_oracle_names_whole_regions():
    # two images, each one class region: with two names every drawing names each region
    # entirely right or entirely wrong, so per-class IoU is 0, 50 or 100
    labels = [np.zeros((3, 3), np.uint8), np.ones((3, 3), np.uint8)]
    res = oracle_masks_random_names(labels, ["a", "b"], draws=1, seed=0)
    assert res["IoU-a"] in (0.0, 50.0, 100.0)
    # averaged over many drawings each region is named right half the time
    many = oracle_masks_random_names(labels, ["a", "b"], draws=400, seed=0)
    assert many["pACC"] == pytest.approx(50.0, abs=6.0)


def test_seeded():
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 3, (8, 8)).astype(np.uint8) for _ in range(3)]
    assert uniform_baseline(labels, ["a", "b", "c"], seed=5) == uniform_baseline(
        labels, ["a", "b", "c"], seed=5
    )
