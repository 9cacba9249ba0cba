"""Prompt-template sets for CLIP text embeddings, by name or from a JSON file.

Sources (the strings are data, checked against the official repositories):
- ``imagenet80``: the 80 ImageNet templates of CLIP's notebook
  ``notebooks/Prompt_Engineering_for_ImageNet.ipynb`` (openai/CLIP), in its order.
- ``vild``: the 14 ViLD-style templates as used by open-vocabulary segmentation projects
  (``VILD_PROMPT`` in facebookresearch/ov-seg, ``open_vocab_seg/modeling/clip_adapter/
  text_template.py``), in its order.
- ``maskclip85``: MaskCLIP's 85 templates (``prompt_templates`` in chongzhou96/MaskCLIP,
  ``tools/maskclip_utils/prompt_engineering.py``): the 80 above followed by 5 scene templates.
- ``zegclip_single`` and ``zegclip_multi``: the text of ZegCLIP's precomputed embeddings
  (ZiqinZhou66/ZegCLIP @9ba4bb5 ``configs/_base_/datasets/text_embedding/get_embedding.ipynb``:
  ``single_templete`` embeds ``f"a photo of a {c}"``, no period, for ``voc12_single.npy``;
  ``multi_templete`` averages its 15 ``templates`` for ``coco_multi.npy``), in its order.
"""

from __future__ import annotations

import json
import os

from ..vocab import check_templates

__all__ = ["TEMPLATE_SETS", "get_templates"]

SINGLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

# MaskCLIP adds these after the ImageNet set: dense prediction sees scenes, not object crops.
MASKCLIP_SCENE_TEMPLATES: tuple[str, ...] = (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

# ZegCLIP's text: one template without a period (VOC), or 15 averaged (COCO-Stuff)
ZEGCLIP_SINGLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}",)

ZEGCLIP_MULTI_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "a {} in the scene.",
    "a photo of a {} in the scene.",
    "There is a {} in the scene.",
    "There is the {} in the scene.",
    "This is a {} in the scene.",
    "This is the {} in the scene.",
    "This is one {} in the scene.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    # the bare class name (LSeg's official text input)
    "name": ("{}",),
    "single": SINGLE_TEMPLATES,
    "imagenet80": IMAGENET_TEMPLATES,
    "vild": VILD_TEMPLATES,
    "maskclip85": IMAGENET_TEMPLATES + MASKCLIP_SCENE_TEMPLATES,
    "zegclip_single": ZEGCLIP_SINGLE_TEMPLATES,
    "zegclip_multi": ZEGCLIP_MULTI_TEMPLATES,
}


def get_templates(name_or_path: str | os.PathLike) -> tuple[str, ...]:
    """Return a prompt-template set.

    Args:
        name_or_path: a set name (a key of ``TEMPLATE_SETS``) or the path of a JSON file
            holding a list of templates, each with one ``"{}"``.

    Returns:
        tuple[str, ...]: the templates, in order.
    """
    if isinstance(name_or_path, str) and name_or_path in TEMPLATE_SETS:
        return TEMPLATE_SETS[name_or_path]
    path = os.fspath(name_or_path)
    if not (path.lower().endswith(".json") or os.path.isfile(path)):
        raise ValueError(
            f"Unknown prompt-template set {path!r}; sets are {sorted(TEMPLATE_SETS)}, or give "
            'the path of a .json file holding a list of templates like ["a photo of a {}."]'
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Template file {path!r} does not exist; expected a JSON list of templates, "
            'each with one "{}"'
        )
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"Template file {path!r} is not valid JSON ({e}); expected a JSON list of "
                'templates, each with one "{}"'
            ) from None
    if not isinstance(data, list):
        raise ValueError(
            f"Template file {path!r} holds a {type(data).__name__}; expected a JSON list of "
            'templates, each with one "{}"'
        )
    return check_templates(data, source=f"template file {path!r}")
