"""Export a student with a fixed vocabulary to ONNX and check it against PyTorch.

    python tools/export_onnx.py --config-file configs/toy/lseg_toyrn_400_bs8.yaml \\
        --weights output/toy/lseg_toyrn_400_bs8/model_final.pth \\
        --vocabulary "background, circle, square, triangle" --output lseg_toy.onnx

The graph maps ``image`` (B, 3, H, W) float32 in [0, 255] (the config's INPUT.FORMAT order)
to ``scores`` (B, K, H, W) over the vocabulary, whose text embeddings are baked in; the
batch axis is dynamic, H and W are --input-size. After writing, the file is run by
onnxruntime on seeded random images (and --image, resized to the input size) and compared
with the PyTorch model's own test path; the largest absolute difference is printed, and
the command fails when it exceeds --atol: then nothing is written to --output (a file
already there stays) and the failing graph is kept as ``<name>.unverified.onnx`` beside it.
Needs the export extra:
``pip install -e ".[export]"``. Opset, axes and which students export: docs/export.md.

Exit status: 0 written and checked; 1 the check failed; 2 a bad command line, config or a
student that cannot be exported (said why).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from ovseg.api import Predictor, _vocabulary
from ovseg.data.image_io import read_image
from ovseg.export import DEFAULT_OPSET, compare_with_onnxruntime, export_blocker, export_onnx
from ovseg.utils.cli import USER_ERRORS, parse_opts_flag
from ovseg.utils.io import check_output_file

logger = logging.getLogger("export_onnx")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", required=True, help="a config file, or a path under configs/")
    p.add_argument(
        "--weights",
        help="checkpoint (default: the config's MODEL.WEIGHTS; MaskCLIP needs none)",
    )
    p.add_argument(
        "--vocabulary",
        required=True,
        help='the fixed class names ("cat, dog, grass"), a builtin vocabulary or a .json file',
    )
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="the graph's input size (default: INPUT.MIN_SIZE_TEST square)",
    )
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset, 18 or later (default 18)"
    )
    p.add_argument("--image", help="also compare on this image (resized to the input size)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted difference")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides")
    return p


def check_images(size, image: Optional[str], fmt: str, seed: int = 0) -> np.ndarray:
    """(B, 3, H, W) float32 0-255: two seeded random images, then ``image`` resized."""
    import cv2

    h, w = size
    images = list(np.random.default_rng(seed).integers(0, 256, (2, 3, h, w)))
    if image:
        rgb = cv2.resize(read_image(image, format=fmt), (w, h), interpolation=cv2.INTER_AREA)
        images.append(rgb.transpose(2, 0, 1))
    return np.stack(images).astype(np.float32)


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_parser()
    args = parse_opts_flag(parser, argv)
    # onnxscript's optimiser logs every pass at INFO: only our own progress at INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        parser.error(f'{e.name} is missing: pip install -e ".[export]"')
    # what would fail after the export (and leave its file behind) is checked before it
    try:
        check_output_file(args.output, ".onnx")
    except OSError as e:
        parser.error(str(e))
    if not args.atol >= 0:
        parser.error(f"--atol {args.atol}: give the largest accepted difference (>= 0)")
    if args.opset < DEFAULT_OPSET:
        parser.error(
            f"--opset {args.opset}: the exporter writes opset {DEFAULT_OPSET} or later "
            "(docs/export.md); give one of those"
        )
    if args.image and not Path(args.image).is_file():
        parser.error(f"--image {args.image} is not a file; give an image to compare on")
    if args.image:  # decoded now: a file that is no image fails before the export
        try:
            read_image(args.image)
        except (OSError, ValueError) as e:
            parser.error(f"--image: {e}")
    try:
        names = _vocabulary(args.vocabulary)
        predictor = Predictor(args.config_file, args.weights, device="cpu", opts=args.opts)
    except (*USER_ERRORS, KeyError) as e:
        parser.error(str(e))
    model, cfg = predictor.model, predictor.cfg
    reason = export_blocker(model)
    if reason is not None:
        parser.error(reason)
    trainable = any(p.requires_grad for p in model.parameters())
    if trainable and not (args.weights or cfg.MODEL.WEIGHTS):
        logger.warning("No weights loaded: the student's trainable parts are random-init")
    size = tuple(args.input_size or (cfg.INPUT.MIN_SIZE_TEST,) * 2)
    if min(size) <= 0:
        parser.error(f"input size {size}: give --input-size H W (positive)")
    # the graph reaches --output only once checked: a file there is one that passed (and an
    # older file there survives a failed export); a failing graph is kept beside it to inspect
    output = Path(args.output)
    candidate = failed_path(output)
    try:
        wrapper = export_onnx(
            model, names, candidate, size=size, input_format=cfg.INPUT.FORMAT, opset=args.opset
        )
    except OSError as e:  # an --output folder that cannot be written
        parser.error(str(e).replace(str(candidate), str(output)))
    images = check_images(size, args.image, cfg.INPUT.FORMAT)
    diff = compare_with_onnxruntime(wrapper, candidate, images)
    mb = candidate.stat().st_size / 2**20
    summary = (
        f"({mb:.1f} MiB, opset {args.opset}, input (B, 3, {size[0]}, {size[1]}), {len(names)} "
        f"classes, scores: {model.sem_seg_scores}); onnxruntime vs PyTorch on {len(images)} "
        f"images: max abs difference {diff:.3g}"
    )
    if not diff <= args.atol:
        print(f"Exported {summary}", file=sys.stderr)
        print(
            f"FAILED: {diff:.3g} exceeds --atol {args.atol}; nothing was written to {output}, "
            f"the failing graph is kept for inspection at {candidate}",
            file=sys.stderr,
        )
        return 1
    os.replace(candidate, output)
    print(f"Wrote {output} {summary}")
    return 0


def failed_path(output: Path) -> Path:
    """Where the graph is written before its check (and kept when the check fails)."""
    return output.with_name(f"{output.stem}.unverified{output.suffix or '.onnx'}")


if __name__ == "__main__":
    sys.exit(main())
