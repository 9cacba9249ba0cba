"""What identifies a labeller: teacher weights plus every setting that changes its labels."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from torch import nn

from ..clip.cache import state_dict_sha256
from ..clip.teacher import CLIPTeacher
from ..vocab import normalize_name

__all__ = ["build_manifest", "find_teacher", "labeller_fingerprint", "labeller_settings"]


def _plain(node: Any) -> Any:
    """A CfgNode (or nested values) as JSON-able builtins, tuples as lists."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def labeller_settings(cfg) -> Dict[str, Any]:
    """The config values that decide a teacher meta-architecture's labels.

    The method's own switches (MaskCLIP's key smoothing and prompt denoising, ...) are read
    from ``MODEL.<META_ARCHITECTURE upper-cased>`` when that node exists; device, cache
    folders and output paths are left out because they do not change the labels.

    Args:
        cfg (CfgNode): the teacher's config.

    Returns:
        dict: JSON-able settings.
    """
    meta = cfg.MODEL.META_ARCHITECTURE
    clip = {k: _plain(v) for k, v in cfg.MODEL.CLIP.items() if k != "CACHE_DIR"}
    method = cfg.MODEL.get(meta.upper(), None)
    return {
        "meta_architecture": meta,
        "method": _plain(method) if method is not None else {},
        "clip": clip,
        "test_vocabulary": cfg.MODEL.OVSEG.TEST_VOCABULARY,
        "pixel_mean": _plain(cfg.MODEL.PIXEL_MEAN),
        "pixel_std": _plain(cfg.MODEL.PIXEL_STD),
        "input": {
            "format": cfg.INPUT.FORMAT,
            "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
            "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
            "mapper": cfg.INPUT.DATASET_MAPPER_NAME,
        },
        "inference": {
            "mode": cfg.TEST.INFERENCE_MODE,
            "slide_window": _plain(cfg.TEST.SLIDE_WINDOW),
            "slide_stride": _plain(cfg.TEST.SLIDE_STRIDE),
        },
    }


def find_teacher(model: nn.Module) -> Optional[CLIPTeacher]:
    """The first :class:`CLIPTeacher` inside ``model`` (or ``model`` itself), if any."""
    for module in model.modules():
        if isinstance(module, CLIPTeacher):
            return module
    return None


def labeller_fingerprint(
    model: nn.Module, settings: Mapping[str, Any]
) -> Tuple[str, Dict[str, Any]]:
    """Fingerprint a labeller: its CLIP teacher, its own weights and its settings.

    Args:
        model (nn.Module): the teacher meta-architecture. Its CLIP teacher contributes
            ``CLIPTeacher.fingerprint``; every other weight (a student used as labeller, a
            learned background embedding) is hashed from the state dict, which excludes the
            teacher's.
        settings (dict): JSON-able settings (see :func:`labeller_settings`).

    Returns:
        tuple: (SHA-256 hex fingerprint, readable parts {"clip", "weights_sha256",
        "settings"} for the manifest).
    """
    teacher = find_teacher(model)
    parts = {
        "clip": teacher.fingerprint if teacher is not None else None,
        "weights_sha256": state_dict_sha256(model),
        "settings": _plain(settings),
    }
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), parts


def build_manifest(
    *,
    fingerprint: str,
    teacher: Mapping[str, Any],
    vocabulary: Sequence[str],
    unseen: Sequence[str] = (),
    threshold: float,
    dataset: str,
    command: str = "",
) -> Dict[str, Any]:
    """The manifest fields a generation run passes to :meth:`PseudoLabelStore.create`.

    Args:
        fingerprint (str): from :func:`labeller_fingerprint`.
        teacher (dict): its readable parts.
        vocabulary: the names label indices refer to.
        unseen: the names of ``vocabulary`` that are unseen classes of the dataset.
        threshold (float): the confidence threshold.
        dataset (str): the registered dataset name.
        command (str): the command line, quoted in error messages of later readers.

    Returns:
        dict
    """
    names = [n.strip() for n in vocabulary]
    unseen_keys = {normalize_name(n) for n in unseen}
    return {
        "fingerprint": fingerprint,
        "teacher": _plain(teacher),
        "vocabulary": names,
        "unseen": [n for n in names if normalize_name(n) in unseen_keys],
        "threshold": float(threshold),
        "dataset": dataset,
        "command": command,
    }
