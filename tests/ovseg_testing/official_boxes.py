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
