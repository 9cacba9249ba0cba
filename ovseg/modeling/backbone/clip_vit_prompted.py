# Follows the official ZegCLIP image encoder (ZiqinZhou66/ZegCLIP models/backbone/img_encoder.py,
# VPTCLIPVisionTransformer: deep prompts, prompt projection and norm, and behind switches its
# doubled class embedding, bilinear positional embeddings and prompt-projection bias init),
# re-written over open_clip.
"""The CLIP teacher's ViT image tower, frozen, with learnable visual prompts (VPT).

The tower's modules are the teacher's own (shared, never copied): the backbone registers
them so ``.to()`` and ``named_parameters()`` reach them, freezes them, keeps them in eval mode
and keeps them out of ``state_dict()``. The only trainable parameters are the prompts, their
projection and the output norm, so gradients flow through the frozen blocks into the prompts.

Three switches reproduce the official encoder where it departs from CLIP as pretrained (all
off by default): ``double_class_embedding`` (its class token is 2 cls + pos0),
``pos_embed_interpolation="bilinear"`` and ``prompt_proj_bias_init="uniform"``.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...clip import CLIPTeacher, build_clip_teacher
from ...clip.dense import (
    POS_EMBED_MODES,
    check_batch_first,
    dense_stride,
    patch_embedding,
    resize_pos_embed,
)
from ...clip.frozen_dtype import needs_autocast
from ...utils.state_dict import exclude_from_checkpoints

__all__ = [
    "PROMPT_DEPTHS",
    "PROMPT_PROJ_BIAS_INITS",
    "CLIPViTPrompted",
    "build_clip_vit_prompted_backbone",
]

# "deep": fresh prompt tokens before every block (VPT-deep, ZegCLIP); "shallow": one set
# inserted after the embeddings and carried through all blocks (VPT-shallow)
PROMPT_DEPTHS = ("deep", "shallow")
# "zeros", or "uniform": nn.Linear's own U(-1/sqrt(width), 1/sqrt(width)), which the official
# code keeps (img_encoder.py:182-183 re-initialise the weight only)
PROMPT_PROJ_BIAS_INITS = ("zeros", "uniform")


class CLIPViTPrompted(Backbone):
    """A frozen open_clip ``VisionTransformer`` with ``num_prompts`` learnable tokens.

    Token order inside the tower: ``[class, prompts, patches]``. Positional embeddings are
    resized (bicubically by default) to each input's patch grid. Outputs, in the tower's
    joint space (``ln_post`` then ``proj``, not normalised):

    - ``"patch_tokens"``: (B, D, H/s, W/s) last-layer patch tokens, s the patch stride;
    - ``"global_token"``: (B, D) the class token (the tower's own pooling).
    """

    def __init__(
        self,
        *,
        visual: VisionTransformer,
        num_prompts: int = 10,
        depth: str = "deep",
        prompt_proj: bool = True,
        prompt_dropout: float = 0.1,
        patch_stride: int = 0,
        double_class_embedding: bool = False,
        pos_embed_interpolation: str = "bicubic",
        prompt_proj_bias_init: str = "zeros",
    ):
        """
        Args:
            visual (VisionTransformer): the teacher's tower; shared, frozen in place.
            num_prompts (int): prompt tokens per layer (paper: 10 for VOC, 100 for COCO).
            depth (str): "deep" or "shallow" (see ``PROMPT_DEPTHS``).
            prompt_proj (bool): pass the prompts through a learnable linear layer and dropout
                before use (the official code's ``prompt_proj``).
            prompt_dropout (float): dropout on the projected prompts.
            patch_stride (int): stride of the patch embedding; 0 keeps the patch size. A
                smaller one (dividing the patch size, with an even difference to it) gives
                overlapping patches, zero-padded by half the difference so that token
                (i, j) stays centred on the stride-sized cell (i, j): an (H/s, W/s) grid.
            double_class_embedding (bool): add the class embedding to the class token twice,
                once as the token and once into its positional embedding (the official
                encoder's class token is 2 cls + pos0, img_encoder.py:228, 231).
            pos_embed_interpolation (str): "bicubic" or "bilinear" (official,
                img_encoder.py:214, 232) resize of the positional embeddings.
            prompt_proj_bias_init (str): "zeros" or "uniform" (official; see
                ``PROMPT_PROJ_BIAS_INITS``).
        """
        super().__init__()
        _check_tower(visual, depth, num_prompts)
        _check_choice(pos_embed_interpolation, POS_EMBED_MODES, "POS_EMBED_INTERPOLATION")
        _check_choice(prompt_proj_bias_init, PROMPT_PROJ_BIAS_INITS, "PROMPT_PROJ_BIAS_INIT")
        self.tower = visual
        self.tower.requires_grad_(False)
        self.tower.eval()
        self.num_prompts = int(num_prompts)
        self.depth = depth
        self.patch_size = dense_stride(visual)
        stride = _check_patch_stride(patch_stride, self.patch_size)
        self.patch_stride = stride
        self.double_class_embedding = bool(double_class_embedding)
        self.pos_embed_interpolation = pos_embed_interpolation
        width = visual.conv1.out_channels
        self.num_blocks = len(visual.transformer.resblocks)
        num_sets = self.num_blocks if depth == "deep" else 1
        # VPT's xavier-uniform bound for a patch-sized fan-in, as the official code
        bound = math.sqrt(6.0 / float(3 * self.patch_size**2 + width))
        self.prompts = nn.Parameter(torch.empty(num_sets, self.num_prompts, width))
        nn.init.uniform_(self.prompts, -bound, bound)
        self.prompt_proj = nn.Linear(width, width) if prompt_proj else nn.Identity()
        if prompt_proj:
            nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")
            if prompt_proj_bias_init == "zeros":
                nn.init.zeros_(self.prompt_proj.bias)
        self.prompt_dropout = nn.Dropout(prompt_dropout) if prompt_proj else nn.Identity()
        # a learnable norm on the last hidden states before the frozen ln_post (official);
        # at initialisation ln_post(prompt_norm(x)) equals ln_post(x)
        self.prompt_norm = nn.LayerNorm(width, eps=1e-6)
        self.embed_dim = int(visual.proj.shape[1]) if visual.proj is not None else width
        self._out_features = ["patch_tokens", "global_token"]
        self._out_feature_channels = {
            "patch_tokens": self.embed_dim,
            "global_token": self.embed_dim,
        }
        self._out_feature_strides = {"patch_tokens": self.patch_stride, "global_token": 0}

        # the tower's weights belong to the teacher (they come from MODEL.CLIP only)
        exclude_from_checkpoints(self, "tower")

    # ------------------------------------------------------------------ module behaviour
    def train(self, mode: bool = True) -> CLIPViTPrompted:
        """Train the prompts; the shared tower stays in eval mode."""
        super().train(mode)
        self.tower.eval()
        return self

    @property
    def size_divisibility(self) -> int:
        return self.patch_size

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            "patch_tokens": ShapeSpec(channels=self.embed_dim, stride=self.patch_stride),
            "global_token": ShapeSpec(channels=self.embed_dim, height=1, width=1),
        }

    def _prompts(self, index: int, batch: int, dtype: torch.dtype) -> Tensor:
        p = self.prompt_dropout(self.prompt_proj(self.prompts[index]))
        return p.to(dtype).unsqueeze(0).expand(batch, -1, -1)

    # ------------------------------------------------------------------ forward
    def tokens(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """The tower's input tokens: patch embedding, class token, positional embedding resized
        to the grid, ``ln_pre`` (as :func:`ovseg.clip.dense.vit_tokens`, with the switches).

        Args:
            x (Tensor): (B, 3, H, W) normalised images.

        Returns:
            tuple: tokens (B, 1 + h * w, C), class token first; the grid (h, w).
        """
        tower = self.tower
        x = patch_embedding(tower.conv1, x, self.patch_stride)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        cls = tower.class_embedding.to(x.dtype)
        x = torch.cat([cls.view(1, 1, -1).expand(x.shape[0], 1, -1), x], dim=1)
        pos = resize_pos_embed(
            tower.positional_embedding, tower.grid_size, grid, mode=self.pos_embed_interpolation
        ).to(x.dtype)
        if self.double_class_embedding:
            # the official order: token cls, plus (pos0 + cls) as the class position
            pos = torch.cat([pos[:1] + cls, pos[1:]], dim=0)
        return tower.ln_pre(x + pos), grid

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x (Tensor): (B, 3, H, W) normalised images (the model's statistics), H and W
                multiples of the patch size.

        Returns:
            dict: "patch_tokens" (B, D, H/s, W/s), s the patch stride, and "global_token"
            (B, D).
        """
        p = self.patch_size
        if x.dim() != 4 or x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"images must be (B, 3, H, W) with H, W multiples of the patch size {p}, got "
                f"{tuple(x.shape)}; pad them first"
            )
        if needs_autocast(self.tower, x.device.type):
            # a tower cast by MODEL.CLIP.FROZEN_DTYPE, called outside training's autocast
            with torch.autocast(x.device.type, dtype=self.tower.frozen_dtype):
                out = self._forward(x)
            return {k: v.float() for k, v in out.items()}
        return self._forward(x)

    def _forward(self, x: Tensor) -> Dict[str, Tensor]:
        visual = self.tower
        b = x.shape[0]
        x, (gh, gw) = self.tokens(x)

        n = self.num_prompts
        for i, block in enumerate(visual.transformer.resblocks):
            if i == 0:
                x = torch.cat([x[:, :1], self._prompts(0, b, x.dtype), x[:, 1:]], dim=1)
            elif self.depth == "deep":
                # VPT-deep: the previous block's prompt outputs are replaced by fresh tokens
                # (written over them: the backward zeroes their gradient in one pass)
                x = torch.slice_scatter(x, self._prompts(i, b, x.dtype), 1, 1, 1 + n)
            x = block(x)

        x = visual.ln_post(self.prompt_norm(x))
        if visual.proj is not None:
            x = x @ visual.proj
        patches = x[:, 1 + n :]
        glob = x[:, 0] if visual.pool_type == "tok" else patches.mean(dim=1)
        return {
            "patch_tokens": patches.transpose(1, 2).reshape(b, -1, gh, gw),
            "global_token": glob,
        }


def _check_tower(visual: nn.Module, depth: str, num_prompts: int) -> None:
    """Refuse towers and settings the prompted backbone cannot serve, naming the key."""
    if not isinstance(visual, VisionTransformer):
        raise TypeError(
            f"CLIPViTPrompted needs an open_clip VisionTransformer image tower, got "
            f"{type(visual).__module__}.{type(visual).__name__}; use a ViT CLIP model "
            "(MODEL.CLIP.MODEL_NAME such as 'ViT-B-16')"
        )
    check_batch_first(visual)
    if visual.attn_pool is not None or visual.pool_type not in ("tok", "avg"):
        raise NotImplementedError(
            f"ViT towers pooled by {visual.pool_type!r} or an attentional pooler are not "
            "supported; the global token needs pool_type 'tok' or 'avg'"
        )
    if depth not in PROMPT_DEPTHS:
        raise ValueError(
            f"prompt depth {depth!r} (MODEL.ZEGCLIP.PROMPT_DEPTH) is not one of "
            f"{list(PROMPT_DEPTHS)}"
        )
    if int(num_prompts) < 1:
        raise ValueError(f"MODEL.ZEGCLIP.NUM_PROMPTS must be >= 1, got {num_prompts}")


def _check_choice(value: str, choices: Tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ValueError(f"MODEL.ZEGCLIP.{key}={value!r} is not one of {list(choices)}")


def _check_patch_stride(patch_stride: int, patch_size: int) -> int:
    """The patch-embedding stride (0 = the patch size), refused unless it divides the
    patch size with an even difference (so tokens stay centred on their cells)."""
    stride = int(patch_stride) or patch_size
    if stride < 1 or stride > patch_size or patch_size % stride or (patch_size - stride) % 2:
        raise ValueError(
            f"MODEL.ZEGCLIP.PATCH_STRIDE {patch_stride} does not fit the tower's patch size "
            f"{patch_size}: use 0 (the patch size) or a divisor of it whose "
            "difference to it is even"
        )
    return stride


@BACKBONE_REGISTRY.register()
def build_clip_vit_prompted_backbone(
    cfg, input_shape: Optional[ShapeSpec] = None, teacher: Optional[CLIPTeacher] = None
) -> CLIPViTPrompted:
    """A :class:`CLIPViTPrompted` over the CLIP teacher's image tower (shared, frozen).

    Args:
        cfg (CfgNode): reads MODEL.ZEGCLIP.{NUM_PROMPTS, PROMPT_DEPTH, PROMPT_PROJ,
            PROMPT_DROPOUT, PATCH_STRIDE, DOUBLE_CLASS_EMBEDDING, POS_EMBED_INTERPOLATION,
            PROMPT_PROJ_BIAS_INIT} and MODEL.CLIP.* (when no teacher is given).
        input_shape (ShapeSpec): unused; images are RGB.
        teacher (CLIPTeacher, optional): the model's teacher, whose tower is shared;
            without it one is built from MODEL.CLIP and its tower used.

    Returns:
        CLIPViTPrompted
    """
    if teacher is None:
        teacher = build_clip_teacher(cfg, device="cpu")
    zcfg = cfg.MODEL.ZEGCLIP
    return CLIPViTPrompted(
        visual=teacher.model.visual,
        num_prompts=zcfg.NUM_PROMPTS,
        depth=zcfg.PROMPT_DEPTH,
        prompt_proj=zcfg.PROMPT_PROJ,
        prompt_dropout=zcfg.PROMPT_DROPOUT,
        patch_stride=zcfg.PATCH_STRIDE,
        double_class_embedding=zcfg.DOUBLE_CLASS_EMBEDDING,
        pos_embed_interpolation=zcfg.POS_EMBED_INTERPOLATION,
        prompt_proj_bias_init=zcfg.PROMPT_PROJ_BIAS_INIT,
    )
