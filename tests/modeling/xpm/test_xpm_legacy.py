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
from detectron2.modeling.proposal_generator import RPN
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
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
from ovseg.modeling.xpm.legacy_masks import legacy_mask_targets
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


def _gt(boxes, size=(40, 40)) -> Instances:
    return Instances(size, gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)))


def _settings(monkeypatch, rpn, boundary: float, batch: int, fraction: float) -> None:
    """The shared model's RPN with these sampling settings for one test."""
    monkeypatch.setattr(rpn, "anchor_boundary_thresh", boundary)
    monkeypatch.setattr(rpn, "batch_size_per_image", batch)
    monkeypatch.setattr(rpn, "positive_fraction", fraction)


def test_rpn_matches_anchors_by_plus_one_iou(legacy_model, monkeypatch):
    """A hand case: inclusive target 0..9 (10 x 10 px) in a 40 x 40 image, border anchors
    ignored (BOUNDARY_THRESH 0, the official STRADDLE_THRESH)."""
    _, model = legacy_model
    rpn = model.proposal_generator
    _settings(monkeypatch, rpn, 0, 1000, 0.5)  # sample every anchor
    anchors = Boxes(torch.tensor([
        [0.0, 0.0, 9.0, 9.0],     # the target: IoU 1
        [0.0, 0.0, 6.0, 9.0],     # +1 IoU 70/100 = 0.7: positive; exact 54/81: ignored
        [5.0, 0.0, 14.0, 9.0],    # +1 IoU 50/150 = 0.33: ignored; exact 36/126 = 0.29: negative
        [20.0, 20.0, 29.0, 29.0],  # negative
        [-1.0, 0.0, 8.0, 9.0],    # crosses the border: ignored
        [30.0, 30.0, 39.5, 39.0],  # x2 39.5 < 40: inside, negative
    ]))  # fmt: skip
    gt = _gt([[0.0, 0.0, 9.0, 9.0]])
    (labels,), (matched,) = rpn.label_and_sample_anchors([anchors], [gt])
    assert labels.tolist() == [1, 1, -1, 0, -1, 0]
    torch.testing.assert_close(matched, gt.gt_boxes.tensor.expand(6, 4))
    official = ref.rpn_labels(
        ref.match(ref.iou(gt.gt_boxes.tensor, anchors.tensor), 0.7, 0.3, True),
        ref.visibility(anchors.tensor, 40, 40),
    )
    assert labels.tolist() == official.int().tolist()
    (exact,), _ = RPN.label_and_sample_anchors(rpn, [anchors], [gt])  # detectron2's rule
    assert exact.tolist() == [1, -1, 0, 0, -1, 0]


def test_rpn_matcher_and_sampler_are_the_official_ones(legacy_model, monkeypatch):
    _, model = legacy_model
    rpn = model.proposal_generator
    _settings(monkeypatch, rpn, 0, 1000, 0.5)
    (anchors,) = rpn.anchor_generator([torch.zeros(1, 1, 4, 5)])  # 64 x 80 image
    # an 8 px target between anchor centres (23.5, 39.5): its best anchors tie at a low
    # IoU and are positive all the same (allow_low_quality_matches)
    gt = _gt([[28.0, 28.0, 35.0, 35.0], [30.0, 20.0, 70.0, 60.0], [40.0, 2.0, 61.0, 21.0]])
    gt = Instances((64, 80), gt_boxes=gt.gt_boxes)
    iou = ref.iou(gt.gt_boxes.tensor, anchors.tensor)
    official = ref.rpn_labels(
        ref.match(iou, 0.7, 0.3, True), ref.visibility(anchors.tensor, 80, 64)
    )
    (labels,), (matched,) = rpn.label_and_sample_anchors([anchors], [gt])
    assert labels.tolist() == official.int().tolist()
    best = iou[0] == iou[0].max()
    assert int(best.sum()) >= 2 and iou[0].max() < 0.3 and (labels[best] == 1).all()
    pos = labels == 1
    torch.testing.assert_close(matched[pos], gt.gt_boxes.tensor[iou.argmax(0)][pos])
    _settings(monkeypatch, rpn, 0, 16, 0.5)
    for seed in range(3):  # the same draws as the official sampler
        torch.manual_seed(seed)
        (sampled,), _ = rpn.label_and_sample_anchors([anchors], [gt])
        torch.manual_seed(seed)
        want_pos, want_neg = ref.sample(official, 16, 0.5)
        assert set((sampled == 1).nonzero()[:, 0].tolist()) == set(want_pos.tolist())
        assert set((sampled == 0).nonzero()[:, 0].tolist()) == set(want_neg.tolist())


def test_rpn_losses_are_normalised_by_the_sampled_anchors(legacy_model, monkeypatch):
    cfg, model = legacy_model
    rpn = model.proposal_generator
    _settings(monkeypatch, rpn, 0, 64, 0.5)
    (anchors,) = rpn.anchor_generator([torch.zeros(1, 1, 3, 4)])
    gt = Instances((48, 64), gt_boxes=Boxes(torch.tensor([[5.0, 6.0, 30.0, 40.0]])))
    torch.manual_seed(11)
    (labels,), (matched,) = rpn.label_and_sample_anchors([anchors], [gt])
    assert 0 < int((labels >= 0).sum()) < 64  # fewer than BATCH_SIZE_PER_IMAGE: it matters
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(1, len(anchors), generator=g)
    deltas = torch.randn(1, len(anchors), 4, generator=g) * 0.2
    with EventStorage(0):
        got = rpn.losses([anchors], [logits], [labels], [deltas], [matched])
    beta = cfg.MODEL.RPN.SMOOTH_L1_BETA
    targets = ref.encode(matched, anchors.tensor, (1.0,) * 4)  # +1 coding (rpn.py:127)
    pos, neg = (labels == 1).nonzero()[:, 0], (labels == 0).nonzero()[:, 0]
    obj, box = ref.rpn_losses(logits[0], deltas[0], labels.float(), targets, pos, neg, beta)
    torch.testing.assert_close(got["loss_rpn_cls"], obj)
    torch.testing.assert_close(got["loss_rpn_loc"], box)


def _polygons(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        centre = torch.rand(2, generator=g) * 50 + 5
        angles = torch.sort(torch.rand(5, generator=g) * 6.28).values
        radius = torch.rand(5, generator=g) * 12 + 3
        xy = torch.stack([centre[0] + radius * angles.cos(), centre[1] + radius * angles.sin()])
        out.append([xy.t().reshape(-1).numpy().astype("float64")])
    return out


def test_mask_targets_are_the_official_crop_and_resize(legacy_model):
    """``project_masks_on_boxes`` (mask_head/loss.py:11-42) of binary masks and polygons."""
    # hand case: one pixel (12, 12) in the box 10..17 (a 7 px crop: no +1) resized to 14 x 14:
    # bilinear weights reach it from cells 3..6, and a bool mask is in wherever the value
    # is non-zero; detectron2's RoIAlign average >= 0.5 keeps cells 4..5
    dot = torch.zeros(1, 30, 30, dtype=torch.bool)
    dot[0, 12, 12] = True
    box = torch.tensor([[10.0, 10.0, 17.0, 17.0]])
    got = legacy_mask_targets(BitMasks(dot), box, 14, (30, 30))[0]
    assert got.nonzero()[:, 0].unique().tolist() == [3, 4, 5, 6]
    assert int(got.sum()) == 16
    exact = BitMasks(dot).crop_and_resize(box, 14)[0]
    assert exact.nonzero()[:, 0].unique().tolist() == [4, 5]
    # random masks (bool and uint8: type_as truncates) and boxes, some across the border,
    # corners at .5 (rounded half to even)
    g = torch.Generator().manual_seed(13)
    masks = torch.rand(8, 50, 64, generator=g) > 0.6
    boxes = _boxes(8, seed=14, side=60.0)
    boxes[0] = torch.tensor([-6.0, -3.0, 10.5, 12.5])
    boxes[1] = torch.tensor([2.5, 3.5, 70.0, 55.0])
    for kind in (torch.bool, torch.uint8):
        got = legacy_mask_targets(masks.to(kind), boxes, 14, (50, 64))
        want = torch.stack([ref.project_binary(m.to(kind), b, 14) for m, b in zip(masks, boxes)])
        torch.testing.assert_close(got, want.float())
    polys = _polygons(8, seed=15)
    got = legacy_mask_targets(PolygonMasks(polys), boxes, 14, (50, 64))
    want = [ref.project_polygons(p, b, 64, 50, 14) for p, b in zip(polys, boxes)]
    torch.testing.assert_close(got, torch.stack(want).float())
    assert 0 < got.mean() < 1
    # the right half of the box 10..20 as a polygon: crop 10 px, scaled 0.4 -> columns 2, 3
    half = PolygonMasks([[[15.0, 10.0, 20.0, 10.0, 20.0, 20.0, 15.0, 20.0]]])
    got = legacy_mask_targets(half, torch.tensor([[10.0, 10.0, 20.0, 20.0]]), 4, (30, 30))[0]
    assert got.tolist() == [[0.0, 0.0, 1.0, 1.0]] * 4
    # the RoI heads cut their targets so under the key
    _, model = legacy_model
    rois = Instances((50, 64), proposal_boxes=Boxes(boxes), gt_masks=BitMasks(masks))
    torch.testing.assert_close(
        model.roi_heads._mask_targets(rois, 14), legacy_mask_targets(masks, boxes, 14, (50, 64))
    )
