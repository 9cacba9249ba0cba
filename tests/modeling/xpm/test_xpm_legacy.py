"""MODEL.XPM.LEGACY_BOXES (ovseg/modeling/xpm/legacy.py, legacy_rpn.py): each of
maskrcnn_benchmark's conventions against its official formula written out
(tests/ovseg_testing/official_boxes.py) on small tensors, and how far each is from
detectron2's exact one."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import official_boxes as ref
from ovseg_testing import tiny_xpm_cfg, xpm_batch
from ovseg_testing.models import XPM_NAMES
from torchvision.ops import nms as exact_nms
from torchvision.ops import roi_align

from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import BitMasks, Boxes
from detectron2.utils.events import EventStorage

from ovseg.modeling.xpm.legacy import (
    LegacyBox2BoxTransform,
    legacy_batched_nms,
    legacy_clip,
    legacy_detections,
    legacy_pairwise_iou,
    official_cell_anchors,
    paste_masks_legacy,
    to_inclusive,
)
from ovseg.modeling.xpm.legacy_rpn import LegacyRPN

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _boxes(n: int, seed: int = 0, side: float = 60.0, integer: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * side
    wh = torch.rand(n, 2, generator=g) * side / 2 + 1
    out = torch.cat([xy, xy + wh], 1)
    return out.round() if integer else out


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coding_is_the_official_plus_one(weights):
    boxes = _boxes(20)
    deltas = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    deltas[0, 2] = 50.0  # clamped as officially (bbox_xform_clip)
    coder = LegacyBox2BoxTransform(weights)
    got = coder.apply_deltas(deltas, boxes)
    torch.testing.assert_close(got, ref.decode(deltas, boxes, weights))
    # k boxes per row decode each against the same reference box
    two = coder.apply_deltas(torch.cat([deltas, deltas.flip(0)], 1), boxes)
    torch.testing.assert_close(two[:, 4:], ref.decode(deltas.flip(0), boxes, weights))
    # zero deltas keep an inclusive box; detectron2's exact coding keeps it too, so the
    # conventions differ in the widths: +1 and the decoded x2 - 1
    torch.testing.assert_close(coder.apply_deltas(torch.zeros(20, 4), boxes), boxes)
    exact = Box2BoxTransform(weights).apply_deltas(deltas, boxes)
    assert (exact - got).abs().max() > 0.1
    gt = _boxes(20, seed=2)
    torch.testing.assert_close(coder.get_deltas(boxes, gt), ref.encode(gt, boxes, weights))
    torch.testing.assert_close(coder.apply_deltas(coder.get_deltas(boxes, gt), boxes), gt)


def test_clip_iou_and_inclusive_boxes():
    boxes = torch.tensor([[-5.0, 3.0, 70.0, 40.0], [10.0, -2.0, 20.0, 99.0]])
    torch.testing.assert_close(legacy_clip(boxes, (50, 64)), ref.clip(boxes, 50, 64))
    assert legacy_clip(boxes, (50, 64))[0].tolist() == [0.0, 3.0, 63.0, 40.0]
    a, b = _boxes(7), _boxes(5, seed=3)
    torch.testing.assert_close(legacy_pairwise_iou(Boxes(a), Boxes(b)), ref.iou(a, b))
    # one-pixel boxes: +1 IoU 1 with themselves, exact IoU undefined (0 area)
    dot = torch.tensor([[4.0, 4.0, 4.0, 4.0]])
    assert float(legacy_pairwise_iou(Boxes(dot), Boxes(dot))) == 1.0
    # COCO's x, y, w, h: exclusive x + w, inclusive x + w - 1 (never below x)
    mask_box = torch.tensor([[2.0, 3.0, 12.0, 3.5]])
    assert to_inclusive(mask_box).tolist() == [[2.0, 3.0, 11.0, 3.0]]


@pytest.mark.parametrize("integer", [True, False])
def test_nms_uses_plus_one_areas(integer):
    boxes = _boxes(60, seed=4, side=40.0, integer=integer)
    scores = torch.rand(60, generator=torch.Generator().manual_seed(5))
    # thresholds off simple ratios: integer boxes can meet 0.3 exactly, where float rounding
    # (in the official kernel too) decides
    for thresh in (0.301, 0.503, 0.699):
        want = ref.nms(boxes, scores, thresh)
        got = legacy_batched_nms(boxes, scores, torch.zeros(60, dtype=torch.long), thresh)
        assert got.tolist() == want.tolist()
    # +1 IoU 50/150 = 0.33 > 0.3 suppresses; exact IoU 36/126 = 0.29 does not
    pair = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]])
    s = torch.tensor([0.9, 0.8])
    assert legacy_batched_nms(pair, s, torch.zeros(2, dtype=torch.long), 0.3).tolist() == [0]
    assert exact_nms(pair, s, 0.3).tolist() == [0, 1]
    # groups (classes) never suppress each other
    assert legacy_batched_nms(pair, s, torch.tensor([0, 1]), 0.3).tolist() == [0, 1]


def test_detections_follow_the_official_post_processor():
    g = torch.Generator().manual_seed(6)
    boxes = ref.clip(_boxes(30, seed=7), 50, 64)
    scores = torch.rand(30, 4, generator=g).softmax(-1)  # 3 classes + background last
    got = legacy_detections(boxes, scores, (50, 64), 0.05, 0.5, 5)
    rows = []  # per class: scores > thresh, official NMS (filter_results, inference.py:121-163)
    for j in range(3):
        idx = (scores[:, j] > 0.05).nonzero()[:, 0]
        keep = ref.nms(boxes[idx], scores[idx, j], 0.5)
        rows += [(float(scores[i, j]), j, boxes[i].tolist()) for i in idx[keep].tolist()]
    assert len(rows) > 5  # the cut at the 5th score runs (kthvalue, inference.py:155-162)
    cut = sorted((r[0] for r in rows), reverse=True)[4]
    want = sorted((r for r in rows if r[0] >= cut), key=lambda r: -r[0])
    have = list(zip(got.scores.tolist(), got.pred_classes.tolist(), got.pred_boxes.tensor.tolist()))
    assert [h[1:] for h in have] == [w[1:] for w in want]
    torch.testing.assert_close(got.scores, torch.tensor([w[0] for w in want]))


def test_mask_paste_is_the_official_masker():
    # a 2x2 mask of ones at inclusive box 10..19: padded to 4x4, the box grown x2 to 5..23
    # (19 px), resized bilinearly: > 0.5 on pixels 10..18, one short of the box's last
    masks = torch.ones(1, 2, 2)
    pasted = paste_masks_legacy(masks, torch.tensor([[10.0, 10.0, 19.0, 19.0]]), 40, 40)[0]
    rows = (pasted > 0.5).any(1).nonzero()[:, 0]
    assert (rows.min(), rows.max()) == (10, 18)
    g = torch.Generator().manual_seed(8)
    probs = torch.rand(6, 14, 14, generator=g)
    boxes = torch.tensor([[3.2, 4.7, 30.1, 20.9], [-6.0, -3.0, 10.0, 12.0],
                          [50.0, 40.0, 63.0, 49.0], [7.0, 7.0, 7.0, 7.0],
                          [0.0, 0.0, 63.0, 49.0], [20.5, 1.5, 22.5, 48.5]])  # fmt: skip
    got = paste_masks_legacy(probs, boxes, 50, 64)
    for p, b, mine in zip(probs, boxes, got):
        torch.testing.assert_close(mine, ref.paste(p, b, 50, 64))
    assert paste_masks_legacy(probs[:0], boxes[:0], 50, 64).shape == (0, 50, 64)


@pytest.fixture(scope="module")
def legacy_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_xpm_cfg(
        tmp_path_factory.mktemp("clip"), "XPMTeacher", "MODEL.XPM.LEGACY_BOXES", "True"
    )
    return cfg, build_model(cfg).eval()


def test_rpn_anchors_and_proposals_are_the_official_ones(legacy_model):
    cfg, model = legacy_model
    rpn = model.proposal_generator
    assert isinstance(rpn, LegacyRPN) and isinstance(rpn.box2box_transform, LegacyBox2BoxTransform)
    sizes, ratios = cfg.MODEL.ANCHOR_GENERATOR.SIZES[0], cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]
    cell = official_cell_anchors(16, sizes, ratios)  # aspect ratios outermost
    (anchors,) = rpn.anchor_generator([torch.zeros(1, 1, 3, 4)])
    # detectron2's order (sizes outermost) of the official grid (anchor_generator.py:73-95)
    order = [r * len(sizes) + s for s in range(len(sizes)) for r in range(len(ratios))]
    torch.testing.assert_close(anchors.tensor, ref.grid_anchors(cell[order], 16, 3, 4))
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(1, len(anchors), generator=g)
    deltas = torch.randn(1, len(anchors), 4, generator=g) * 0.3
    rpn.pre_nms_topk, rpn.post_nms_topk = (50, 50), (20, 20)
    (props,) = rpn.predict_proposals([anchors], [logits], [deltas], [(40, 56)])
    # official RPNPostProcessor (rpn/inference.py:94-121): top-k, decode, clip, NMS 0.7
    top, idx = logits[0].topk(50)
    boxes = ref.clip(ref.decode(deltas[0, idx], anchors.tensor[idx], (1.0,) * 4), 40, 56)
    keep = ref.nms(boxes, top, cfg.MODEL.RPN.NMS_THRESH)[:20]
    torch.testing.assert_close(props.proposal_boxes.tensor, boxes[keep])
    torch.testing.assert_close(props.objectness_logits, top[keep])


def test_heads_pool_with_legacy_roi_align(legacy_model):
    _, model = legacy_model
    (pooler,) = model.roi_heads.pooler.level_poolers
    assert not pooler.aligned  # POOLER_TYPE ROIAlignV2 in the config, legacy all the same
    rois = torch.cat([torch.zeros(8, 1), _boxes(8, seed=10)], 1)
    for side in (4, 20):  # the CPU matmul path and torchvision's
        features = torch.randn(1, 3, side, side)
        want = roi_align(features, rois, pooler.output_size, pooler.spatial_scale, 0, False)
        torch.testing.assert_close(pooler(features, rois), want, atol=1e-5, rtol=1e-5)
        assert pooler.uses_matmul(features) == (side == 4)


@pytest.mark.parametrize("arch", ["XPMTeacher", "XPMStudent"])
def test_training_runs_the_official_way(tmp_path, arch):
    """Targets are COCO's inclusive boxes (x + w - 1), RoIs match them by +1 IoU and regress
    to their +1 encoding; a step of teacher and student trains."""
    torch.manual_seed(0)
    model = build_model(tiny_xpm_cfg(tmp_path, arch, "MODEL.XPM.LEGACY_BOXES", "True")).train()
    batch = xpm_batch(n=1)
    names = tuple(XPM_NAMES)
    gt, pseudo = model.gt_targets(batch, names, torch.arange(len(names)))
    exclusive = BitMasks(batch[0]["instances"].gt_masks).get_bounding_boxes().tensor
    both = torch.cat([gt[0].gt_boxes.tensor, pseudo[0].gt_boxes.tensor])
    torch.testing.assert_close(both, exclusive - torch.tensor([0, 0, 1.0, 1.0]))
    assert model.roi_heads.iou is legacy_pairwise_iou
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and {"loss_cls", "loss_mask"} <= set(losses)
