"""maskrcnn_benchmark's box formulas written out plainly (paths under the official XPM
repository's ``maskrcnn_benchmark/``), the references MODEL.XPM.LEGACY_BOXES is tested
against: each is a direct transcription, loops where the official code loops."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CLIP = math.log(1000.0 / 16)  # bbox_xform_clip (box_coder.py:13)


def decode(deltas, boxes, weights, clip=CLIP):
    """``BoxCoder.decode`` (``modeling/box_coder.py:52-95``), one box per row."""
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw, dh = (deltas[:, 2] / ww).clamp(max=clip), (deltas[:, 3] / wh).clamp(max=clip)
    px, py = dx * widths + ctr_x, dy * heights + ctr_y
    pw, ph = dw.exp() * widths, dh.exp() * heights
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw - 1, py + 0.5 * ph - 1], 1)


def encode(gt, proposals, weights):
    """``BoxCoder.encode`` (``box_coder.py:22-50``)."""
    ew, eh = proposals[:, 2] - proposals[:, 0] + 1, proposals[:, 3] - proposals[:, 1] + 1
    ex, ey = proposals[:, 0] + 0.5 * ew, proposals[:, 1] + 0.5 * eh
    gw, gh = gt[:, 2] - gt[:, 0] + 1, gt[:, 3] - gt[:, 1] + 1
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    wx, wy, ww, wh = weights
    return torch.stack(
        [wx * (gx - ex) / ew, wy * (gy - ey) / eh, ww * (gw / ew).log(), wh * (gh / eh).log()], 1
    )


def clip(boxes, height, width):
    """``BoxList.clip_to_image(remove_empty=False)`` (``structures/bounding_box.py:214-219``)."""
    out = boxes.clone()
    out[:, 0].clamp_(min=0, max=width - 1)
    out[:, 1].clamp_(min=0, max=height - 1)
    out[:, 2].clamp_(min=0, max=width - 1)
    out[:, 3].clamp_(min=0, max=height - 1)
    return out


def iou(a, b):
    """``boxlist_iou`` (``structures/boxlist_ops.py:53-89``)."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = torch.max(a[:, None, :2], b[:, :2])
    rb = torch.min(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b - inter)


def nms(boxes, scores, thresh):
    """The CUDA ``_C.nms`` (``csrc/cuda/nms.cu:14-70``): +1 areas, suppress at IoU > thresh;
    kept indices by decreasing score."""
    order = scores.argsort(descending=True).tolist()
    suppressed = [False] * len(order)
    keep = []
    for i_pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[i_pos + 1 :]:
            if not suppressed[j]:
                xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
                xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
                w, h = max(0.0, float(xx2 - xx1 + 1)), max(0.0, float(yy2 - yy1 + 1))
                area_i = float((boxes[i, 2] - boxes[i, 0] + 1) * (boxes[i, 3] - boxes[i, 1] + 1))
                area_j = float((boxes[j, 2] - boxes[j, 0] + 1) * (boxes[j, 3] - boxes[j, 1] + 1))
                if w * h / (area_i + area_j - w * h) > thresh:
                    suppressed[j] = True
    return torch.tensor(keep, dtype=torch.long)


def grid_anchors(cell, stride, grid_h, grid_w):
    """``AnchorGenerator.grid_anchors`` (``modeling/rpn/anchor_generator.py:73-95``)."""
    rows = [cell[a] + torch.tensor([x * stride, y * stride] * 2, dtype=cell.dtype)
            for y in range(grid_h) for x in range(grid_w) for a in range(len(cell))]  # fmt: skip
    return torch.stack(rows)


def paste(mask, box, im_h, im_w):
    """``paste_mask_in_image(..., thresh=-1, padding=1)`` (``roi_heads/mask_head/
    inference.py:96-165``): the probabilities pasted, 0 outside."""
    m = mask.shape[-1]
    padded = torch.zeros(m + 2, m + 2)
    padded[1:-1, 1:-1] = mask
    scale = (m + 2) / m
    w_half, h_half = (box[2] - box[0]) * 0.5 * scale, (box[3] - box[1]) * 0.5 * scale
    x_c, y_c = (box[2] + box[0]) * 0.5, (box[3] + box[1]) * 0.5
    b = torch.tensor([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half]).to(torch.int32)
    b = [int(v) for v in b]
    w, h = max(b[2] - b[0] + 1, 1), max(b[3] - b[1] + 1, 1)
    resized = F.interpolate(padded[None, None], size=(h, w), mode="bilinear", align_corners=False)
    out = torch.zeros(im_h, im_w)
    x_0, x_1 = max(b[0], 0), min(b[2] + 1, im_w)
    y_0, y_1 = max(b[1], 0), min(b[3] + 1, im_h)
    if x_1 > x_0 and y_1 > y_0:
        out[y_0:y_1, x_0:x_1] = resized[0, 0, y_0 - b[1] : y_1 - b[1], x_0 - b[0] : x_1 - b[0]]
    return out


# ---------------------------------------------------------------- training (rpn/loss.py, masks)
def match(quality, high, low, allow_low_quality):
    """``Matcher.__call__`` (``modeling/matcher.py:42-112``) on a (targets, predictions)
    quality matrix: per prediction its target, -1 below ``low``, -2 in [low, high)."""
    vals, matches = quality.max(dim=0)
    all_matches = matches.clone()
    matches[vals < low] = -1
    matches[(vals >= low) & (vals < high)] = -2
    if allow_low_quality:  # each target's best predictions, ties included (:83-112)
        best = quality.max(dim=1).values
        pred = torch.nonzero(quality == best[:, None])[:, 1]
        matches[pred] = all_matches[pred]
    return matches


def visibility(anchors, width, height, straddle=0):
    """``AnchorGenerator.add_visibility_to`` (``rpn/anchor_generator.py:97-110``)."""
    return (
        (anchors[:, 0] >= -straddle)
        & (anchors[:, 1] >= -straddle)
        & (anchors[:, 2] < width + straddle)
        & (anchors[:, 3] < height + straddle)
    )


def rpn_labels(matches, visible):
    """``RPNLossComputation.prepare_targets``' labels (``rpn/loss.py:64-79``): 1, 0, -1."""
    labels = (matches >= 0).float()
    labels[matches == -1] = 0
    labels[~visible] = -1
    labels[matches == -2] = -1
    return labels


def sample(labels, batch_size, positive_fraction):
    """``BalancedPositiveNegativeSampler.__call__`` for one image
    (``balanced_positive_negative_sampler.py:37-53``): sampled positive, negative indices."""
    positive = torch.nonzero(labels >= 1).squeeze(1)
    negative = torch.nonzero(labels == 0).squeeze(1)
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    perm1 = torch.randperm(positive.numel())[:num_pos]
    perm2 = torch.randperm(negative.numel())[:num_neg]
    return positive[perm1], negative[perm2]


def smooth_l1(x, y, beta):
    """``layers/smooth_l1_loss.py``, summed."""
    n = (x - y).abs()
    return torch.where(n < beta, 0.5 * n**2 / beta, n - 0.5 * beta).sum()


def rpn_losses(objectness, deltas, labels, targets, pos, neg, beta):
    """``RPNLossComputation.__call__`` (``rpn/loss.py:104-131``) over the sampled anchors:
    (objectness BCE averaged over them, box smooth-L1 summed over the positives / their
    number)."""
    sampled = torch.cat([pos, neg])
    box = smooth_l1(deltas[pos], targets[pos], beta) / sampled.numel()
    obj = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
    return obj, box


def _crop_corners(box, width, height, rounded):
    if rounded:  # BinaryMaskList.crop (structures/segmentation_mask.py:122)
        xmin, ymin, xmax, ymax = [round(float(b)) for b in box]
    else:  # PolygonInstance.crop (:278)
        xmin, ymin, xmax, ymax = map(float, box)
    xmin = min(max(xmin, 0), width - 1)
    ymin = min(max(ymin, 0), height - 1)
    xmax = min(max(xmax, 0), width)
    ymax = min(max(ymax, 0), height)
    return xmin, ymin, max(xmax, xmin + 1), max(ymax, ymin + 1)


def project_binary(mask, box, m):
    """``BinaryMaskList.crop(box).resize((m, m))`` (``segmentation_mask.py:118-158``),
    one (H, W) mask, in its dtype."""
    xmin, ymin, xmax, ymax = _crop_corners(box, mask.shape[1], mask.shape[0], True)
    cropped = mask[ymin:ymax, xmin:xmax]
    resized = F.interpolate(
        cropped[None, None].float(), size=(m, m), mode="bilinear", align_corners=False
    )
    return resized[0, 0].type_as(mask)


def project_polygons(polygons, box, width, height, m):
    """``PolygonInstance.crop(box).resize((m, m)).convert_to_binarymask()``
    (``segmentation_mask.py:215-335``), one instance's polygons."""
    import pycocotools.mask as mask_utils

    polygons = [torch.as_tensor(p, dtype=torch.float32) for p in polygons]
    polygons = [p for p in polygons if len(p) >= 6]
    xmin, ymin, xmax, ymax = _crop_corners(box, width, height, False)
    w, h = xmax - xmin, ymax - ymin
    cropped = []
    for poly in polygons:
        p = poly.clone()
        p[0::2] = p[0::2] - xmin
        p[1::2] = p[1::2] - ymin
        cropped.append(p)
    ratio_w, ratio_h = float(m) / float(w), float(m) / float(h)
    if ratio_w == ratio_h:
        scaled = [p * ratio_w for p in cropped]
    else:
        scaled = []
        for poly in cropped:
            p = poly.clone()
            p[0::2] *= ratio_w
            p[1::2] *= ratio_h
            scaled.append(p)
    rles = mask_utils.frPyObjects([p.numpy() for p in scaled], m, m)
    return torch.from_numpy(mask_utils.decode(mask_utils.merge(rles)))
