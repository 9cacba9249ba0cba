# Re-derives the official ZegCLIP modules (ZiqinZhou66/ZegCLIP @9ba4bb5:
# models/backbone/img_encoder.py VPTCLIPVisionTransformer, models/backbone/utils.py,
# models/backbone/text_encoder.py CLIPTextEncoder, models/decode_heads/decode_seg.py
# ATMSingleHeadSeg / TPN_Decoder / TPN_DecoderLayer / Attention), re-written without mmseg.
"""The official ZegCLIP model, module for module, so that its ``state_dict()`` has the official
key names and shapes and its forward computes what the official one does (deep prompts,
``use_stages=1``, ``use_proj=False``: every official config).

Kept on purpose from the official code: the class embedding added twice to the class token,
the bilinear resize of the positional embedding, the unused self-attention and ``norm1`` of
every decoder layer and the unused value/output/FFN weights of the last one, the loss's
``empty_weight`` buffer. The text encoder is only its parameters: the official configs read
the text embeddings from a file (``load_text_embedding``), so its forward never runs.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.LayerNorm):
    """CLIP's LayerNorm (computes in float32)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """CLIP's block, sequence-first (L, N, D); ``act``: QuickGELU for OpenAI's weights (the
    official code), GELU for a CLIP trained with it (the tiny test CLIP)."""

    def __init__(self, d_model: int, n_head: int, act: type = QuickGELU):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, d_model * 4)),
                    ("gelu", act()),
                    ("c_proj", nn.Linear(d_model * 4, d_model)),
                ]
            )
        )
        self.ln_2 = LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, act: type = QuickGELU):
        super().__init__()
        blocks = [ResidualAttentionBlock(width, heads, act) for _ in range(layers)]
        self.resblocks = nn.Sequential(*blocks)


class VPTCLIPVisionTransformer(nn.Module):
    """The official prompted CLIP ViT (``total_d_layer = layers - 1``, deep prompts)."""

    def __init__(self, *, input_resolution, patch_size, width, layers, heads, output_dim,
                 num_tokens, prompt_dim, total_d_layer, act=QuickGELU):  # fmt: skip
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        grid = input_resolution // patch_size
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid**2 + 1, width))
        self.spatial_size = grid
        self.ln_pre = LayerNorm(width)
        self.num_layers = layers
        self.transformer = Transformer(width, layers, heads, act)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.num_tokens = num_tokens
        self.prompt_embeddings = nn.Parameter(torch.zeros(1, num_tokens, prompt_dim))
        self.deep_prompt_embeddings = nn.Parameter(
            torch.zeros(total_d_layer, num_tokens, prompt_dim)
        )
        self.prompt_proj = nn.Linear(prompt_dim, prompt_dim)
        self.prompt_norm = LayerNorm(prompt_dim, eps=1e-6)
        self.prompt_dropout = nn.Dropout(0.1)

    def forward(self, x: Tensor):
        x = self.conv1(x)
        b, c, h, w = x.shape
        x = x.reshape(b, c, -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(b, 1, c, dtype=x.dtype)
        x = torch.cat([cls, x], dim=1)
        pos = self.positional_embedding.to(x.dtype)
        cls_pos = pos[0, :] + self.class_embedding.to(x.dtype)  # the class embedding again
        s = self.spatial_size
        spatial = F.interpolate(
            pos[1:].reshape(1, s, s, c).permute(0, 3, 1, 2), size=(h, w), mode="bilinear"
        )
        spatial = spatial.reshape(1, c, h * w).permute(0, 2, 1)
        x = x + torch.cat([cls_pos.reshape(1, 1, c), spatial], dim=1)
        x = self.ln_pre(x)
        prompts = self.prompt_dropout(self.prompt_proj(self.prompt_embeddings).expand(b, -1, -1))
        x = torch.cat((x[:, :1, :], prompts, x[:, 1:, :]), dim=1).permute(1, 0, 2)
        x = self.forward_deep_prompt(x, h, w)
        x = self.ln_post(x.permute(1, 0, 2)) @ self.proj
        glob = x[:, 0]
        visual = x[:, -(h * w) :].reshape(b, h, w, -1).permute(0, 3, 1, 2)
        visual = visual / visual.norm(dim=1, keepdim=True)
        return [(visual,), glob / glob.norm(dim=1, keepdim=True)]

    def forward_deep_prompt(self, hidden: Tensor, h: int, w: int) -> Tensor:
        b = hidden.shape[1]
        for i in range(self.num_layers):
            if i == 0:
                hidden = self.transformer.resblocks[i](hidden)
                continue
            deep = self.prompt_proj(self.deep_prompt_embeddings[i - 1]).expand(b, -1, -1)
            deep = self.prompt_dropout(deep).permute(1, 0, 2)
            hidden = torch.cat((hidden[:1], deep, hidden[1 + self.num_tokens :]), dim=0)
            hidden = self.transformer.resblocks[i](hidden)
        return self.prompt_norm(hidden)


class CLIPTextEncoder(nn.Module):
    """The official text encoder's parameters (never run by the official configs)."""

    def __init__(self, *, context_length, vocab_size, width, heads, layers, embed_dim):
        super().__init__()
        self.transformer = Transformer(width, layers, heads)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))


class Attention(nn.Module):
    """The decoder's cross-attention: also returns the head-averaged scaled logits."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.attn_drop = nn.Dropout(0.1)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, xq: Tensor, xk: Tensor, xv: Tensor):
        b, nq, c = xq.shape
        h = self.num_heads
        q = self.q(xq).reshape(b, nq, h, c // h).permute(0, 2, 1, 3)
        k = self.k(xk).reshape(b, xk.shape[1], h, c // h).permute(0, 2, 1, 3)
        v = self.v(xv).reshape(b, xv.shape[1], h, c // h).permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        saved = attn.clone()
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, nq, c)))
        return x.transpose(0, 1), saved.sum(dim=1) / h


class TPNDecoderLayer(nn.TransformerDecoderLayer):
    """torch's decoder layer whose forward skips self-attention (``self_attn``, ``norm1``)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        del self.multihead_attn
        self.multihead_attn = Attention(kwargs["d_model"], kwargs["nhead"])

    def forward(self, tgt: Tensor, memory: Tensor):
        tgt2, attn = self.multihead_attn(
            tgt.transpose(0, 1), memory.transpose(0, 1), memory.transpose(0, 1)
        )
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2)), attn


class TPNDecoder(nn.TransformerDecoder):
    def forward(self, tgt: Tensor, memory: Tensor):
        outputs, attns = [], []
        for layer in self.layers:
            tgt, attn = layer(tgt, memory)
            outputs.append(tgt)
            attns.append(attn)
        return outputs, attns


class _Criterion(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        weight = torch.ones(num_classes + 1)
        weight[-1] = 0.1
        self.register_buffer("empty_weight", weight)


class _Loss(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.criterion = _Criterion(num_classes)


class ATMSingleHeadSeg(nn.Module):
    """The official decode head (one stage, no input projection), eval forward."""

    def __init__(self, *, img_size, in_channels, seen_idx, num_layers=3, num_heads=8):
        super().__init__()
        self.image_size = img_size
        self.seen_idx = seen_idx
        self.input_proj_1 = nn.Identity()
        self.proj_norm_1 = nn.Identity()
        layer = TPNDecoderLayer(
            d_model=in_channels, nhead=num_heads, dim_feedforward=in_channels * 4
        )
        self.decoder_1 = TPNDecoder(layer, num_layers)
        self.q_proj = nn.Linear(in_channels * 2, in_channels)
        self.loss_decode = _Loss(len(seen_idx))

    def forward(self, inputs_both, self_training: bool = False) -> Tensor:
        patches, cls_token = inputs_both[0][0][0], inputs_both[0][1]
        text = inputs_both[1]
        lateral = self.proj_norm_1(self.input_proj_1(patches.flatten(-2).transpose(-1, -2)))
        q = self.q_proj(self.get_qs(text, cls_token)).transpose(0, 1)
        _, attns = self.decoder_1(q, lateral.transpose(0, 1))
        maps = [self.d3_to_d4(a.transpose(-1, -2)) for a in attns]
        size = maps[-1].shape[-2:]
        masks = [F.interpolate(a, size=size, mode="bilinear", align_corners=False) for a in maps]
        pred = F.interpolate(
            masks[-1], size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        pred = pred.sigmoid()
        if not self_training:
            pred[:, self.seen_idx] = pred[:, self.seen_idx] - 0.1
        return pred

    @staticmethod
    def d3_to_d4(t: Tensor) -> Tensor:
        n, hw, c = t.shape
        if hw % 2 != 0:
            t = t[:, 1:]
        side = int(math.sqrt(hw))
        return t.transpose(1, 2).reshape(n, c, side, side)

    @staticmethod
    def get_qs(q: Tensor, cls: Tensor) -> Tensor:
        q = q.expand(cls.shape[0], -1, -1)
        return torch.cat((torch.einsum("bd,bcd->bcd", cls, q), q), dim=-1)


class OfficialZegCLIP(nn.Module):
    """backbone + text_encoder + decode_head, as mmseg's EncoderDecoder names them."""

    def __init__(self, *, clip_cfg: dict, num_tokens: int, seen_idx, num_heads: int,
                 input_resolution: int, num_layers: int = 3):  # fmt: skip
        super().__init__()
        v, t = clip_cfg["vision_cfg"], clip_cfg["text_cfg"]
        width, layers, embed = v["width"], v["layers"], clip_cfg["embed_dim"]
        act = QuickGELU if clip_cfg.get("quick_gelu") else nn.GELU
        self.backbone = VPTCLIPVisionTransformer(
            input_resolution=input_resolution, patch_size=v["patch_size"], width=width,
            layers=layers, heads=width // v.get("head_width", 64), output_dim=embed,
            num_tokens=num_tokens, prompt_dim=width, total_d_layer=layers - 1, act=act,
        )  # fmt: skip
        self.text_encoder = CLIPTextEncoder(
            context_length=t["context_length"], vocab_size=t["vocab_size"], width=t["width"],
            heads=t["heads"], layers=t["layers"], embed_dim=embed,
        )  # fmt: skip
        self.decode_head = ATMSingleHeadSeg(
            img_size=input_resolution, in_channels=embed, seen_idx=seen_idx,
            num_layers=num_layers, num_heads=num_heads,
        )  # fmt: skip

    def encode_decode(self, img: Tensor, text: Tensor) -> Tensor:
        """The official ``encode_decode`` on one crop (text: the loaded embeddings)."""
        out = self.decode_head([self.backbone(img), text])
        return F.interpolate(out, size=img.shape[2:], mode="bilinear", align_corners=False)

    def slide_inference(self, img: Tensor, text: Tensor, crop: int, stride: int) -> Tensor:
        """The official sliding-window test (mmseg's grid, scores averaged by count)."""
        b, _, h_img, w_img = img.shape
        h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
        w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
        preds = img.new_zeros((b, text.shape[0], h_img, w_img))
        count = img.new_zeros((b, 1, h_img, w_img))
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y2, x2 = min(h_idx * stride + crop, h_img), min(w_idx * stride + crop, w_img)
                y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
                out = self.encode_decode(img[:, :, y1:y2, x1:x2], text)
                preds += F.pad(out, (x1, w_img - x2, y1, h_img - y2))
                count[:, :, y1:y2, x1:x2] += 1
        return preds / count


def official_zegclip_like(model, clip_cfg: dict, *, input_resolution: int, seed: int = 0):
    """An official ZegCLIP shaped like the ovseg ``model`` (prompts, decoder, vocabulary's
    seen classes), random weights except CLIP's, copied from the model's teacher as the
    official ``init_weights`` loads them (the positional embedding resized bilinearly)."""
    from convert_utils import randomise, resize_pos

    from ovseg.vocab import normalize_name

    seen = [i for i, n in enumerate(model.vocabulary) if normalize_name(n) in model.seen_classes]
    official = OfficialZegCLIP(
        clip_cfg=clip_cfg, num_tokens=model.backbone.num_prompts, seen_idx=seen,
        num_heads=model.decoder.layers[0].cross_attn.num_heads,
        input_resolution=input_resolution, num_layers=len(model.decoder.layers),
    )  # fmt: skip
    randomise(official, seed, gain=3.0)  # masks far from 0: mix-ups show
    teacher = model.teacher.model.state_dict()
    with torch.no_grad():
        for name, p in official.backbone.state_dict().items():
            if "visual." + name in teacher:
                mine = teacher["visual." + name]
                if name == "positional_embedding":
                    mine = resize_pos(
                        mine, input_resolution // clip_cfg["vision_cfg"]["patch_size"]
                    )
                p.copy_(mine)
        for name, p in official.text_encoder.state_dict().items():
            p.copy_(teacher[name])
    return official.eval()
