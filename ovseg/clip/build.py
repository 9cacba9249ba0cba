"""Build the CLIP teacher from ``MODEL.CLIP``: open_clip name or JSON config, weights, cache."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import pickle
import re
from dataclasses import fields
from pathlib import Path
from typing import Optional, Tuple

import open_clip
import open_clip.pretrained
from open_clip.transform import PreprocessCfg

from ..utils.downloads import WeightsDownloadError
from .teacher import CLIPTeacher

__all__ = [
    "CLIPWeightsUnavailable",
    "OpenCLIPVersionError",
    "build_clip_teacher",
    "check_open_clip_version",
    "default_cache_dir",
    "register_model_config",
]

logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


class CLIPWeightsUnavailable(WeightsDownloadError, RuntimeError):
    """A tag's weights could not be fetched: an OSError, so the tools print it as one line
    (``ovseg.utils.cli``); a RuntimeError, as it was first raised."""


class OpenCLIPVersionError(ImportError, ValueError):
    """The installed open_clip is older than ovseg's minimum (a ValueError too, so the tools
    print it as one line)."""


#: the oldest open_clip ovseg runs on: ``create_model(pretrained_text=...)`` is 3.0's (2.x
#: fails inside open_clip with a TypeError; checked on 2.24, 2.26, 2.29 and 2.32)
MIN_OPEN_CLIP = (3, 0)


def check_open_clip_version(version: Optional[str] = None) -> None:
    """Raise :class:`OpenCLIPVersionError` when open_clip_torch is older than
    :data:`MIN_OPEN_CLIP` (``version``: the installed one by default: its package metadata,
    else, for sources on ``PYTHONPATH`` without metadata, ``open_clip.__version__``)."""
    if not version:
        try:
            version = importlib.metadata.version("open_clip_torch")
        except importlib.metadata.PackageNotFoundError:
            import open_clip

            version = open_clip.__version__
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if numbers < MIN_OPEN_CLIP:
        need = ".".join(map(str, MIN_OPEN_CLIP))
        raise OpenCLIPVersionError(
            f"open_clip_torch {version} is installed; ovseg needs {need} or newer: "
            f"pip install 'open_clip_torch>={need}' (pyproject.toml asks for it)"
        )


def default_cache_dir() -> str:
    """``$OVSEG_CACHE`` if set, else ``~/.cache/ovseg``."""
    return os.environ.get("OVSEG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ovseg")


def register_model_config(path: str) -> str:
    """Register a JSON open_clip model config with open_clip; return its model name (stem).

    Args:
        path (str): a JSON file with open_clip's ``{"embed_dim", "vision_cfg", "text_cfg"}``.

    Returns:
        str: the name to pass to ``open_clip.create_model`` (the file stem).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"MODEL.CLIP.MODEL_NAME: model config file {str(p)!r} does not exist; give an "
            "open_clip model name (see open_clip.list_models()) or an existing JSON config"
        )
    try:
        config = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"model config {str(p)!r} is not valid JSON: {e}") from None
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
    if missing:
        raise ValueError(
            f"model config {str(p)!r} lacks {missing}; open_clip configs hold "
            '"embed_dim", "vision_cfg" and "text_cfg"'
        )
    name = p.stem
    builtin = Path(open_clip.__file__).parent / "model_configs" / f"{name}.json"
    if builtin.is_file():
        raise ValueError(
            f"model config {str(p)!r} is named like open_clip's built-in {name!r}; rename the "
            "file so the two cannot be confused"
        )
    open_clip.add_model_config(p)
    return name


def _looks_like_path(value: str) -> bool:
    return (
        os.path.sep in value
        or value.startswith(("~", "."))
        or value.lower().endswith(_CHECKPOINT_SUFFIXES)
        or os.path.exists(value)
    )


def _download_hint(name: str, tag: str, pcfg: dict, weights_dir: str) -> str:
    # a plain state dict (the HF file) loads everywhere; OpenAI's URL files are TorchScript
    if pcfg.get("hf_hub"):
        # open_clip's convention: "org/repo/" (default file name) or "org/repo/file"
        repo, filename = os.path.split(pcfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        source = f"https://huggingface.co/{repo}/resolve/main/{filename}"
    elif pcfg.get("url"):
        source = pcfg["url"]
    else:
        return "open_clip lists no download source for it."
    local = os.path.join(weights_dir, f"{name}_{tag}{os.path.splitext(source)[1]}")
    hint = (
        f"Download {source} on a machine with network access, copy it here (for example to "
        f"{local}) and set MODEL.CLIP.PRETRAINED to that file's path"
    )
    quick = f"{name}-quickgelu"
    if pcfg.get("quick_gelu") and quick in open_clip.list_models():
        # from a file path the activation cannot be inferred; the model name must carry it
        hint += f" and MODEL.CLIP.MODEL_NAME to {quick!r} (these weights use QuickGELU)"
    return hint + "."


def _resolve_tag(name: str, tag: str, weights_dir: str) -> Tuple[str, dict]:
    """Return (local checkpoint path, open_clip pretrained cfg) for a tag, downloading once."""
    pcfg = open_clip.get_pretrained_cfg(name, tag)
    if not pcfg:
        known = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"MODEL.CLIP.PRETRAINED={tag!r} is neither a pretrained tag of open_clip model "
            f"{name!r} (known tags: {known}) nor an existing checkpoint file"
        )
    try:
        path = open_clip.pretrained.download_pretrained(pcfg, cache_dir=weights_dir)
    except Exception as e:  # offline, proxy, missing huggingface_hub, ...
        raise CLIPWeightsUnavailable(
            f"Could not get the weights of open_clip model {name!r} tag {tag!r} ({e}). "
            + _download_hint(name, tag, pcfg, weights_dir)
        ) from e
    if not path or not os.path.isfile(path):
        raise CLIPWeightsUnavailable(
            f"open_clip returned no weights file for {name!r} tag {tag!r}. "
            + _download_hint(name, tag, pcfg, weights_dir)
        )
    return path, pcfg


def _create_model(name: str, checkpoint: Optional[str], weights_dir: str, kwargs: dict):
    """``open_clip.create_model``; a checkpoint that cannot be read or does not fit the
    model fails naming both, not with torch's list of every key."""
    check_open_clip_version()
    try:
        return open_clip.create_model(
            name,
            pretrained=checkpoint,
            precision="fp32",
            device="cpu",
            cache_dir=weights_dir,
            pretrained_image=False,
            pretrained_text=False,  # random init must stay offline (HF text towers)
            **kwargs,
        )
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError) as e:
        if checkpoint is None:
            raise
        if isinstance(e, (pickle.UnpicklingError, EOFError)):
            detail = "it is not a readable PyTorch checkpoint"
        else:
            lines = str(e).strip().splitlines()
            detail = (" ".join(lines[:2])[:300] + "...") if lines else type(e).__name__
        raise ValueError(
            f"MODEL.CLIP.PRETRAINED checkpoint {checkpoint!r} could not be loaded into "
            f"MODEL.CLIP.MODEL_NAME {name!r} ({detail}); give an open_clip checkpoint of "
            "this model, or the MODEL_NAME it was trained with"
        ) from e


def build_clip_teacher(cfg, device: Optional[str] = None) -> CLIPTeacher:
    """Build the frozen CLIP teacher described by ``cfg.MODEL.CLIP``.

    Touches the network only when ``PRETRAINED`` is a tag whose weights are not cached.

    Args:
        cfg (CfgNode): a config with ``MODEL.CLIP.{MODEL_NAME, PRETRAINED, CACHE_DIR,
            PRECISION}``.
        device (str): where to put it; default ``cfg.MODEL.DEVICE``.

    Returns:
        CLIPTeacher
    """
    clip_cfg = cfg.MODEL.CLIP
    cache_dir = clip_cfg.CACHE_DIR or default_cache_dir()
    weights_dir = os.path.join(cache_dir, "weights")
    spec = clip_cfg.MODEL_NAME
    name = register_model_config(spec) if spec.lower().endswith(".json") else spec
    if not name.startswith(("hf-hub:", "local-dir:")):
        name = name.replace("/", "-")  # "ViT-B/16" is open_clip's "ViT-B-16"
        if open_clip.get_model_config(name) is None:
            raise ValueError(
                f"MODEL.CLIP.MODEL_NAME={spec!r} is not an open_clip model; use one of "
                "open_clip.list_models() or the path of a JSON model config"
            )

    pretrained = clip_cfg.PRETRAINED
    kwargs = {}
    checkpoint = None
    if not pretrained:
        logger.warning(
            f"MODEL.CLIP.PRETRAINED is empty: the CLIP teacher {name!r} is randomly "
            "initialised and has no knowledge to distil"
        )
    elif _looks_like_path(pretrained):
        checkpoint = os.path.expanduser(pretrained)
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(
                f"MODEL.CLIP.PRETRAINED: checkpoint file {checkpoint!r} does not exist; give an "
                "existing open_clip checkpoint, a pretrained tag, or '' for random init"
            )
    else:
        checkpoint, pcfg = _resolve_tag(name, pretrained, weights_dir)
        # the tag knows how its weights were trained: image mean/std and QuickGELU, which
        # open_clip only warns about when the model name lacks "-quickgelu"
        pp_keys = {f.name for f in fields(PreprocessCfg)}
        kwargs["force_preprocess_cfg"] = {k: v for k, v in pcfg.items() if k in pp_keys}
        if pcfg.get("quick_gelu") and not (open_clip.get_model_config(name) or {}).get(
            "quick_gelu"
        ):
            kwargs["force_quick_gelu"] = True

    model = _create_model(name, checkpoint, weights_dir, kwargs)
    # which file was read (a relative PRETRAINED resolves from the working directory first)
    source = f"weights {os.path.abspath(checkpoint)}" if checkpoint else "random weights"
    tag = f" (tag {pretrained!r})" if checkpoint and not _looks_like_path(pretrained) else ""
    logger.info(f"CLIP teacher {name!r} ({spec}): {source}{tag}")
    tokenizer = open_clip.get_tokenizer(name)
    teacher = CLIPTeacher(
        model,
        tokenizer,
        name=name,
        pretrained=pretrained,
        cache_dir=cache_dir,
        precision=clip_cfg.PRECISION,
    )
    return teacher.to(device or cfg.MODEL.DEVICE)
