"""What a checkpoint records about how it was trained, and the checks a load makes against it.

A checkpoint holds no CLIP weights (the frozen teacher comes from ``MODEL.CLIP``) and no
model settings, so evaluating it with another CLIP of the same shapes, or with another
shape-free setting (``MODEL.ZEGCLIP.PATCH_STRIDE``), used to load "completely" and report
other numbers without a word. Every save now records, in ``ovseg_meta``:

- ``clip_teacher``: the teacher's identity (:func:`teacher_record`): its model (the
  sorted names and shapes of its tensors and whether it computes QuickGELU) and its weights
  by the loaded tensors (``tensors:`` + ``CLIPTeacher.tensors_sha256``, whatever file, tag or
  metadata they came with; ``random`` for a random initialisation), with
  ``CLIPTeacher.fingerprint`` and the file or tag it was read from for the message;
- ``config``: the run's config (YAML), when the saver knows it (the Trainer).

A load that must be whole refuses another teacher (:func:`check_teacher`;
``MODEL.CLIP.ALLOW_TEACHER_MISMATCH True`` turns the error into a warning), and an
evaluation or a resume warns in one line about MODEL settings that differ from the
training config (:func:`changed_settings`), leaving out keys that are chosen at test time
or only act in training (:data:`NOT_COMPARED`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Any, Dict, List, Mapping, Optional

import yaml
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "NOT_COMPARED",
    "changed_settings",
    "check_teacher",
    "plain",
    "recorded_config",
    "teacher_record",
]

# MODEL keys (less "MODEL.") a run may change after training without misusing its weights:
# paths, devices and speed; what is chosen at test time (vocabularies, prompts, test-time
# thresholds, calibration, the scores' resizing, FreeSeg's test tasks and CLIP ensemble,
# the panoptic combination); what acts only in training (losses, their weights, dropout,
# initialisation, freezing, pseudo-labels, self-training, sampling); the teacher (compared
# by check_teacher) and the class count (the vocabulary's size). Whole keys first, then name
# parts, each matched between key-part boundaries ("." or "_" or the key's ends: "DICE" is
# not in VIT_BACKBONE.OUT_INDICES, "TRAIN" not in a "CONSTRAINT")
_NOT_COMPARED_KEYS = (
    r"WEIGHTS", r"DEVICE", r"META_ARCHITECTURE", r"COMPILE.*", r"CHANNELS_LAST",
    r"LOAD_PROPOSALS", r"CLIP\..*", r"MASKCLIP\..*", r"MASKCLIP_PLUS\.UPSAMPLE_LOGITS",
    r"ZEGCLIP\.CALIBRATION",
    r"OVSEG\.(ZERO_SHOT_SETTING|SYNONYM_MERGE|TEXT_EMBEDDINGS_FILE)",
    r"XPM\.(BERT_NAME|ROI_ALIGN_MATMUL_MAX_PIXELS|PROPOSE_TOPK|MASK_PREDICTOR_STD)",
    r"TORCHVISION_RESNET\.WEIGHTS", r"PANOPTIC_FPN\.COMBINE\..*",
    r"FREESEG\.(PROMPT_CHECKPOINT|CLIP_ENSEMBLE|CLIP_TEMPERATURE|MASK_EXPAND_RATIO)",
)  # fmt: skip
_NOT_COMPARED_PARTS = (
    "NUM_CLASSES", "CACHE", "PRETRAINED", "TEST", "VOCABULARY", "LOSS", "WEIGHT$", "FOCAL",
    "DICE", "DROPOUT", "INIT", "FREEZE", "NOISE", "TRAIN", "SELF_TRAINING", "PSEUDO",
    "TEACHER", "THRESH(OLDS?)?", "IGNORE", "DEEP_SUPERVISION", "AUX", "APPEND_GT", "BATCH",
    "FRACTION", "IOU", "BBOX_REG", "SMOOTH_L1", "ANNOTATION_FREE", "SAMPLES?", "CAPTION",
    "QUIRK", "POLYGONS", "REGION_EMBEDDING", "DISTILL", "TARGETS", "KEYPOINTS?",
)  # fmt: skip
_WHOLE_KEYS = "|".join(_NOT_COMPARED_KEYS)
_PARTS = "|".join(_NOT_COMPARED_PARTS)
NOT_COMPARED = re.compile(rf"^({_WHOLE_KEYS})$|(^|[._])({_PARTS})(?=$|[._])")
# batch norms that compute alike in evaluation (running statistics): "SyncBN" in training,
# "BN" in a one-process evaluation is no change
_BATCH_NORMS = {"BN", "SyncBN", "FrozenBN", "naiveSyncBN", "nnSyncBN"}
_SHOWN = 6


def teacher_record(model: nn.Module) -> Optional[Dict[str, Any]]:
    """The identity of ``model``'s frozen CLIP teacher (None when it has none).

    The model is its tensors' sorted names and shapes and its activation, not open_clip's
    config text: ``ViT-B-16`` with the tag ``openai`` (open_clip forces QuickGELU) and
    ``ViT-B-16-quickgelu`` with that tag's file are one model. The weights are the loaded
    tensors' hash (computed once per teacher), so the same tensors in another file, with
    other metadata, or named by their tag are the same weights.
    """
    from ..pseudo.labeller import find_teacher

    teacher = find_teacher(model)
    if teacher is None:
        return None
    from open_clip.transformer import QuickGELU

    shapes = [[k, list(v.shape)] for k, v in sorted(teacher.model.state_dict().items())]
    quick_gelu = any(isinstance(m, QuickGELU) for m in teacher.model.modules())
    blob = json.dumps({"shapes": shapes, "quick_gelu": quick_gelu})
    pretrained = os.path.expanduser(teacher.pretrained)
    source = os.path.abspath(pretrained) if os.path.isfile(pretrained) else pretrained
    return {
        "model": teacher.name,
        "model_sha256": hashlib.sha256(blob.encode()).hexdigest(),
        "quick_gelu": quick_gelu,
        "weights": f"tensors:{teacher.tensors_sha256}" if teacher.pretrained else "random",
        "source": source or "random initialisation",
        "fingerprint": teacher.fingerprint,
    }


def check_teacher(
    recorded: Any, model: nn.Module, *, path: str, allow: bool = False
) -> Optional[str]:
    """Refuse a checkpoint trained with another CLIP teacher than ``model``'s.

    A random teacher cannot be rebuilt in another process: a checkpoint trained with one
    loads into any random teacher of the same model, and a random teacher against pretrained
    weights (either way round) is another teacher.

    Args:
        recorded: the checkpoint's ``ovseg_meta["clip_teacher"]`` (None, or a record without
            ``model_sha256``: not recorded, no check: checkpoints of an older ovseg,
            converted ones).
        model: the model loaded into.
        path (str): the checkpoint, for the message.
        allow (bool): MODEL.CLIP.ALLOW_TEACHER_MISMATCH: warn instead.

    Returns:
        str or None: the warning logged when ``allow``.

    Raises:
        CheckpointMismatchError: naming both teachers and the way to override.
    """
    from .checkpoint_fit import CheckpointMismatchError

    known = isinstance(recorded, Mapping) and "model_sha256" in recorded
    ours = teacher_record(model) if known else None
    if ours is None:
        return None
    other_model = recorded["model_sha256"] != ours["model_sha256"]
    weights = recorded.get("weights"), ours["weights"]
    if not (other_model or weights[0] != weights[1]):
        return None
    if other_model:
        what = "another CLIP model"
    elif "random" in weights:
        what = "a random initialisation and pretrained weights of the same model"
    else:
        what = "other CLIP weights of the same model"
    message = (
        f"{path} was trained with CLIP {_teacher(recorded)}, and this config's teacher is "
        f"{_teacher(ours)}: {what}, whose embeddings the checkpoint's weights were not "
        "trained on"
    )
    if allow:
        logger.warning(f"{message} (MODEL.CLIP.ALLOW_TEACHER_MISMATCH True: evaluating anyway)")
        return message
    raise CheckpointMismatchError(
        f"{message}. Set MODEL.CLIP.MODEL_NAME and MODEL.CLIP.PRETRAINED to the training run's "
        "(its config.yaml), or MODEL.CLIP.ALLOW_TEACHER_MISMATCH True to use this CLIP anyway"
    )


def _teacher(record: Mapping[str, Any]) -> str:
    weights = str(record.get("weights", "?"))
    if weights.startswith("tensors:"):
        weights = weights[: len("tensors:") + 12] + "..."
    activation = ", QuickGELU" if record.get("quick_gelu") else ""
    return f"{record.get('model', '?')}{activation} ({record.get('source', '?')}, {weights})"


def changed_settings(recorded: Any, cfg: Any, *, everything: bool = False) -> List[tuple]:
    """MODEL keys whose value in ``cfg`` differs from the checkpoint's training config.

    Args:
        recorded: the checkpoint's ``ovseg_meta["config"]`` (YAML text; None: no record).
        cfg (CfgNode): the config loading it.
        everything (bool): every differing key, also those :data:`NOT_COMPARED` leaves out
            (the hint of a refused misfit), but the weights and device.

    Returns:
        list[tuple]: (key, value in training, value now), sorted by key.
    """
    trained = recorded_config(recorded)
    if cfg is None or not isinstance(trained.get("MODEL"), dict):
        return []
    theirs, ours = _flat(trained["MODEL"]), _flat(cfg.MODEL)
    changed = []
    for key in sorted(set(theirs) & set(ours)):
        skip = key in ("WEIGHTS", "DEVICE") if everything else NOT_COMPARED.search(key)
        if not skip and not _same(key, theirs[key], ours[key]):
            changed.append((f"MODEL.{key}", theirs[key], ours[key]))
    return changed


def describe_changes(changed: List[tuple]) -> str:
    """``MODEL.A X in training, Y here; ...`` of :func:`changed_settings`' rows."""
    shown = [f"{key} {old!r} in training, {new!r} here" for key, old, new in changed[:_SHOWN]]
    more = f"; ... and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else ""
    return "; ".join(shown) + more


def warn_changed_settings(recorded: Any, cfg: Any, path: str) -> Optional[str]:
    """Log one warning line naming the MODEL settings that differ from the training config
    (:func:`changed_settings`); return it (None when none differ)."""
    changed = changed_settings(recorded, cfg)
    if not changed:
        return None
    message = (
        f"{path} was trained with other MODEL settings, which change its outputs with the "
        f"same weights: {describe_changes(changed)}. Evaluate with the run's config.yaml "
        "unless the change is meant"
    )
    logger.warning(message)
    return message


def _flat(node: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recorded_config(text: Any) -> Dict[str, Any]:
    """A checkpoint's recorded config (``ovseg_meta["config"]``, YAML) as a dict ({}: none)."""
    if not isinstance(text, str):
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def plain(value: Any) -> Any:
    """A config value with its tuples as lists (a loaded YAML's and a CfgNode's compare)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _same(key: str, a: Any, b: Any) -> bool:
    if (
        key.endswith("NORM")
        and isinstance(a, str)
        and isinstance(b, str)
        and {a, b} <= _BATCH_NORMS
    ):
        return True
    return plain(a) == plain(b)
