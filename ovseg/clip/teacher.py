"""The shared frozen CLIP teacher: text, image, dense and region embeddings."""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple, Union

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.state_dict import exclude_from_checkpoints
from ..vocab import check_templates
from .attention import token_major_attention
from .cache import TextEmbeddingCache, model_fingerprint, state_dict_sha256, text_cache_key
from .dense import (
    SUPPORTED_TOWERS,
    dense_stride,
    pad_to_multiple,
    resnet_dense,
    tower_kind,
    vit_dense,
)
from .frozen_dtype import needs_autocast, tower_autocast
from .tokens import check_prompt_tokens

__all__ = ["CLIPTeacher", "PRECISIONS"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# text-embedding rows (names) kept in memory over all vocabularies, on the teacher's device
# (16384 x 768 float32: 48 MB): a service answering users' vocabularies held every one it
# ever saw; counted in rows, not vocabularies, so FSS-1000's 520 two-name episodes all stay
TEXT_MEMO_ROWS = 16384


class CLIPTeacher(nn.Module):
    """A frozen open_clip model serving embeddings in CLIP's joint space.

    Frozen (``requires_grad=False``), always in eval mode, and invisible to checkpoints: a
    parent module's ``state_dict()`` holds none of its weights and ``load_state_dict()``
    neither needs nor takes them (the teacher's weights come from ``MODEL.CLIP`` only).
    ``teacher.model.state_dict()`` still gives the CLIP weights.

    Images enter as detectron2 tensors, (B, 3, H, W) RGB in [0, 255]; the teacher applies its
    model's own mean/std. Forward passes run in inference mode (under autocast on CUDA when
    ``precision`` asks) and return ordinary float32 tensors on the teacher's device.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable,
        *,
        name: str = "",
        pretrained: str = "",
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        precision: str = "fp32",
        text_batch_size: int = 256,
    ):
        """
        Args:
            model (nn.Module): an open_clip ``CLIP``/``CustomTextCLIP``.
            tokenizer (callable): its open_clip tokenizer (list[str] -> LongTensor[N, ctx]).
            name (str): the open_clip model name, for the fingerprint.
            pretrained (str): the tag or checkpoint path the weights came from, "" if random
                (the fingerprint then hashes the weights).
            cache_dir: where text embeddings are cached on disk; None = in memory only.
            precision (str): "fp32", "bf16" or "fp16"; autocast for image forwards on CUDA.
            text_batch_size (int): prompts per text-encoder forward.
        """
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
        if text_batch_size < 1:
            raise ValueError(f"text_batch_size must be positive, got {text_batch_size}")
        self.model = model
        # one matrix product per projection when gradients flow through a tower
        token_major_attention(model)
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.cache_dir = os.fspath(cache_dir) if cache_dir else None
        self.precision = precision
        self.text_batch_size = int(text_batch_size)
        self._text_disk = TextEmbeddingCache(self.cache_dir) if self.cache_dir else None
        # recent vocabularies' embeddings (TEXT_MEMO_ROWS in all), least recently used dropped
        self._text_memo: OrderedDict = OrderedDict()
        self._fingerprint: Optional[str] = None
        self._tensors_sha256: Optional[str] = None

        model.requires_grad_(False)
        model.eval()

        visual = model.visual
        pp = open_clip.get_model_preprocess_cfg(model)
        mean = pp.get("mean") or open_clip.OPENAI_DATASET_MEAN
        std = pp.get("std") or open_clip.OPENAI_DATASET_STD
        # detectron2's convention: (3, 1, 1) in the [0, 255] scale of its image tensors
        self.register_buffer(
            "pixel_mean", torch.tensor(mean).float().view(-1, 1, 1) * 255, persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(std).float().view(-1, 1, 1) * 255, persistent=False
        )
        size = pp.get("size") or getattr(visual, "image_size", None)
        if size is None:
            raise ValueError(f"cannot tell the input size of vision tower {type(visual).__name__}")
        self.image_size: Tuple[int, int] = (
            tuple(int(s) for s in size) if isinstance(size, (tuple, list)) else (int(size),) * 2
        )
        self.embed_dim = _embed_dim(model)
        self.tower = tower_kind(visual)
        # pixels per dense-grid cell (ViT patch size; 32 for ModifiedResNet; None otherwise)
        self.patch_size: Optional[int] = dense_stride(visual)
        self.stride = self.patch_size

        exclude_from_checkpoints(self)

    # ------------------------------------------------------------------ module behaviour
    def train(self, mode: bool = True) -> CLIPTeacher:
        """Stay in eval mode whatever a parent asks (frozen BatchNorm/dropout)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex of model name, config, shapes and weights (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model, self.name, self.pretrained)
        return self._fingerprint

    @property
    def tensors_sha256(self) -> str:
        """SHA-256 hex of the CLIP model's tensors as loaded (``state_dict_sha256``), computed
        once: the weights whatever file, tag or metadata they came with (a checkpoint records
        it, ``ovseg.engine.checkpoint_record``)."""
        if self._tensors_sha256 is None:
            self._tensors_sha256 = state_dict_sha256(self.model)
        return self._tensors_sha256

    def _autocast(self):
        if needs_autocast(self.model.visual, self.device.type):  # MODEL.CLIP.FROZEN_DTYPE
            return tower_autocast(self.model.visual, self.device.type)
        dtype = PRECISIONS[self.precision]
        if dtype is None or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=dtype)

    # ------------------------------------------------------------------------ text
    def encode_text(self, names: Sequence[str], templates: Sequence[str]) -> Tensor:
        """Prompt-ensembled text embeddings, memoised in memory and on disk.

        Each name is put in every template; the prompt embeddings are L2-normalised,
        averaged over templates and normalised again. Always computed in float32, so the
        cache does not depend on ``precision``.

        Args:
            names (Sequence[str]): K class names.
            templates (Sequence[str]): T templates, each with one ``"{}"``.

        Returns:
            Tensor: (K, D) L2-normalised, float32, on the teacher's device.
        """
        names = _check_names(names)
        templates = check_templates(templates)
        if not names:
            return torch.zeros(0, self.embed_dim, device=self.device)
        key = text_cache_key(self.fingerprint, names, templates)
        emb = self._text_memo.get(key)
        if emb is not None:
            with contextlib.suppress(KeyError):  # another thread may have dropped it
                self._text_memo.move_to_end(key)
        if emb is None and self._text_disk is not None:
            emb = self._text_disk.load(key, names, templates)
        if emb is None:
            emb = self._compute_text(names, templates)
            if self._text_disk is not None:
                self._text_disk.try_save(key, emb, names, templates, self.fingerprint)
        emb = emb.to(self.device)
        self._text_memo[key] = emb
        # the least recently used first; the newest stays whatever its size
        while len(self._text_memo) > 1 and _rows(self._text_memo) > TEXT_MEMO_ROWS:
            with contextlib.suppress(KeyError):
                self._text_memo.popitem(last=False)
        return emb.clone()

    def _compute_text(self, names: Tuple[str, ...], templates: Tuple[str, ...]) -> Tensor:
        prompts = [template.format(name) for name in names for template in templates]
        tokens = self.tokenizer(prompts)  # one batched tokenisation
        check_prompt_tokens(self.tokenizer, names, templates, tokens)  # cut text, collisions
        feats = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.text_batch_size):
                chunk = tokens[start : start + self.text_batch_size].to(self.device)
                feats.append(F.normalize(self.model.encode_text(chunk).float(), dim=-1))
            emb = torch.cat(feats).view(len(names), len(templates), -1).mean(dim=1)
            emb = F.normalize(emb, dim=-1)
        return emb.clone()

    # ------------------------------------------------------------------------ images
    def _normalize(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be (B, 3, H, W) RGB in [0, 255], got shape {tuple(images.shape)}"
            )
        images = images.to(device=self.device, dtype=torch.float32)
        return (images - self.pixel_mean) / self.pixel_std

    def _resize_to_input(self, images: Tensor) -> Tensor:
        if tuple(images.shape[-2:]) == self.image_size:
            return images
        images = images.to(device=self.device, dtype=torch.float32)
        # bicubic with antialiasing approximates CLIP's PIL preprocessing; clamp the overshoot
        out = F.interpolate(
            images, size=self.image_size, mode="bicubic", align_corners=False, antialias=True
        )
        return out.clamp_(0, 255)

    def encode_image(self, images: Tensor) -> Tensor:
        """Global image embeddings; images are resized to the model's input size.

        Args:
            images (Tensor): (B, 3, H, W) RGB in [0, 255].

        Returns:
            Tensor: (B, D) L2-normalised, float32.
        """
        x = self._normalize(self._resize_to_input(images))
        with torch.inference_mode(), self._autocast():
            emb = F.normalize(self.model.encode_image(x).float(), dim=-1)
        return emb.clone()

    def dense_embeddings(
        self, images: Tensor, return_keys: bool = False, pad: bool = True
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Per-location embeddings by MaskCLIP's rule (see :mod:`ovseg.clip.dense`).

        The grid follows the input: sides are padded at the bottom/right with the pixel mean
        up to a multiple of ``patch_size``, so h = ceil(H / patch_size), w likewise; ViT
        positional embeddings are interpolated bicubically to that grid.

        Args:
            images (Tensor): (B, 3, H, W) RGB in [0, 255], any H, W.
            return_keys (bool): also return the last attention layer's keys (ViT: the
                official MaskCLIP's ``out_proj(k_proj(ln_1(x)))``; ResNet: attention-pool
                ``k_proj`` as 1x1 conv), not normalised, for key smoothing.
            pad (bool): False: no padding, the tower rounds the input down itself (the
                ResNet's stem and stride-2 average pools floor, as the official MaskCLIP's
                ``ResNetClip``; a ViT's patch convolution drops the last partial patch), so
                the grid need not cover the last ``H mod patch_size`` rows.

        Returns:
            Tensor: (B, D, h, w) L2-normalised over D; with ``return_keys`` a tuple
            (embeddings, keys (B, C, h, w)).
        """
        if self.tower is None:
            raise NotImplementedError(
                f"dense embeddings need one of {', '.join(SUPPORTED_TOWERS)} as the vision "
                f"tower; this model's is {type(self.model.visual).__module__}."
                f"{type(self.model.visual).__name__}"
            )
        x = self._normalize(images)
        if pad:
            x = pad_to_multiple(x, self.patch_size)
        dense_fn = vit_dense if self.tower == "vit" else resnet_dense
        with torch.inference_mode(), self._autocast():
            emb, keys = dense_fn(self.model.visual, x, return_keys)
            emb = F.normalize(emb.float(), dim=1)
            keys = keys.float() if keys is not None else None
        if return_keys:
            return emb.clone(), keys.clone()
        return emb.clone()

    # ------------------------------------------------------------------------ regions
    def region_embeddings(
        self, images: Tensor, masks: Sequence[Tensor], mode: str = "pool"
    ) -> List[Tensor]:
        """One embedding per mask.

        ``"pool"``: mask-weighted average of the dense embeddings (each grid cell weighted by
        the fraction of its pixels inside the mask), normalised. ``"crop"``: the mask's
        bounding box cut from the image, pixels outside the mask set to the pixel mean,
        resized to the model's input size and embedded by :meth:`encode_image`
        (pixels with mask value >= 0.5 count as inside).

        Args:
            images (Tensor): (B, 3, H, W) RGB in [0, 255].
            masks (list[Tensor]): B tensors (N_i, H, W), bool or float weights in [0, 1].
            mode (str): "pool" or "crop".

        Returns:
            list[Tensor]: B tensors (N_i, D), L2-normalised.
        """
        if mode not in ("pool", "crop"):
            raise ValueError(f"region mode {mode!r} is not 'pool' or 'crop'")
        _check_masks(images, masks)
        if mode == "pool":
            return self._pool_regions(images, masks)
        return self._crop_regions(images, masks)

    def _pool_regions(self, images: Tensor, masks: Sequence[Tensor]) -> List[Tensor]:
        dense = self.dense_embeddings(images)
        h, w = dense.shape[-2:]
        s = self.patch_size
        out = []
        for i, m in enumerate(masks):
            m = m.to(device=dense.device, dtype=torch.float32)
            if m.shape[0] == 0:
                out.append(dense.new_zeros(0, dense.shape[1]))
                continue
            # pad like the image, then average each stride x stride cell: exact coverage
            m = F.pad(m, (0, w * s - m.shape[-1], 0, h * s - m.shape[-2]))
            weights = F.avg_pool2d(m[None], kernel_size=s)[0]  # (N, h, w)
            total = weights.sum(dim=(1, 2))
            _raise_if_empty(i, total <= 0)
            emb = torch.einsum("nhw,dhw->nd", weights, dense[i]) / total[:, None]
            out.append(F.normalize(emb, dim=-1))
        return out

    def _crop_regions(self, images: Tensor, masks: Sequence[Tensor]) -> List[Tensor]:
        images = images.to(device=self.device, dtype=torch.float32)
        crops, counts = [], []
        for i, m in enumerate(masks):
            inside = m.to(self.device) >= 0.5
            _raise_if_empty(i, ~inside.flatten(1).any(dim=1))
            counts.append(inside.shape[0])
            for mask in inside:
                rows = torch.nonzero(mask.any(dim=1)).flatten()
                cols = torch.nonzero(mask.any(dim=0)).flatten()
                y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
                crop = torch.where(mask[y0:y1, x0:x1], images[i, :, y0:y1, x0:x1], self.pixel_mean)
                crops.append(self._resize_to_input(crop[None])[0])
        embs = [
            self.encode_image(torch.stack(crops[start : start + 64]))
            for start in range(0, len(crops), 64)
        ]
        flat = torch.cat(embs) if embs else images.new_zeros(0, self.embed_dim)
        return list(flat.split(counts))


# ---------------------------------------------------------------------- input checks
def _rows(memo: dict) -> int:
    return sum(len(e) for e in list(memo.values()))


def _embed_dim(model: nn.Module) -> int:
    dim = getattr(model.visual, "output_dim", None)
    if dim is None:  # e.g. timm towers: read the text side's projection instead
        text = getattr(model, "text", model)
        proj = getattr(text, "text_projection", None)
        dim = proj.out_features if isinstance(proj, nn.Linear) else getattr(proj, "shape", [0])[-1]
    if not dim:
        raise ValueError(f"cannot tell the embedding size of {type(model).__name__}")
    return int(dim)


def _check_names(names: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(names, str):
        raise ValueError(f"names must be a list of class names, got the string {names!r}")
    names = tuple(names)
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class name {i} is {name!r}; expected a non-empty string")
    return names


def _check_masks(images: Tensor, masks: Sequence[Tensor]) -> None:
    if len(masks) != images.shape[0]:
        raise ValueError(f"got {len(masks)} mask tensors for {images.shape[0]} images")
    size = tuple(images.shape[-2:])
    for i, m in enumerate(masks):
        if m.dim() != 3 or tuple(m.shape[-2:]) != size:
            raise ValueError(
                f"masks[{i}] has shape {tuple(m.shape)}; expected (N, {size[0]}, {size[1]}) "
                "to match the images"
            )


def _raise_if_empty(image_index: int, empty: Tensor) -> None:
    if bool(empty.any()):
        bad = torch.nonzero(empty).flatten().tolist()
        raise ValueError(
            f"masks[{image_index}] has empty masks at indices {bad}; drop them before asking "
            "for region embeddings"
        )
