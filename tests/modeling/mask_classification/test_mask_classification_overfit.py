"""End to end: a tiny backbone + pixel decoder + masked-attention decoder + criterion fit two
synthetic images in 20 steps."""

import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.structures import Instances

from ovseg.modeling.mask_classification import (
    HungarianMatcher,
    LinearClassHead,
    MaskClassificationCriterion,
    MaskedAttentionDecoder,
    MSDeformAttnPixelDecoder,
    semantic_inference,
)


class _TinyBackbone(nn.Module):
    """Strided convs giving res2-res5 (strides 4-32)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.stages = nn.ModuleList(nn.Conv2d(8, 8, 3, stride=2, padding=1) for _ in range(3))

    def forward(self, x):
        out = {"res2": torch.relu(self.stem(x))}
        for i, stage in enumerate(self.stages):
            out[f"res{i + 3}"] = torch.relu(stage(out[f"res{i + 2}"]))
        return out


def _data():
    images = torch.zeros(2, 3, 32, 32)
    targets = []
    for b, (box0, box1) in enumerate(
        [((0, 16, 0, 32), (16, 32, 0, 32)), ((0, 32, 0, 12), (0, 32, 12, 32))]
    ):
        masks = torch.zeros(2, 32, 32, dtype=torch.bool)
        masks[0, box0[0] : box0[1], box0[2] : box0[3]] = True
        masks[1, box1[0] : box1[1], box1[2] : box1[3]] = True
        images[b, 0][masks[0]] = 1.0
        images[b, 1][masks[1]] = 1.0
        targets.append(Instances((32, 32), gt_classes=torch.tensor([0, 1]), gt_masks=masks))
    return images, targets


def test_twenty_steps_reduce_the_loss_on_two_images():
    torch.manual_seed(0)
    backbone = _TinyBackbone()
    shapes = {f"res{i}": ShapeSpec(channels=8, stride=2**i) for i in range(2, 6)}
    pixel_decoder = MSDeformAttnPixelDecoder(
        shapes,
        transformer_dropout=0.0,
        transformer_nheads=4,
        transformer_dim_feedforward=64,
        transformer_enc_layers=1,
        conv_dim=32,
        mask_dim=16,
        norm="GN",
        transformer_in_features=["res3", "res4", "res5"],
        common_stride=4,
    )
    decoder = MaskedAttentionDecoder(
        32,
        class_head=LinearClassHead(32, num_classes=2),
        hidden_dim=32,
        num_queries=4,
        nheads=4,
        dim_feedforward=64,
        dec_layers=2,
        pre_norm=False,
        mask_dim=16,
    )
    criterion = MaskClassificationCriterion(matcher=HungarianMatcher())
    params = [*backbone.parameters(), *pixel_decoder.parameters(), *decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    images, targets = _data()
    history = []
    for _ in range(20):
        mask_features, _, multi = pixel_decoder(backbone(images))
        out = decoder(multi, mask_features)
        losses = criterion(out, targets)
        assert len(losses) == 9  # last + 2 auxiliary predictions, 3 terms each
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert sum(history[-3:]) / 3 < 0.6 * history[0], history
    sem = semantic_inference(out["pred_logits"][0].softmax(-1), out["pred_masks"][0])
    assert sem.shape == (2, 8, 8)
