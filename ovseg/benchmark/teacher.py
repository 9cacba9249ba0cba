"""The CLIP teacher's cost: dense embeddings against a plain forward of the vision tower on
the same tokens, ``encode_image``, and MaskCLIP labelling."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Tuple

import torch
from torch import nn

from .timing import time_calls

__all__ = ["benchmark_teacher", "positional_embedding_for"]


@contextlib.contextmanager
def positional_embedding_for(visual: nn.Module, images: torch.Tensor, stride: int) -> Iterator:
    """Temporarily give a vision tower positional embeddings for the images' size.

    Lets the tower's own ``forward`` (full attention in every block, class-token or
    attention pooling) run on exactly the tokens ``dense_embeddings`` sees.

    Args:
        visual (nn.Module): an open_clip ViT or ModifiedResNet vision tower.
        images (Tensor): (B, 3, H, W) input whose sides are multiples of ``stride``.
        stride (int): the tower's patch size (ViT) or output stride (ResNet).
    """
    from ..clip.dense import resize_pos_embed

    grid = (images.shape[-2] // stride, images.shape[-1] // stride)
    owner = visual.attnpool if hasattr(visual, "attnpool") else visual
    old = owner.positional_embedding
    if hasattr(visual, "attnpool"):
        side = int(round((old.shape[0] - 1) ** 0.5))
        old_grid = (side, side)
    else:
        old_grid = tuple(visual.grid_size)
    new = resize_pos_embed(old.detach(), old_grid, grid)
    owner.positional_embedding = nn.Parameter(new, requires_grad=False)
    try:
        yield
    finally:
        owner.positional_embedding = old


def _build_teacher(
    model: str, pretrained: str, cache_dir: str, device: str, precision: str, templates: str
):
    from detectron2.config import get_cfg

    from ..clip import build_clip_teacher
    from ..config import add_ovseg_config
    from ..engine.defaults import anchor_repo_paths

    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.CLIP.MODEL_NAME = model
    cfg.MODEL.CLIP.PRETRAINED = pretrained
    anchor_repo_paths(cfg)  # the default "configs/clip/tiny_vit.json" from any folder
    cfg.MODEL.CLIP.PRECISION = precision
    cfg.MODEL.CLIP.TEMPLATES = templates
    if cache_dir:
        cfg.MODEL.CLIP.CACHE_DIR = cache_dir
    return build_clip_teacher(cfg, device=device)


def _tower_times(teacher, x: torch.Tensor, timing: Dict[str, Any]) -> Dict[str, float]:
    """Median seconds of dense_embeddings (with and without keys), the tower's own forward on
    the same tokens, and encode_image."""
    from ..clip.dense import pad_to_multiple

    stride, visual = teacher.stride, teacher.model.visual

    def plain_forward():
        # the same normalisation, padding and positional-embedding interpolation as
        # dense_embeddings, then the tower's own forward
        xn = pad_to_multiple((x - teacher.pixel_mean) / teacher.pixel_std, stride)
        with positional_embedding_for(visual, xn, stride), teacher._autocast():
            return visual(xn)

    return time_calls(
        {
            "dense": lambda: teacher.dense_embeddings(x),
            "dense_keys": lambda: teacher.dense_embeddings(x, return_keys=True),
            "plain": plain_forward,
            "encode": lambda: teacher.encode_image(x),
        },
        **timing,
    )


def _ratios(t: Dict[str, float]) -> Dict[str, float]:
    """The tower timings in seconds and their ratios, under their result names."""
    return {
        "dense_s": t["dense"],
        "dense_keys_s": t["dense_keys"],
        "plain_forward_same_tokens_s": t["plain"],
        "encode_image_s": t["encode"],
        "ratio_dense_vs_plain_same_tokens": t["dense"] / t["plain"],
        "ratio_dense_keys_vs_plain_same_tokens": t["dense_keys"] / t["plain"],
        "ratio_dense_vs_encode_image": t["dense"] / t["encode"],
    }


def _maskclip(teacher, names, templates: str) -> nn.Module:
    """MaskCLIP with prompt denoising and key smoothing over ``names``, text computed."""
    from ..clip import get_templates
    from ..modeling.meta_arch.maskclip import MaskCLIP

    model = MaskCLIP(
        teacher=teacher,
        templates=get_templates(templates),
        vocabulary=names,
        prompt_denoise=True,
        key_smoothing=True,
    ).eval()
    model.text_embeddings(names)  # computed once per vocabulary, not part of labelling
    return model


def benchmark_teacher(
    *,
    model: str = "configs/clip/tiny_vit.json",
    pretrained: str = "",
    cache_dir: str = "",
    size: Tuple[int, int] = (224, 224),
    batch: int = 2,
    device: str = "cpu",
    precision: str = "fp32",
    iters: int = 10,
    warmup: int = 3,
    clock: str = "wall",
    vocabulary: str = "voc20",
    templates: str = "single",
    store: bool = False,
) -> Dict[str, Any]:
    """Time the CLIP teacher on one random batch (medians after warm-up calls).

    Times dense_embeddings (MaskCLIP's last-block rule) with and without keys; the vision
    tower's own forward on the same padded input, so the same tokens (positional embeddings
    interpolated as dense_embeddings does; full attention in every block, pooled output);
    encode_image (input resized to the model size); MaskCLIP labelling (prompt denoising and
    key smoothing at the input size, argmax per image); with ``store`` pseudo-labelling.

    Args:
        model (str): open_clip model name or JSON model config.
        pretrained (str): tag, checkpoint path, or "" (random weights).
        cache_dir (str): MODEL.CLIP.CACHE_DIR ("" = default).
        size (tuple): (H, W) of the images.
        batch (int): images per call.
        device (str): torch device.
        precision (str): "fp32", "bf16" or "fp16".
        iters (int): timed calls.
        warmup (int): untimed calls first.
        clock (str): "wall", or "process" (this process's CPU time).
        vocabulary (str): labelling vocabulary: builtin name, .json file or comma list.
        templates (str): prompt-template set of the text.
        store (bool): also time pseudo-labelling into a temporary store.

    Returns:
        dict: the timings (seconds), their ratios and the labelling rates (images/s).
    """
    from ..vocab import resolve_vocabulary
    from .pseudo import store_rate_on_images

    dev = torch.device(device)
    teacher = _build_teacher(model, pretrained, cache_dir, device, precision, templates)
    h, w = size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, h, w), generator=g, dtype=torch.uint8)
    timing = dict(device=dev, iters=iters, warmup=warmup, clock=clock)
    t = _tower_times(teacher, images.to(dev).float(), timing)
    names = resolve_vocabulary(vocabulary).names
    maskclip = _maskclip(teacher, names, templates)
    inputs = [{"image": im, "height": h, "width": w} for im in images]

    def label():
        return [out["sem_seg"].argmax(dim=0) for out in maskclip(inputs)]

    t_label = time_calls({"label": label}, **timing)["label"]
    stride = teacher.stride
    res = {
        "model": model,
        "pretrained": pretrained,
        "device": str(dev),
        "precision": precision,
        "clock": clock,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "size": [h, w],
        "model_image_size": list(teacher.image_size),
        "grid": [-(-h // stride), -(-w // stride)],
        **_ratios(t),
        "maskclip_label_images_per_s": batch / t_label,
        "vocabulary_size": len(names),
    }
    if store:
        res["pseudo_store_images_per_s"] = store_rate_on_images(maskclip, images, names, iters)
    return res
