"""Prompt names: the text a method's official code embeds for a class, by display name.

A vocabulary keeps the dataset's names (tables, legends, visualisations); the text encoder
may see other words for some of them, as an official implementation did (ZegCLIP's VOC
"pottedplant", MaskCLIP's cleaned COCO-Stuff "sky" for "sky-other"). A prompt-name map is a
JSON object ``{"display name": "prompt name", ...}``; names it lacks are embedded as they are.
Builtin maps live in ``ovseg/data/prompt_names/<name>.json``; ``MODEL.CLIP.PROMPT_NAMES``
names one, a JSON file, or "" for none.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Dict, Mapping, Sequence, Tuple

from ..vocab import normalize_name

__all__ = ["PromptWords", "apply_prompt_names", "builtin_prompt_name_maps", "get_prompt_names"]


def _folder():
    return resources.files("ovseg.data").joinpath("prompt_names")


def builtin_prompt_name_maps() -> Tuple[str, ...]:
    """Names of the shipped prompt-name maps, sorted."""
    folder = _folder()
    if not folder.is_dir():
        return ()
    return tuple(
        sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))
    )


def _parse(text: str, source: str) -> Dict[str, str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"Prompt-name map {source!r} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k.strip() and v.strip()
        for k, v in data.items()
    ):
        raise ValueError(
            f"Prompt-name map {source!r} must be a JSON object of non-empty strings, "
            '{"display name": "prompt name", ...}'
        )
    by_key: Dict[str, str] = {}
    for display, prompt in data.items():
        key = normalize_name(display)
        if key in by_key:
            raise ValueError(f"Prompt-name map {source!r} lists {display!r} twice")
        by_key[key] = prompt.strip()
    return by_key


def get_prompt_names(spec: str) -> Dict[str, str]:
    """Load a prompt-name map.

    Args:
        spec (str): "" (no map), a builtin map's name, or a path to a JSON file.

    Returns:
        dict: normalised display name -> prompt name.
    """
    spec = spec.strip()
    if not spec:
        return {}
    if spec in builtin_prompt_name_maps():
        text = _folder().joinpath(f"{spec}.json").read_text(encoding="utf-8")
        return _parse(text, f"builtin:{spec}")
    if not os.path.isfile(spec):
        raise ValueError(
            f"Unknown prompt-name map {spec!r} (MODEL.CLIP.PROMPT_NAMES): not a builtin "
            f"({list(builtin_prompt_name_maps())}) and not a JSON file"
        )
    with open(spec, encoding="utf-8") as f:
        return _parse(f.read(), spec)


class PromptWords(tuple):
    """Words that are already what the text encoder sees: the synonyms of class names a map
    was applied to (:meth:`~ovseg.modeling.meta_arch.base.OpenVocabSegmentor.scored_words`).
    A map renames whole display names; applied again to the words, it would rename a synonym
    that happens to be a key ("aeroplane, jet" embedded as "airplane", "jet" under
    SYNONYM_MERGE max but "aeroplane", "jet" under mean) or refuse a vocabulary holding a key
    and its prompt name (ADE20K-847's "window" and "windowpane" under maskclip_ade150), so
    :func:`apply_prompt_names` passes them unchanged."""

    __slots__ = ()


def apply_prompt_names(names: Sequence[str], prompt_names: Mapping[str, str]) -> Tuple[str, ...]:
    """The names the text encoder sees for ``names`` (display names): mapped where the map
    has them, unchanged otherwise; :class:`PromptWords` unchanged.

    Raises:
        ValueError: two display names would get the same prompt name (identical embeddings).
    """
    if isinstance(names, PromptWords):
        return tuple(names)
    out = tuple(prompt_names.get(normalize_name(n), n) for n in names)
    seen: Dict[str, str] = {}
    for display, prompt in zip(names, out):
        key = normalize_name(prompt)
        if key in seen and normalize_name(seen[key]) != normalize_name(display):
            raise ValueError(
                f"Prompt names collide: {seen[key]!r} and {display!r} would both be embedded "
                f"as {prompt!r}; fix the prompt-name map"
            )
        seen[key] = display
    return out
