"""The LSeg paper's image encoder: a timm ViT (e.g. ViT-L/16 384) as a detectron2 Backbone.

timm is optional: it is imported only when this backbone is built. MODEL.VIT_BACKBONE.
TIMM_PRETRAINED picks the weights: "" (random), a local file, "timm" (timm's default tag), a
timm tag of TIMM_MODEL, or a tag of :data:`LEGACY_WEIGHTS`: weights an older timm loaded
for a name that timm >= 0.5 points elsewhere. The official LSeg ran timm 0.4.12, whose
``vit_large_patch16_384`` loaded the original in21k -> in1k JAX weights
(``jx_vit_large_p16_384-b3be5167.pth``); timm 1.0.31 has no tag for them (its only tag for
that name is ``augreg_in21k_ft_in1k``, other weights), so "orig_in21k_ft_in1k" fetches that
file by its release URL into MODEL.VIT_BACKBONE.CACHE_DIR once (hash-checked) and reads
it from there afterwards. Tags download only when their file is not cached.
"""

from __future__ import annotations

import os
import types
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from ...clip.attention import split_qkv
from ...utils.downloads import explain_download_failure
from .vit_hooks import ViTFeatureBackbone, check_out_indices

__all__ = ["LEGACY_WEIGHTS", "POS_EMBED_INTERPS", "TimmViTBackbone", "build_timm_vit_backbone"]

# (timm model, tag) -> release URL of weights timm 0.4.12 loaded for that model name (its
# default_cfgs); the file name ends with the sha256 prefix torch.hub checks
LEGACY_WEIGHTS = {
    ("vit_large_patch16_384", "orig_in21k_ft_in1k"): (
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/"
        "jx_vit_large_p16_384-b3be5167.pth"
    ),
}
# positional-embedding resize for other input sizes: timm's bicubic (antialiased) or the
# official LSeg's bilinear (lseg_vit.py:149-163, F.interpolate defaults)
POS_EMBED_INTERPS = ("bicubic", "bilinear")


class TimmViTBackbone(ViTFeatureBackbone):
    """Hooked blocks of a timm ``VisionTransformer`` (dynamic image size), trainable."""

    def __init__(
        self,
        *,
        model: nn.Module,
        out_indices: Sequence[int] = (),
        readout: str = "project",
        freeze: bool = False,
        out_features: Optional[Sequence[str]] = None,
        pos_embed_interp: str = "bicubic",
    ):
        """
        Args:
            model (nn.Module): a timm VisionTransformer created with ``dynamic_img_size=True``.
            out_indices: 0-based hooked blocks; () = four evenly spaced ending at the last.
            readout (str): "ignore", "add" or "project".
            freeze (bool): keep the ViT's weights fixed (the readouts still train).
            out_features: names of the maps; default res2, res3, ...
            pos_embed_interp (str): one of :data:`POS_EMBED_INTERPS`.
        """
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "blocks"):
            raise TypeError(
                f"{type(model).__name__} is not a timm VisionTransformer with "
                "forward_intermediates (timm >= 1.0)"
            )
        out_indices = check_out_indices(out_indices, len(model.blocks))
        patch = model.patch_embed.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        pp = getattr(model, "pretrained_cfg", None) or {}
        mean, std = pp.get("mean"), pp.get("std")
        super().__init__(
            width=model.embed_dim,
            patch_size=int(patch),
            out_indices=out_indices,
            readout=readout,
            num_prefix=int(model.num_prefix_tokens),
            out_features=out_features,
            pixel_mean=[255.0 * v for v in mean] if mean else None,
            pixel_std=[255.0 * v for v in std] if std else None,
        )
        self._unique = sorted(set(out_indices))
        # drop the blocks after the last hook, the final norm and the head: all unused
        model.prune_intermediate_layers(self._unique, prune_norm=True, prune_head=True)
        self.vit = model
        self.vit.requires_grad_(not freeze)
        if pos_embed_interp not in POS_EMBED_INTERPS:
            raise ValueError(
                f"MODEL.VIT_BACKBONE.POS_EMBED_INTERP={pos_embed_interp!r} is not one of "
                f"{list(POS_EMBED_INTERPS)}"
            )
        if pos_embed_interp == "bilinear":
            _use_bilinear_pos_embed(model)
        _split_qkv_on_their_own_axis(model)

    def tokens(self, x: Tensor) -> List[Tensor]:
        maps = self.vit.forward_intermediates(
            x,
            indices=self._unique,
            return_prefix_tokens=True,
            norm=False,
            intermediates_only=True,
            output_fmt="NLC",  # tokens as the blocks gave them (NCHW copied them channel-major)
        )
        by_index = {
            i: torch.cat([prefix, spatial], dim=1)
            for i, (spatial, prefix) in zip(self._unique, maps)
        }
        return [by_index[i] for i in self.out_indices]


def _bilinear_pos_embed(self, x: Tensor) -> Tensor:
    """timm's ``_pos_embed`` for (B, H, W, C) patches, resized bilinearly as official LSeg."""
    from timm.layers import resample_abs_pos_embed

    b, h, w, c = x.shape
    pos = resample_abs_pos_embed(
        self.pos_embed,
        new_size=(h, w),
        old_size=self.patch_embed.grid_size,
        num_prefix_tokens=self.num_prefix_tokens,
        interpolation="bilinear",
        antialias=False,
    )
    x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, -1, c)], dim=1)
    return self.pos_drop(x + pos)


def _use_bilinear_pos_embed(model: nn.Module) -> None:
    plain = (
        getattr(model, "cls_token", None) is not None
        and getattr(model, "reg_token", None) is None
        and not getattr(model, "no_embed_class", False)
        and getattr(model, "pos_embed", None) is not None
    )
    if not plain:
        raise ValueError(
            "MODEL.VIT_BACKBONE.POS_EMBED_INTERP='bilinear' needs a plain ViT (a class token "
            "with a positional embedding, no register tokens); use 'bicubic' for this model"
        )
    model._pos_embed = types.MethodType(_bilinear_pos_embed, model)


def _split_qkv_attention(
    self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False, **kwargs
) -> Tensor:
    """timm ``Attention.forward``'s fused path with q, k and v split by :func:`split_qkv`:
    timm's split of a (3, B, heads, N, head dim) permutation had the backward copy dq, dk, dv
    back to the qkv projection's layout (4.8 GB of LSeg ViT-L/16's step). Anything else (a
    mask, causal attention, a gate, timm's unfused path) runs timm's own forward."""
    gate = getattr(self, "gate", None)
    if not self.fused_attn or attn_mask is not None or is_causal or kwargs or gate is not None:
        if is_causal:  # timm's own (an older timm takes no is_causal)
            kwargs["is_causal"] = True
        if attn_mask is not None:  # nor, before 1.0, an attn_mask
            kwargs["attn_mask"] = attn_mask
        return type(self).forward(self, x, **kwargs)
    b, n, _ = x.shape
    q, k, v = split_qkv(self.qkv(x), self.num_heads)
    q, k = self.q_norm(q), self.k_norm(k)
    p = self.attn_drop.p if self.training else 0.0
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).reshape(b, n, -1)
    return self.proj_drop(self.proj(self.norm(x)))


# what _split_qkv_attention reads of a timm Attention; a timm without one of them (``norm``
# came with its scale_norm) keeps its own forward
_TIMM_ATTENTION_PARTS = (
    "fused_attn num_heads qkv q_norm k_norm attn_drop norm proj proj_drop".split()
)


def _split_qkv_on_their_own_axis(model: nn.Module) -> None:
    """:func:`_split_qkv_attention` as the forward of each of the model's timm ``Attention``
    blocks (not of subclasses, whose forward may differ, nor of a timm's whose blocks lack a
    part it reads); the weights are unchanged."""
    from timm.layers import Attention

    for module in model.modules():
        if type(module) is Attention and all(hasattr(module, a) for a in _TIMM_ATTENTION_PARTS):
            module.forward = types.MethodType(_split_qkv_attention, module)


def resolve_timm_weights(model_name: str, spec: str, cache_dir: str = "") -> tuple:
    """Where MODEL.VIT_BACKBONE.TIMM_PRETRAINED's weights come from.

    Returns:
        ("none", None), ("timm", "<model>.<tag>" or the model name for timm's default),
        or ("file", path) (a local file, or a legacy tag's cached or downloaded file).
    """
    import timm

    if not spec:
        return "none", None
    if spec == "timm":
        return "timm", model_name
    if (model_name, spec) in LEGACY_WEIGHTS:
        url = LEGACY_WEIGHTS[(model_name, spec)]
        folder = os.path.expanduser(cache_dir) or os.path.join(torch.hub.get_dir(), "checkpoints")
        path = os.path.join(folder, os.path.basename(url))
        if not os.path.isfile(path):
            os.makedirs(folder, exist_ok=True)
            key = "MODEL.VIT_BACKBONE.TIMM_PRETRAINED"
            with explain_download_failure(f"{model_name} {spec}", url, key, local=path):
                torch.hub.download_url_to_file(url, path, hash_prefix=path.rsplit("-", 1)[-1][:-4])
        return "file", path
    if f"{model_name}.{spec}" in timm.list_pretrained(f"{model_name}.*"):
        return "timm", f"{model_name}.{spec}"
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        return "file", path
    tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{model_name}.*")]
    tags += [t for m, t in LEGACY_WEIGHTS if m == model_name]
    raise FileNotFoundError(
        f"MODEL.VIT_BACKBONE.TIMM_PRETRAINED={spec!r} is neither a local file nor a tag of "
        f"{model_name!r} (tags: {sorted(tags)}); give a timm checkpoint file, 'timm' for "
        "timm's default, or '' for random init"
    )


@BACKBONE_REGISTRY.register()
def build_timm_vit_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> TimmViTBackbone:
    """A TimmViTBackbone from MODEL.VIT_BACKBONE.{TIMM_MODEL, TIMM_PRETRAINED, ...}."""
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            "MODEL.BACKBONE.NAME=build_timm_vit_backbone needs timm: pip install timm"
        ) from e
    vcfg = cfg.MODEL.VIT_BACKBONE
    kind, where = resolve_timm_weights(vcfg.TIMM_MODEL, vcfg.TIMM_PRETRAINED, vcfg.CACHE_DIR)
    name = where if kind == "timm" else vcfg.TIMM_MODEL
    source = (
        f"https://huggingface.co/timm/{name}" if "." in name else f"timm's default tag of {name}"
    )
    key = "MODEL.VIT_BACKBONE.TIMM_PRETRAINED"
    with explain_download_failure(f"timm {name}", source, key):
        model = timm.create_model(
            name, pretrained=kind == "timm", dynamic_img_size=True, num_classes=0
        )
    if kind == "file":
        # the classifier head of ImageNet checkpoints is dropped (num_classes=0)
        result = timm.models.load_checkpoint(model, where, strict=False)
        missing = list(getattr(result, "missing_keys", []) or [])
        if missing:
            raise ValueError(
                f"MODEL.VIT_BACKBONE.TIMM_PRETRAINED={where!r} lacks {len(missing)} weights of "
                f"{vcfg.TIMM_MODEL!r} (e.g. {missing[:3]}); is it a checkpoint of that model?"
            )
    return TimmViTBackbone(
        model=model,
        out_indices=vcfg.OUT_INDICES,
        readout=vcfg.READOUT,
        freeze=vcfg.FREEZE,
        pos_embed_interp=vcfg.POS_EMBED_INTERP,
    )
