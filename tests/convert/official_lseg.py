"""The official LSeg network re-derived for the conversion tests: the module tree (so the
state-dict keys and shapes) and forward of isl-org/lang-seg @bb00b21 modules/models/
lseg_net.py ``LSeg`` / lseg_net_zs.py ``LSegRN`` with lseg_vit.py's ``forward_flex``,
``_make_vit_b16_backbone`` and lseg_blocks.py's scratch and fusion blocks, on any timm ViT
or torchvision ResNet; written for these tests, random weights, float32 products."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RCU(nn.Module):  # ResidualConvUnit_custom (bn=True)
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.bn1(self.conv1(F.relu(x)))
        return self.bn2(self.conv2(F.relu(out))) + x


class Fusion(nn.Module):  # FeatureFusionBlock_custom
    def __init__(self, c):
        super().__init__()
        self.out_conv = nn.Conv2d(c, c, 1)
        self.resConfUnit1, self.resConfUnit2 = RCU(c), RCU(c)

    def forward(self, *xs):
        out = xs[0]
        if len(xs) == 2:
            out = out + self.resConfUnit1(xs[1])
        out = self.resConfUnit2(out)
        out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(out)


class ProjectReadout(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, x):
        readout = x[:, 0:1].expand_as(x[:, 1:])
        return self.project(torch.cat([x[:, 1:], readout], -1))


def _post(width, ch, resample):
    # indices as the official Sequential: readout, Transpose, Unflatten, 1x1 conv, resample
    layers = [ProjectReadout(width), nn.Identity(), nn.Identity(), nn.Conv2d(width, ch, 1)]
    return nn.Sequential(*layers, *([resample] if resample is not None else []))


class OfficialLSeg(nn.Module):
    """``net`` of an official LSeg Lightning module (ViT: ``vit`` given; ResNet: ``resnet``)."""

    def __init__(self, clip, features, head_dim, *, vit=None, hooks=(), channels=(), resnet=None):
        super().__init__()
        self.clip_pretrained = clip
        self.pretrained = nn.Module()
        self.scratch = nn.Module()
        if vit is not None:
            self.hooks = list(hooks)
            w = vit.embed_dim
            c = list(channels)
            self.pretrained.model = vit
            self.pretrained.act_postprocess1 = _post(w, c[0], nn.ConvTranspose2d(c[0], c[0], 4, 4))
            self.pretrained.act_postprocess2 = _post(w, c[1], nn.ConvTranspose2d(c[1], c[1], 2, 2))
            self.pretrained.act_postprocess3 = _post(w, c[2], None)
            self.pretrained.act_postprocess4 = _post(w, c[3], nn.Conv2d(c[3], c[3], 3, 2, 1))
            in_shape = c
        else:
            p = self.pretrained
            p.layer1 = nn.Sequential(
                resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1
            )
            p.layer2, p.layer3, p.layer4 = resnet.layer2, resnet.layer3, resnet.layer4
            in_shape = [getattr(resnet, f"layer{i}")[-1].conv2.out_channels for i in range(1, 5)]
        for i, ch in enumerate(in_shape, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(ch, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", Fusion(features))
        self.scratch.head1 = nn.Conv2d(features, head_dim, 1)
        self.logit_scale = torch.tensor(1 / 0.07)

    def _vit_layers(self, x):
        m = self.pretrained.model
        b, _, h, w = x.shape
        gh, gw = h // 16, w // 16
        # forward_flex with _resize_pos_embed (bilinear)
        grid = m.pos_embed[0, 1:]
        old = int(grid.shape[0] ** 0.5)
        grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear")
        pos = torch.cat([m.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], 1)
        t = m.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([m.cls_token.expand(b, -1, -1), t], dim=1) + pos
        acts = []
        for i, blk in enumerate(m.blocks):
            t = blk(t)
            if i in self.hooks:
                acts.append(t)
        outs = []
        for i, a in enumerate(acts, start=1):
            post = getattr(self.pretrained, f"act_postprocess{i}")
            y = post[0](a).transpose(1, 2).unflatten(2, (gh, gw))
            outs.append(post[3:](y))
        return outs

    def forward(self, x, text_features):
        if hasattr(self.pretrained, "model"):
            layers = self._vit_layers(x)
        else:
            p, layers = self.pretrained, []
            for name in ("layer1", "layer2", "layer3", "layer4"):
                x = getattr(p, name)(x)
                layers.append(x)
        s = self.scratch
        rn = [getattr(s, f"layer{i}_rn")(v) for i, v in enumerate(layers, start=1)]
        path = s.refinenet4(rn[3])
        path = s.refinenet3(path, rn[2])
        path = s.refinenet2(path, rn[1])
        path = s.refinenet1(path, rn[0])
        feats = F.normalize(s.head1(path), dim=1)
        text = F.normalize(text_features, dim=-1)
        out = self.logit_scale * torch.einsum("bdhw,kd->bkhw", feats, text)
        return F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
