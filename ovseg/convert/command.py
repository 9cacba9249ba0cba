"""Convert an official checkpoint into an ovseg one: the job behind tools/convert_checkpoint.py.

Methods: ``zegclip``, ``maskclip_plus``, ``lseg``, ``freeseg`` and ``xpm`` (trained official
models; XPM's teacher or student, told apart by their keys),
``resnet_v1c`` (the ImageNet ResNetV1c the official MaskCLIP+ students start from; a backbone-
only checkpoint for MODEL.WEIGHTS), ``ovrcnn`` (OVR-CNN's caption pre-training, where the
official XPM teacher starts: its MODEL.WEIGHTS; the heads it lacks are left to the model).
Without a config the official names are converted alone.
With ``--config-file`` the model that config builds (on CPU, its CLIP teacher loaded from
MODEL.CLIP; for ``resnet_v1c`` its backbone alone) checks the result strictly: every ovseg
parameter present, nothing left over, shapes equal; the official checkpoint's frozen CLIP
tensors are compared with the teacher's; MaskCLIP+'s fixed text classifier is compared with the
teacher's embeddings of the test vocabulary (XPM's student: its BERT word embeddings with
MODEL.XPM.BERT_NAME's); settings that leave the official weights no place
are refused (with the key to set), and settings under which the same weights would compute
otherwise than the official model are listed. Any mismatch fails with a message naming it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

from torch import Tensor

from ..utils.cli import parse_trailing_opts, run_reporting_errors
from ..utils.io import atomic_write_json, check_output_file
from . import freeseg, lseg, maskclip_plus, ovrcnn, resnet_v1c, xpm, zegclip
from .core import (
    ConversionError,
    ConversionReport,
    check_teacher,
    fit_to_model,
    load_official,
    save_converted,
)

__all__ = ["METHODS", "Method", "convert_checkpoint", "main", "parse_args", "run"]


@dataclass(frozen=True)
class Method:
    """How one method's official checkpoints convert.

    Attributes:
        meta_architecture (str): the ovseg MODEL.META_ARCHITECTURE the result loads into
            ("": any, the result being a backbone's).
        convert: official state dict -> (ovseg state dict, report).
        settings: (cfg, model, converted, report) -> None; refuses settings, adds notes.
        fill: (key, model tensor) -> (tensor, how) or None, for keys the official lacks.
        check_text: (official, model, names, report) -> None, or None.
        build: cfg -> the module the result is checked against (default: the whole model).
        part (str): the prefix of the model's keys the result gives ("": every key).
        check_official: (official, cfg, model, report) -> None: refuses what the official
            tensors show the config cannot compute, or None.
        fresh: key -> why the model initialises it itself (a starting checkpoint's parts the
            official run builds fresh) or None; such keys are left out of the result.
    """

    meta_architecture: Union[str, Tuple[str, ...]]
    convert: Callable[[Mapping[str, Tensor]], Tuple[Dict[str, Tensor], ConversionReport]]
    settings: Callable
    fill: Optional[Callable] = None
    check_text: Optional[Callable] = None
    build: Optional[Callable] = None
    part: str = ""
    check_official: Optional[Callable] = None
    fresh: Optional[Callable] = None


METHODS: Dict[str, Method] = {
    "zegclip": Method("ZegCLIP", zegclip.convert_zegclip, zegclip.zegclip_settings),
    "freeseg": Method("FreeSeg", freeseg.convert_freeseg, freeseg.freeseg_settings),
    "lseg": Method("LSeg", lseg.convert_lseg, lseg.lseg_settings),
    "maskclip_plus": Method(
        "MaskCLIPPlus",
        maskclip_plus.convert_maskclip_plus,
        maskclip_plus.maskclip_plus_settings,
        fill=maskclip_plus.fill_maskclip_plus,
        check_text=maskclip_plus.check_text,
    ),
    "xpm": Method(
        ("XPMTeacher", "XPMStudent"),
        xpm.convert_xpm,
        xpm.xpm_settings,
        fill=xpm.fill_xpm,
        check_text=xpm.check_bert,
        check_official=xpm.check_anchors,
    ),
    "ovrcnn": Method(
        "XPMTeacher",
        ovrcnn.convert_ovrcnn,
        ovrcnn.ovrcnn_settings,
        check_text=ovrcnn.check_ovrcnn_bert,
        fresh=ovrcnn.fresh_ovrcnn,
    ),
    "resnet_v1c": Method(
        "",
        resnet_v1c.convert_resnet_v1c,
        resnet_v1c.resnet_v1c_settings,
        fill=resnet_v1c.fill_counters,
        build=resnet_v1c.build_backbone_only,
        part="backbone.",
    ),
}


def build_target(cfg):
    """The model ``cfg`` builds, on CPU, in eval mode (weights: random, teacher: MODEL.CLIP)."""
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg).eval()


def convert_checkpoint(
    method: str,
    official: Mapping[str, Tensor],
    cfg=None,
    *,
    atol: float = 1e-4,
    allow_teacher_mismatch: bool = False,
    text_check: bool = True,
    model=None,
) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Convert an official state dict, checked against ``cfg``'s model when given.

    Args:
        method (str): a key of :data:`METHODS`.
        official (Mapping[str, Tensor]): the official ``state_dict``.
        cfg (CfgNode, optional): the ovseg config the result is for.
        atol (float): tolerance of the frozen CLIP tensors against MODEL.CLIP's.
        allow_teacher_mismatch (bool): report, instead of refusing, CLIP tensors (or text
            embeddings) that differ from the teacher's.
        text_check (bool): compare MaskCLIP+'s text classifier (embeds the vocabulary) and
            XPM's BERT word embeddings.
        model (nn.Module, optional): the model ``cfg`` builds (for ``resnet_v1c``: any
            module holding the backbone as ``.backbone``), if already built.

    Returns:
        tuple: the ovseg state dict, the :class:`ConversionReport`.
    """
    if method not in METHODS:
        raise ValueError(f"--method {method!r} is not one of {sorted(METHODS)}")
    spec = METHODS[method]
    arch = spec.meta_architecture
    archs = (arch,) if isinstance(arch, str) else arch
    if cfg is not None and arch and cfg.MODEL.META_ARCHITECTURE not in archs:
        raise ConversionError(
            f"--method {method} converts into MODEL.META_ARCHITECTURE "
            f"{' or '.join(map(repr, archs))}; the config builds {cfg.MODEL.META_ARCHITECTURE!r}"
        )
    converted, report = spec.convert(official)
    if cfg is None:
        return converted, report
    model = (spec.build or build_target)(cfg) if model is None else model
    spec.settings(cfg, model, converted, report)
    if spec.check_official is not None:
        spec.check_official(official, cfg, model, report)
    target = {k: v for k, v in model.state_dict().items() if k.startswith(spec.part)}
    converted = fit_to_model(converted, target, report, spec.fill, spec.fresh)
    if report.pending:
        check_teacher(report, official, model.teacher.model.state_dict())
    if text_check and spec.check_text is not None:
        spec.check_text(official, model, model.vocabulary or (), report)
    bad = [c for c in report.teacher if not c.ok(atol)]
    if bad and not allow_teacher_mismatch:
        raise ConversionError(
            f"{report.method}: {len(bad)} frozen tensor(s) of the official checkpoint differ "
            "from the config's (its CLIP teacher MODEL.CLIP, or XPM's MODEL.XPM.BERT_NAME), so "
            "the converted model would see another one (--allow-teacher-mismatch converts "
            "anyway):\n  " + "\n  ".join(f"{c.official} vs {c.teacher}: {c.note}" for c in bad[:20])
        )
    return converted, report


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Convert an official ZegCLIP or MaskCLIP+ checkpoint (mmseg .pth), LSeg's, "
        "FreeSeg's or XPM's (maskrcnn_benchmark), OVR-CNN's caption pre-training, or the "
        "ImageNet ResNetV1c the official MaskCLIP+ students start from (mmcv .pth), into an "
        "ovseg checkpoint (detectron2 {'model': state_dict})."
    )
    p.add_argument("--method", required=True, choices=sorted(METHODS))
    p.add_argument("--input", required=True, help="the official checkpoint (.pth)")
    p.add_argument("--output", required=True, help="the ovseg checkpoint to write (.pth)")
    p.add_argument(
        "--config-file", default="",
        help="the ovseg config the checkpoint is for: checks it against that model (for "
        "resnet_v1c: its backbone) and compares the dropped CLIP weights with its MODEL.CLIP",
    )  # fmt: skip
    p.add_argument("--atol", type=float, default=1e-4, help="CLIP weights' tolerance")
    p.add_argument("--allow-teacher-mismatch", action="store_true")
    p.add_argument(
        "--no-text-check", action="store_true",
        help="skip embedding the vocabulary to compare MaskCLIP+'s text classifier (and "
        "loading MODEL.XPM.BERT_NAME to compare XPM's BERT word embeddings)",
    )  # fmt: skip
    p.add_argument("--report", default="", help="also write the per-tensor report (JSON)")
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs (or after --opts)"
    )
    return parse_trailing_opts(p, argv)


def run(args: argparse.Namespace) -> ConversionReport:
    """Convert ``args.input`` into ``args.output`` and print the report."""
    cfg = None
    if args.config_file:
        from ..engine.defaults import load_config

        cfg = load_config(args.config_file, args.opts)
    elif args.opts:
        raise ValueError(f"config overrides {args.opts} need --config-file")
    check_output_file(args.output, ".pth")  # before the conversion, not after it
    check_output_file(args.report, ".json", "--report")
    state, report = convert_checkpoint(
        args.method,
        load_official(args.input),
        cfg,
        atol=args.atol,
        allow_teacher_mismatch=args.allow_teacher_mismatch,
        text_check=not args.no_text_check,
    )
    save_converted(args.output, state, report)
    if args.report:
        atomic_write_json(args.report, report.to_dict())
    print(report.summary(args.atol))
    print(f"wrote {len(state)} tensors to {args.output}")
    return report


def main(argv=None) -> int:
    """The command line; a checkpoint that cannot be converted ends it with the reason
    (exit status 2)."""
    args = parse_args(argv)
    return run_reporting_errors("convert_checkpoint.py", lambda: run(args))
