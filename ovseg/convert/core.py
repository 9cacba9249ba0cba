"""Official checkpoints into ovseg's: name rules, an account of every tensor, checks.

A method's conversion is a list of :class:`Rule` s over the official (mmseg) state-dict
keys: each key is renamed into ovseg's name, or dropped for a stated reason, or refused (it
has no ovseg counterpart, so the converted model could not compute what the official one
does). A key no rule matches is refused too, so nothing is ever lost silently. The
:class:`ConversionReport` names every official tensor's fate. Dropped frozen CLIP weights
(ovseg takes them from ``MODEL.CLIP``) carry the teacher's name for them, so that
:func:`check_teacher` can compare them with the teacher a config builds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.io import atomic_write
from ..utils.safe_load import looks_like_a_checkpoint

__all__ = [
    "ConversionError",
    "ConversionReport",
    "Rule",
    "TEACHER_FORMS",
    "TeacherCheck",
    "apply_rules",
    "check_teacher",
    "fit_to_model",
    "load_official",
    "require",
    "save_converted",
]


class ConversionError(ValueError):
    """An official checkpoint that cannot be converted exactly (the message says why)."""


@dataclass(frozen=True)
class Rule:
    """One family of official keys and what becomes of them.

    Attributes:
        pattern (str): regular expression matched against the whole official key.
        target (str): the ovseg name (``re`` replacement template, ``\\1`` ...); "" = dropped.
        why (str): why the keys are dropped or refused (report and error text).
        teacher (str): for dropped frozen CLIP weights, the teacher's name for the tensor
            (a replacement template over ``teacher.model.state_dict()`` keys).
        form (str): how the teacher's tensor is put into the official one's form
            (a key of :data:`TEACHER_FORMS`).
        refuse (bool): the keys have no ovseg counterpart: conversion fails naming them.
    """

    pattern: str
    target: str = ""
    why: str = ""
    teacher: str = ""
    form: str = "same"
    refuse: bool = False


@dataclass
class TeacherCheck:
    """A dropped official tensor compared with the teacher's (``diff`` None: not compared;
    ``tol`` None: the caller's tolerance)."""

    official: str
    teacher: str
    form: str = "same"
    diff: Optional[float] = None
    note: str = ""
    tol: Optional[float] = None

    def ok(self, atol: float) -> bool:
        return self.diff is not None and self.diff <= (atol if self.tol is None else self.tol)


@dataclass
class ConversionReport:
    """What became of every official tensor, and what the converted checkpoint gained."""

    method: str
    used: Dict[str, str] = field(default_factory=dict)  # official key -> ovseg key
    dropped: Dict[str, str] = field(default_factory=dict)  # official key -> why
    added: Dict[str, str] = field(default_factory=dict)  # ovseg key -> how it was made
    fresh: Dict[str, str] = field(default_factory=dict)  # ovseg key -> why the model inits it
    teacher: List[TeacherCheck] = field(default_factory=list)
    pending: List[TeacherCheck] = field(default_factory=list)  # dropped, awaiting a teacher
    info: List[str] = field(default_factory=list)  # what the official model was
    notes: List[str] = field(default_factory=list)  # how the config computes otherwise
    checked_model: bool = False

    @property
    def renamed(self) -> int:
        return sum(1 for old, new in self.used.items() if old != new)

    def drop(self, key: str, why: str) -> None:
        self.dropped[key] = why

    def summary(self, atol: float = 0.0) -> str:
        """A readable account: counts, dropped keys grouped by reason, checks, notes."""
        total = len(self.used) + len(self.dropped)
        lines = [
            f"{self.method}: {total} official tensors: {len(self.used)} used "
            f"({self.renamed} renamed), {len(self.dropped)} dropped, {len(self.added)} added"
        ]
        reasons: Dict[str, int] = {}
        for why in self.dropped.values():
            reasons[why] = reasons.get(why, 0) + 1
        lines += [f"  dropped {n:4d}: {why}" for why, n in sorted(reasons.items())]
        made: Dict[str, List[str]] = {}
        for key, how in sorted(self.added.items()):
            made.setdefault(how, []).append(key)
        for how, keys in made.items():
            if len(keys) == 1:
                lines.append(f"  added {keys[0]}: {how}")
            else:  # e.g. every norm's update counter
                lines.append(f"  added {len(keys):4d}: {how} ({keys[0]}, ...)")
        left: Dict[str, List[str]] = {}
        for key, why in sorted(self.fresh.items()):
            left.setdefault(why, []).append(key)
        for why, keys in left.items():
            lines.append(
                f"  left to the model's initialisation {len(keys):4d}: {why} ({keys[0]}, ...)"
            )
        weights = [c for c in self.teacher if c.tol is None]
        if weights:
            bad = [c for c in weights if not c.ok(atol)]
            worst = max((c.diff for c in weights if c.diff is not None), default=0.0)
            lines.append(
                f"  teacher: {len(weights) - len(bad)} of {len(weights)} dropped CLIP tensors "
                f"equal MODEL.CLIP's (max |diff| {worst:.3g}, atol {atol:g})"
            )
            lines += [f"    differs: {c.official} vs {c.teacher}: {c.note}" for c in bad[:20]]
        elif self.pending:
            lines.append(
                f"  teacher: {len(self.pending)} dropped CLIP tensors not compared (give "
                "--config-file to compare them with MODEL.CLIP's)"
            )
        for c in self.teacher:
            if c.tol is not None:
                verdict = "equal" if c.ok(atol) else "DIFFERS"
                lines.append(f"  {c.official} vs {c.teacher}: {c.note} ({verdict})")
        but = " but those left to its initialisation" if self.fresh else ""
        lines.append(
            f"  checked against the config's model: every parameter present{but}, shapes equal"
            if self.checked_model
            else "  not checked against a model (give --config-file)"
        )
        lines += [f"  official model: {i}" for i in self.info]
        if self.notes:
            lines.append("  the config computes otherwise than the official model:")
            lines += [f"    - {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain types only (saved beside the weights, readable with ``weights_only``)."""
        return {
            "method": self.method,
            "used": dict(self.used),
            "dropped": dict(self.dropped),
            "added": dict(self.added),
            "fresh": dict(self.fresh),
            "teacher": [[c.official, c.teacher, c.diff, c.note] for c in self.teacher],
            "info": list(self.info),
            "notes": list(self.notes),
            "checked_model": self.checked_model,
        }


# ---------------------------------------------------------------------------- the teacher
def _resize_pos(teacher: Tensor, shape: Sequence[int]) -> Tensor:
    """A ViT's (1 + g*g, C) positional embedding resized bilinearly to ``shape``'s grid, as
    the official ZegCLIP backbone resizes CLIP's when it loads it."""
    g, big = int(round((teacher.shape[0] - 1) ** 0.5)), int(round((shape[0] - 1) ** 0.5))
    grid = teacher[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(big, big), mode="bilinear")
    return torch.cat([teacher[:1], grid.reshape(teacher.shape[1], -1).t()], dim=0)


# teacher tensor, official shape -> the teacher tensor in the official form
TEACHER_FORMS: Dict[str, Callable[[Tensor, Sequence[int]], Tensor]] = {
    "same": lambda t, shape: t,
    "reshape": lambda t, shape: t.reshape(shape),
    "conv1x1": lambda t, shape: t[:, :, None, None],  # a Linear as a 1x1 convolution
    "proj_conv": lambda t, shape: t.t()[:, :, None, None],  # CLIP's x @ proj as a 1x1 conv
    "resize_pos": _resize_pos,
}


def check_teacher(
    report: ConversionReport, official: Mapping[str, Tensor], teacher_state: Mapping[str, Tensor]
) -> None:
    """Compare every pending dropped CLIP tensor with the teacher's (into ``report.teacher``).

    Args:
        report (ConversionReport): its ``pending`` checks (from :func:`apply_rules`).
        official (Mapping[str, Tensor]): the official state dict.
        teacher_state (Mapping[str, Tensor]): ``teacher.model.state_dict()``.
    """
    for check in report.pending:
        value = official[check.official].float()
        mine = teacher_state.get(check.teacher)
        if mine is None:
            check.note = "MODEL.CLIP has no such tensor (another CLIP architecture?)"
        else:
            try:
                form = TEACHER_FORMS[check.form]
                mine = form(mine.detach().float().cpu(), tuple(value.shape))
            except RuntimeError as e:
                mine = None
                check.note = f"cannot be put in the official form: {e}"
            if mine is not None and tuple(mine.shape) != tuple(value.shape):
                check.note = f"shape {tuple(mine.shape)} vs official {tuple(value.shape)}"
            elif mine is not None:
                check.diff = float((mine - value).abs().max()) if value.numel() else 0.0
                check.note = f"max |diff| {check.diff:.3g}"
        report.teacher.append(check)
    report.pending = []


# ---------------------------------------------------------------------------- conversion
def apply_rules(
    state: Mapping[str, Tensor], rules: Sequence[Rule], report: ConversionReport
) -> Dict[str, Tensor]:
    """Rename, drop or refuse every key of ``state`` by the first rule matching it.

    Args:
        state (Mapping[str, Tensor]): official tensors (already merged where a method
            merges several into one).
        rules (Sequence[Rule]): the method's table.
        report (ConversionReport): filled with each key's fate.

    Returns:
        dict[str, Tensor]: the ovseg state dict.

    Raises:
        ConversionError: naming every key no rule matches or a rule refuses.
    """
    compiled = [(re.compile(r.pattern), r) for r in rules]
    total = len(state) + len(report.used) + len(report.dropped)  # keys merged before
    out: Dict[str, Tensor] = {}
    refused: List[str] = []
    for key in sorted(state):
        match, rule = next(((m, r) for c, r in compiled if (m := c.fullmatch(key))), (None, None))
        if rule is None:
            refused.append(f"{key} {tuple(state[key].shape)}: unexpected (no rule knows it)")
        elif rule.refuse:
            refused.append(f"{key}: {rule.why}")
        elif rule.target:
            new = match.expand(rule.target)
            if new in out:
                raise ConversionError(f"{report.method}: two official keys map to {new!r}")
            out[new] = state[key]
            report.used[key] = new
        else:
            report.drop(key, rule.why)
            if rule.teacher:
                report.pending.append(TeacherCheck(key, match.expand(rule.teacher), rule.form))
    if refused:
        unknown = sum(1 for r in refused if r.endswith("(no rule knows it)"))
        hint = f"; is it a {report.method} checkpoint?" if unknown > total // 2 else ""
        shown = refused[:30] + ([f"... and {len(refused) - 30} more"] if len(refused) > 30 else [])
        raise ConversionError(
            f"{report.method}: {len(refused)} of {total} official tensors cannot be "
            f"converted{hint}\n  " + "\n  ".join(shown)
        )
    return out


def require(converted: Mapping[str, Tensor], needed: Mapping[str, str], method: str) -> None:
    """Refuse a conversion missing a part every such checkpoint has.

    Args:
        converted (Mapping[str, Tensor]): the ovseg state dict.
        needed (Mapping[str, str]): ovseg key regex -> the official keys that give it.
        method (str): for the message.
    """
    missing = [
        f"{official} (for {pattern})"
        for pattern, official in needed.items()
        if not any(re.fullmatch(pattern, k) for k in converted)
    ]
    if missing:
        raise ConversionError(
            f"{method}: the checkpoint lacks official keys every {method} checkpoint has: "
            f"{missing}; is it a {method} checkpoint (--method)?"
        )


def fit_to_model(
    converted: Dict[str, Tensor],
    model_state: Mapping[str, Tensor],
    report: ConversionReport,
    fill: Optional[Callable[[str, Tensor], Optional[Tuple[Tensor, str]]]] = None,
    fresh: Optional[Callable[[str], Optional[str]]] = None,
) -> Dict[str, Tensor]:
    """Check the converted tensors against the model a config builds, strictly.

    Batch-norm update counters the model does not hold (frozen norms) are dropped; keys the
    official checkpoint cannot give are asked of ``fill`` (key, the model's tensor) ->
    (tensor, how) or None, then of ``fresh`` (key) -> why the model initialises it itself (a
    starting checkpoint's, e.g. heads the official run also builds fresh) or None; those are
    left out of the result.

    Raises:
        ConversionError: naming missing keys, unexpected keys and shape mismatches.
    """
    for key in [k for k in converted if k not in model_state]:
        if key.endswith("num_batches_tracked"):
            official = next(o for o, n in report.used.items() if n == key)
            del converted[key], report.used[official]
            report.drop(official, "batch-norm update counter: the model's norm is frozen")
    for key in [k for k in model_state if k not in converted and fill is not None]:
        made = fill(key, model_state[key])
        if made is not None:
            converted[key], report.added[key] = made
    for key in [k for k in model_state if k not in converted and fresh is not None]:
        why = fresh(key)
        if why:
            report.fresh[key] = why
    missing = sorted(k for k in model_state if k not in converted and k not in report.fresh)
    unexpected = sorted(k for k in converted if k not in model_state)
    shapes = [
        f"{k}: official {tuple(converted[k].shape)} vs model {tuple(model_state[k].shape)}"
        for k in sorted(set(converted) & set(model_state))
        if tuple(converted[k].shape) != tuple(model_state[k].shape)
    ]
    problems = [f"missing in the official checkpoint: {k}" for k in missing]
    problems += [f"not in the config's model: {k}" for k in unexpected]
    problems += [f"shape differs: {s}" for s in shapes]
    if problems:
        raise ConversionError(
            f"{report.method}: the converted checkpoint does not fit the config's model "
            f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )
    report.checked_model = True
    return {k: converted[k].to(model_state[k].dtype) for k in model_state if k in converted}


# ---------------------------------------------------------------------------- files
def load_official(path: str) -> Dict[str, Tensor]:
    """The state dict of an official (mmseg/mmcv) checkpoint, read without unpickling code.

    Args:
        path (str): ``{"meta": ..., "state_dict": {...}}``, detectron2's ``{"model": {...},
            ...}`` or a bare state dict.

    Returns:
        dict[str, Tensor]: CPU tensors; a ``module.`` prefix (DataParallel) is removed.
    """
    if not os.path.isfile(path):
        what = "is a folder; give the checkpoint file in it" if os.path.isdir(path) else ""
        raise FileNotFoundError(f"official checkpoint {path!r} {what or 'does not exist'}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling refusal reads the same to a user
        if not looks_like_a_checkpoint(path):
            raise ConversionError(
                f"{path} is not a PyTorch checkpoint (neither the zip archive torch.save "
                "writes nor a pickle); give the official .pth / .ckpt file"
            ) from None
        # torch's own text is a page of advice about its default: keep only its reason
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if ln.startswith(("Unsupported", "Unpickler"))), "")
        reason = reason or (lines[0] if lines else type(e).__name__)
        raise ConversionError(
            f"{path} cannot be read with torch.load(weights_only=True) (no arbitrary "
            f"unpickling; {reason[:200]}); is it a PyTorch checkpoint? If it is one you trust, "
            "load it yourself and re-save its 'state_dict' alone"
        ) from e
    state = None
    if isinstance(data, dict):  # mmcv's "state_dict", detectron2's "model" (FreeSeg), or bare
        state = data.get("state_dict", data.get("model", data))
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(
            f"{path} holds no state dict of tensors ('state_dict', 'model' or bare)"
        )
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def save_converted(path: str, state: Mapping[str, Tensor], report: ConversionReport) -> None:
    """Write a detectron2 checkpoint ``{"model": state, "conversion": report}`` atomically,
    with the record of its contents every ovseg load checks (a changed file is refused, as a
    run's checkpoint is: ``ovseg.engine.checkpoint_digest``)."""
    from ..engine.checkpoint_digest import DIGEST_KEY, content_digests
    from ..engine.checkpoint_fit import META_KEY

    data: Dict[str, Any] = {"model": dict(state), "conversion": report.to_dict(), META_KEY: {}}
    data[META_KEY][DIGEST_KEY] = content_digests(data, META_KEY)
    atomic_write(path, lambda f: torch.save(data, f))
