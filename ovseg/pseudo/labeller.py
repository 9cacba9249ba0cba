"""What identifies a labeller: teacher weights plus every setting that changes its labels."""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from torch import nn

from ..clip.cache import state_dict_sha256
from ..clip.teacher import CLIPTeacher
from ..vocab import normalize_name

__all__ = [
    "build_manifest",
    "expected_teacher",
    "find_teacher",
    "labeller_fingerprint",
    "labeller_settings",
    "teacher_weights_id",
]

# labeller settings a student's config cannot be asked about: its own test vocabulary (the
# store's vocabulary is compared instead) and the score kind (its meta-architecture's nature)
_NOT_EXPECTED = ("test_vocabulary", "scores")


def _plain(node: Any) -> Any:
    """A CfgNode (or nested values) as JSON-able builtins, tuples as lists."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


# MODEL.CLIP keys that do not change labels: where caches live, and whether a checkpoint of
# another teacher may load (read at load time only)
_NOT_LABELS = ("CACHE_DIR", "ALLOW_TEACHER_MISMATCH")


# MODEL.MASKCLIP keys added after stores existed, with the behaviour those stores have
_MASKCLIP_KEYS_ADDED_LATER = {
    "UPSAMPLE_LOGITS": False,
    "STRETCH_GRID": False,
    "PAD_TO_STRIDE": True,
}


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
    clip = {k: _plain(v) for k, v in cfg.MODEL.CLIP.items() if k not in _NOT_LABELS}
    method = cfg.MODEL.get(meta.upper(), None)
    settings = {
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
            # MaskCLIP pads each forward's input to it: another padding, other labels
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        },
        "inference": {
            "mode": cfg.TEST.INFERENCE_MODE,
            "slide_window": _plain(cfg.TEST.SLIDE_WINDOW),
            "slide_stride": _plain(cfg.TEST.SLIDE_STRIDE),
        },
    }
    # MaskCLIP's switches added after stores were made: each left out at the value those
    # stores were made with (upsampled logits also when key smoothing makes them ineffective)
    method_settings = settings["method"]
    if method_settings.get("KEY_SMOOTHING"):
        method_settings.pop("UPSAMPLE_LOGITS", None)
    for key, before in _MASKCLIP_KEYS_ADDED_LATER.items():
        if method_settings.get(key, before) == before:
            method_settings.pop(key, None)
    # OpenCV's pixels resize the teacher's input otherwise; left out for PIL, as stores before
    backend = cfg.INPUT.get("RESIZE_BACKEND", "pil")
    if backend != "pil":
        settings["input"]["resize_backend"] = backend
    rounding = cfg.INPUT.get("RESIZE_ROUNDING", "round")  # other sizes; left out as before
    if rounding != "round":
        settings["input"]["resize_rounding"] = rounding
    # the text embeddings' file by content; left out when unset, as stores made before have it
    path = os.path.expanduser(cfg.MODEL.OVSEG.get("TEXT_EMBEDDINGS_FILE", ""))
    if path:
        settings["text_embeddings_file"] = file_id(path)
    return settings


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_id(path: str) -> str:
    """``"sha256:<hex>"`` of a file's content, or the path itself when it does not exist
    (its reader refuses it)."""
    if not os.path.isfile(path):
        return path
    st = os.stat(path)
    return "sha256:" + _file_sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


def teacher_weights_id(pretrained: str) -> str:
    """What the teacher's CLIP weights are, from ``MODEL.CLIP.PRETRAINED`` alone:
    ``"sha256:<hex>"`` of a checkpoint file (the same weights anywhere on disk), ``"tag:<tag>"``
    for an open_clip tag, ``"random"`` for a random initialisation."""
    if not pretrained:
        return "random"
    path = os.path.expanduser(pretrained)
    if os.path.isfile(path):
        return file_id(path)
    return f"tag:{pretrained}"


def expected_teacher(cfg, meta_architecture: str) -> Dict[str, Any]:
    """The teacher parts of a store's manifest that a student's config fixes: the labeller
    settings of ``cfg`` run as ``meta_architecture`` (less :data:`_NOT_EXPECTED`) and the
    identity of its CLIP weights (:func:`teacher_weights_id`).

    Args:
        cfg (CfgNode): the student's training config.
        meta_architecture (str): the meta-architecture its teacher labels with.

    Returns:
        dict: {"settings": {...}, "clip_weights": str}.
    """
    teacher_cfg = cfg.clone()
    teacher_cfg.defrost()
    teacher_cfg.MODEL.META_ARCHITECTURE = meta_architecture
    settings = labeller_settings(teacher_cfg)
    # the weights are compared by content (clip_weights), not by the path they were read from
    settings["clip"] = {k: v for k, v in settings["clip"].items() if k != "PRETRAINED"}
    return {
        "settings": {k: v for k, v in settings.items() if k not in _NOT_EXPECTED},
        "clip_weights": teacher_weights_id(cfg.MODEL.CLIP.PRETRAINED),
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
        tuple: (SHA-256 hex fingerprint, readable parts {"clip", "clip_weights",
        "weights_sha256", "settings"} for the manifest).
    """
    teacher = find_teacher(model)
    pretrained = settings.get("clip", {}).get("PRETRAINED", "")
    parts = {
        "clip": teacher.fingerprint if teacher is not None else None,
        "clip_weights": teacher_weights_id(pretrained),
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
