"""OverlayVisualizer draws the pixels detectron2's Visualizer draws (it only skips the axes'
data-limit update when it adds a polygon): semantic overlays with seen and unseen classes,
regions with and without holes, enlarged; instances and panoptic segments."""

import numpy as np
import pytest
import torch

from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer

from ovseg.utils import mask_visualization, visualization
from ovseg.utils.visualization import OverlayVisualizer, draw_semantic, vocabulary_metadata


def _scene():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    label = np.zeros((60, 80), np.int64)
    label[5:40, 5:50] = 1
    label[15:25, 15:30] = 2  # a hole in class 1
    label[45:58, 60:78] = 3
    label[50:55, 2:9] = 255
    return image, label


def _with(monkeypatch, module, cls, draw):
    monkeypatch.setattr(module, "OverlayVisualizer", cls)
    return draw()


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_semantic_overlay_pixels_are_detectron2s(monkeypatch, scale):
    image, label = _scene()
    meta = vocabulary_metadata(["sky", "tree", "cat", "dog"])

    def draw():
        return draw_semantic(image, label, meta, unseen=["dog"], scale=scale).get_image()

    ours = _with(monkeypatch, visualization, OverlayVisualizer, draw)
    reference = _with(monkeypatch, visualization, Visualizer, draw)
    assert ours.shape == (60 * scale, 80 * scale, 3)
    np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize("alpha, edge", [(0.5, None), (0.9, None), (0.4, (0.1, 0.2, 0.3))])
def test_polygons_and_their_edges_are_detectron2s(alpha, edge):
    image, label = _scene()
    outlines = []
    for cls in (OverlayVisualizer, Visualizer):
        vis = cls(image, vocabulary_metadata(["a", "b"]), scale=1.5)
        vis.draw_binary_mask((label == 3).astype(np.uint8), color=(0.8, 0.1, 0.3),
                             edge_color=edge, alpha=alpha)  # fmt: skip
        outlines.append(vis.output.get_image())
    np.testing.assert_array_equal(*outlines)
    assert (outlines[0] != OverlayVisualizer(image, None, scale=1.5).output.get_image()).any()


def test_instance_and_panoptic_pixels_are_detectron2s(monkeypatch):
    image, label = _scene()
    names = ["sky", "tree", "cat", "dog"]
    instances = Instances((60, 80))
    instances.pred_masks = torch.stack([torch.from_numpy(label == k) for k in (1, 3)])
    instances.pred_classes = torch.tensor([1, 3])
    instances.scores = torch.tensor([0.9, 0.8])
    ids = torch.from_numpy(np.where(label == 255, 0, label + 1))
    segments = [{"id": k + 1, "category_id": k, "isthing": k == 2} for k in range(4)]

    def draw():
        a = mask_visualization.draw_instance_predictions(image, instances, names, unseen=["dog"])
        b = mask_visualization.draw_panoptic_prediction(image, ids, segments, names)
        return a.get_image(), b.get_image()

    ours = _with(monkeypatch, mask_visualization, OverlayVisualizer, draw)
    reference = _with(monkeypatch, mask_visualization, Visualizer, draw)
    for a, b in zip(ours, reference):
        np.testing.assert_array_equal(a, b)
