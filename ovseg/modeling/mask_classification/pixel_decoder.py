# Follows Mask2Former's MSDeformAttnPixelDecoder
# (mask2former/modeling/pixel_decoder/msdeformattn.py; FreeSeg @7707335 keeps it unchanged in
# mask2former/modeling/heads/msdeformattn.py), re-written.
"""Mask2Former's pixel decoder: a deformable-attention encoder over res3-5, then an FPN
lateral step on res2 and a 1x1 projection to the per-pixel mask features."""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..host_copy import device_memo
from .ms_deform_attn import MSDeformAttn
from .position_encoding import PositionEmbeddingSine

__all__ = ["MSDeformAttnEncoder", "MSDeformAttnPixelDecoder", "build_pixel_decoder"]


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm deformable self-attention + FFN (msdeformattn.py:92-131)."""

    def __init__(
        self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, shapes=None):
        attn = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index, shapes=shapes
        )
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    """Deformable DETR's encoder over several levels (msdeformattn.py:23-161); no padding mask
    (Mask2Former never passes one: every valid ratio is 1)."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 3,
        n_points: int = 4,
    ):
        super().__init__()
        layer = MSDeformAttnEncoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, n_points
        )
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def reference_points(shapes: Sequence[Tuple[int, int]], device) -> Tensor:
        """Pixel centres of every level as (x, y) in [0, 1]: (1, S, L, 2)."""
        refs = []
        for h, w in shapes:
            ys, xs = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, device=device) / h,
                torch.linspace(0.5, w - 0.5, w, device=device) / w,
                indexing="ij",
            )
            refs.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), -1))
        ref = torch.cat(refs, 0)
        return ref[None, :, None].expand(1, ref.shape[0], len(shapes), 2)

    def forward(
        self, srcs: List[Tensor], pos_embeds: List[Tensor]
    ) -> Tuple[Tensor, List[Tuple[int, int]]]:
        """Encode the levels jointly.

        Args:
            srcs (list[Tensor]): L maps (B, C, H_l, W_l), lowest resolution first.
            pos_embeds (list[Tensor]): their position encodings, same shapes.

        Returns:
            (Tensor, list): the encoded tokens (B, S, C) and the levels' (H_l, W_l).
        """
        shapes = [(int(s.shape[2]), int(s.shape[3])) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1)
                for i, p in enumerate(pos_embeds)
            ],
            1,
        )
        spatial, start = self._level_shapes(tuple(shapes), src.device)
        ref = self.reference_points(shapes, src.device).expand(src.shape[0], -1, -1, -1)
        for layer in self.layers:
            src = layer(src, pos, ref, spatial, start, shapes=shapes)
        return src, shapes

    def _level_shapes(self, shapes: Tuple[Tuple[int, int], ...], device) -> Tuple[Tensor, Tensor]:
        """(L, 2) long level sizes and (L,) level starts on ``device``, memoised per sizes (a
        tensor from a list is a copy from the host, a wait for the device at each forward)."""

        def make():
            spatial = torch.as_tensor(shapes, dtype=torch.long, device=device)
            return spatial, torch.cat((spatial.new_zeros((1,)), spatial.prod(1).cumsum(0)[:-1]))

        cache = self.__dict__.setdefault("_shape_cache", {})
        # evaluation's many image sizes: the memo is kept small
        return device_memo(cache, (shapes, device), make, limit=64)


@SEM_SEG_HEADS_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former's pixel decoder (msdeformattn.py:164-358).

    Args:
        input_shape: the backbone features it reads (e.g. res2-res5), by name.
        transformer_dropout: encoder dropout (0.1).
        transformer_nheads: encoder heads (8).
        transformer_dim_feedforward: encoder FFN width (1024, hard-coded officially at :306).
        transformer_enc_layers: encoder layers (6).
        conv_dim: channels of the encoder and FPN maps (256).
        mask_dim: channels of the mask features (256).
        norm: norm of the FPN convs ("GN").
        transformer_in_features: the features the encoder reads (res3-res5).
        common_stride: stride of the mask features (4): FPN steps are added down to it.
        transformer_n_points: sampled points per head and level (4).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        conv_dim: int,
        mask_dim: int,
        norm: Optional[Union[str, Callable]] = None,
        transformer_in_features: List[str],
        common_stride: int,
        transformer_n_points: int = 4,
    ):
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"transformer_in_features {missing} are not among the decoder's inputs "
                f"{sorted(input_shape)}; list them in MODEL.SEM_SEG_HEAD.IN_FEATURES"
            )
        ordered = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in ordered]
        trans = [(k, v) for k, v in ordered if k in transformer_in_features]
        self.transformer_in_features = [k for k, _ in trans]
        # low to high resolution (res5 first), each to conv_dim with GN(32) (:213-230)
        self.input_proj = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(v.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim)
            )
            for _, v in trans[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.transformer = MSDeformAttnEncoder(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=len(trans),
            n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3  # the transformer decoder reads 3 scales
        self.common_stride = common_stride
        min_stride = min(v.stride for _, v in trans)
        self.num_fpn_levels = int(np.log2(min_stride) - np.log2(common_stride))
        self._build_fpn([v.channels for _, v in ordered[: self.num_fpn_levels]], conv_dim, norm)

    def _build_fpn(self, channels: List[int], conv_dim: int, norm) -> None:
        use_bias = norm == ""
        lateral, output = [], []
        for idx, in_channels in enumerate(channels):
            lat = Conv2d(
                in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim)
            )
            out = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(lat)
            weight_init.c2_xavier_fill(out)
            # the official module names, so official checkpoints load by name
            self.add_module(f"adapter_{idx + 1}", lat)
            self.add_module(f"layer_{idx + 1}", out)
            lateral.append(lat)
            output.append(out)
        # top-down order (low to high resolution)
        self.lateral_convs = lateral[::-1]
        self.output_convs = output[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_dim_feedforward": head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            "common_stride": head.COMMON_STRIDE,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
        }

    def forward(self, features: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)

    def forward_features(self, features: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """Decode backbone features (in fp32: deformable attention has no half path).

        Args:
            features (dict[str, Tensor]): backbone maps (B, C_f, H/s_f, W/s_f) by name.

        Returns:
            (Tensor, Tensor, list[Tensor]): the mask features (B, mask_dim, H/4, W/4), the
            encoder's lowest-resolution map (B, conv_dim, H/32, W/32), and the 3 multi-scale
            maps (B, conv_dim, ., .) the transformer decoder reads, lowest resolution first.
        """
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise KeyError(f"pixel decoder: features {missing} missing; got {sorted(features)}")
        # autocast off on the features' device (CUDA or the CPU's bf16 AMP alike)
        device_type = next(iter(features.values())).device.type
        with torch.autocast(device_type, enabled=False):
            return self._forward_features_fp32(features)

    def _forward_features_fp32(
        self, features: Dict[str, Tensor]
    ) -> Tuple[Tensor, Tensor, List[Tensor]]:
        srcs, pos = [], []
        for idx, f in enumerate(self.transformer_in_features[::-1]):
            x = features[f].float()
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        y, shapes = self.transformer(srcs, pos)
        bs = y.shape[0]
        out = [
            z.transpose(1, 2).reshape(bs, -1, h, w)
            for z, (h, w) in zip(y.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        for idx, f in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
            cur = self.lateral_convs[idx](features[f].float())
            # bilinear, as official (:349), despite the "nearest" comment there
            up = F.interpolate(out[-1], size=cur.shape[-2:], mode="bilinear", align_corners=False)
            out.append(self.output_convs[idx](cur + up))
        return self.mask_features(out[-1]), out[0], out[: self.maskformer_num_feature_levels]


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The pixel decoder named by ``MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``.

    Returns:
        nn.Module: with ``forward_features(features) -> (mask_features, encoder_map,
        multi_scale_features)``.
    """
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    try:
        decoder_cls = SEM_SEG_HEADS_REGISTRY.get(name)
    except KeyError:
        raise KeyError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={name!r} is not registered in "
            f"SEM_SEG_HEADS_REGISTRY; known: {sorted(k for k, _ in SEM_SEG_HEADS_REGISTRY)}"
        ) from None
    decoder = decoder_cls(cfg, input_shape)
    if not callable(getattr(decoder, "forward_features", None)):
        raise TypeError(f"pixel decoder {name!r} has no forward_features(features) method")
    return decoder
