# Follows the command line of Mask2Former's demo/demo.py, re-written; vocabulary flags as in
# the SAN and CAT-Seg demos.
"""Segment images with any vocabulary and draw the result.

Example (no training needed: MaskCLIP from a frozen CLIP)::

    python demo/demo.py --config-file configs/voc/maskclip/maskclip_vitb16_bs1.yaml \\
        --input photos/ "more/*.jpg" --output out/ --custom-vocabulary "cat,dog,grass" --heatmaps

Per image ``<stem>`` the output folder receives ``<stem>_overlay.png`` (class names drawn),
``<stem>_label.png`` (vocabulary index per pixel; 255 = below --confidence-threshold; uint16
with 65535 for vocabularies of more than 255 names; with --background-threshold or
--augment-vocabulary the indices are of the names the log's "Label PNG values" line lists,
"background" and "other" among them) and, with --heatmaps,
``<stem>_heatmaps.png``. With one input, --output may name the overlay file instead.
A vocabulary gives synonyms as ``"pickup truck, truck; sky"`` (classes separated by ``;``);
``--augment-vocabulary coco171`` adds a builtin list's classes, drawn as "other";
``--background-threshold 0.5`` labels "background" where no class reaches 0.5.
``--task instance`` / ``--task panoptic`` draw a model's "instances" / "panoptic_seg" output
(detectron2's draw_instance_predictions / draw_panoptic_seg) into the overlay only; a model
that does not predict them is refused before any image.

Exit status: 0 when every image was written; 1 when some input could not be read (each is
reported, the others are still processed); 2 for a bad command line, config, vocabulary or
output path (reported before any image is processed).
"""

from __future__ import annotations

import argparse
import difflib
import glob
import logging
import os
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

# isort: off
# ovseg first: it registers datasets, mappers and models, and imports detectron2 without the
# torch.jit deprecation warnings of fvcore's import (ovseg/__init__.py)
import ovseg  # noqa: F401

# isort: on
import numpy as np
import tqdm
from predictor import TASK_OUTPUTS, VisualizationDemo

from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

from ovseg.clip.templates import TEMPLATE_SETS, get_templates
from ovseg.data.image_io import read_image
from ovseg.engine.defaults import load_config
from ovseg.modeling.vocabulary_scores import VocabularyPlan
from ovseg.utils.cli import parse_opts_flag
from ovseg.utils.visualization import save_image
from ovseg.vocab import (
    Vocabulary,
    builtin_vocabulary_names,
    one_class_warning,
    resolve_vocabulary,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
OUTPUT_FILE_EXTENSIONS = (".png", ".jpg", ".jpeg")

logger = logging.getLogger("demo")


class UsageError(Exception):
    """A problem with the command line, found before any image is processed (exit 2)."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="an ovseg config")
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="image files, folders (their images, not recursive) or quoted glob patterns",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="a folder for the outputs, or with a single input the overlay's file (.png/.jpg)",
    )
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument(
        "--vocabulary",
        metavar="NAME",
        help=f"a builtin vocabulary ({', '.join(builtin_vocabulary_names())}) or a .json "
        "file; default: the config's MODEL.OVSEG.TEST_VOCABULARY or DATASETS.TEST classes",
    )
    vocab.add_argument(
        "--custom-vocabulary",
        "--custom_vocabulary",
        dest="custom_vocabulary",
        metavar="NAMES",
        help='class names, e.g. "cat,dog,grass"; with synonyms, classes separated by ";" '
        'and a class\'s synonyms by ",": "pickup truck, truck; sky"',
    )
    parser.add_argument(
        "--augment-vocabulary",
        metavar="NAME",
        help="add a builtin vocabulary's classes (e.g. coco171) for open-ended scenes; "
        "pixels they win are labelled 'other'",
    )
    parser.add_argument(
        "--background-threshold",
        type=float,
        default=0.0,
        help="in (0, 1]: pixels whose best class probability is below this are labelled "
        "'background' (the vocabulary's own, else added first), which is not embedded; "
        "0 (the default): no background",
    )
    parser.add_argument(
        "--templates",
        help=f"prompt templates: {', '.join(TEMPLATE_SETS)} or a .json list "
        "(sets MODEL.CLIP.TEMPLATES; default: the config's)",
    )
    parser.add_argument(
        "--task",
        choices=sorted(TASK_OUTPUTS),
        default="semantic",
        help="what to draw: the semantic labels (default), the model's instances or its "
        "panoptic segments (models that output them; overlays only)",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.0,
        help="pixels whose largest class probability is below this are left unlabelled "
        "(default 0: none)",
    )
    parser.add_argument(
        "--heatmaps",
        action="store_true",
        help="also draw, per name, the CLIP teacher's pixel-text similarity",
    )
    parser.add_argument(
        "--min-overlay-size",
        type=int,
        default=320,
        help="enlarge overlays of smaller images to this short side, so names stay "
        "readable (default 320)",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth",
    )
    return parser


def expand_inputs(patterns: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Files named by --input, in order, each once.

    Args:
        patterns: files, folders or glob patterns.

    Returns:
        tuple: (image paths, [(pattern, problem)] for patterns naming nothing). Named files
        are kept whatever their extension, so an unreadable one is reported when read.
    """
    paths, problems = [], []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, n)
                for n in os.listdir(pattern)
                if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")
            )
            if not found:
                problems.append((pattern, f"folder holds no {'/'.join(IMAGE_EXTENSIONS)} image"))
        elif glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
            if not found:
                problems.append((pattern, "glob pattern matches no file"))
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            found = []
            problems.append((pattern, "no such file or folder"))
        paths.extend(found)
    unique = list(dict.fromkeys(os.path.normpath(p) for p in paths))
    return unique, problems


def _stems(paths: Sequence[str]) -> List[str]:
    """Output names per input: the file stem, prefixed by its folder's name where two clash."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    clashing = {s for s in stems if stems.count(s) > 1}
    names = [
        f"{os.path.basename(os.path.dirname(os.path.abspath(p)))}_{s}" if s in clashing else s
        for p, s in zip(paths, stems)
    ]
    seen: Dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


def plan_outputs(output: str, paths: Sequence[str], heatmaps: bool) -> Dict[str, Dict[str, str]]:
    """Decide every output file and check the destination is writable.

    Returns:
        dict: input path -> {"overlay", "label"[, "heatmaps"]} output paths.
    """
    as_file = output.lower().endswith(OUTPUT_FILE_EXTENSIONS) and not os.path.isdir(output)
    if output.lower().endswith(IMAGE_EXTENSIONS + (".gif",)) and not (
        as_file or os.path.isdir(output)
    ):  # out.webp would be made a folder of that name
        raise UsageError(
            f"--output {output!r} names an image file the demo does not write; an overlay "
            f"file is {'/'.join(OUTPUT_FILE_EXTENSIONS)}, or give a folder"
        )
    if as_file and len(paths) != 1:
        raise UsageError(
            f"--output {output!r} names a file, but {len(paths)} inputs were given; give a "
            "folder for several inputs"
        )
    folder = os.path.dirname(os.path.abspath(output)) if as_file else output
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"--output: {folder!r} exists and is not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".tmp-write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"--output: cannot write into {folder!r} ({e})") from None
    plans = {}
    for path, stem in zip(paths, _stems(paths)):
        if as_file:
            root, _ = os.path.splitext(output)
            plan = {"overlay": output, "label": root + "_label.png"}
            base = root
        else:
            base = os.path.join(folder, stem)
            plan = {"overlay": base + "_overlay.png", "label": base + "_label.png"}
        if heatmaps:
            plan["heatmaps"] = base + "_heatmaps.png"
        plans[path] = plan
    # an output written over an input (the input itself, or a file the folder's listing took
    # in, such as an earlier run's overlay): refused before any is written
    inputs = {os.path.realpath(p) for p in paths}
    for plan in plans.values():
        for written in plan.values():
            if os.path.realpath(written) in inputs:
                raise UsageError(
                    f"--output would write {written}, which is an input; give an output "
                    "folder apart from the inputs"
                )
    return plans


def demo_vocabulary(args: argparse.Namespace, cfg) -> Vocabulary:
    """The vocabulary asked for on the command line, else the config's test vocabulary."""
    try:
        if args.custom_vocabulary is not None:
            return Vocabulary.from_string(args.custom_vocabulary)
        if args.vocabulary is not None:
            spec, builtins = args.vocabulary, builtin_vocabulary_names()
            if "," in spec or ";" in spec:
                raise ValueError(
                    f"--vocabulary {spec!r} looks like a list of names; use "
                    "--custom-vocabulary for those"
                )
            if spec not in builtins and not spec.lower().endswith(".json"):
                if not os.path.isfile(spec):  # "ade15": a builtin misspelt, or one class
                    close = difflib.get_close_matches(spec, builtins, n=1, cutoff=0.75)
                    raise ValueError(
                        f"--vocabulary {spec!r} is neither a builtin ({', '.join(builtins)}) "
                        f"nor a .json file{f' (did you mean {close[0]!r}?)' if close else ''}. "
                        f"Class names go to --custom-vocabulary: '{spec},...'"
                    )
            return resolve_vocabulary(spec)
        meta = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
        if not cfg.MODEL.OVSEG.TEST_VOCABULARY.strip() and meta is None:
            raise ValueError(
                "the config sets neither MODEL.OVSEG.TEST_VOCABULARY nor DATASETS.TEST; give "
                "--vocabulary NAME or --custom-vocabulary 'a,b,c'"
            )
        try:
            return resolve_vocabulary(cfg.MODEL.OVSEG.TEST_VOCABULARY, meta)
        except ValueError as e:
            raise ValueError(
                f"{e}; or give --vocabulary NAME / --custom-vocabulary 'a,b'"
            ) from None
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"vocabulary: {e}") from None


def setup_cfg(args: argparse.Namespace):
    """The config of the run: file, --templates, --opts (errors as UsageError)."""
    try:
        cfg = load_config(args.config_file, args.opts)
        if args.templates:
            get_templates(args.templates)  # fails here, with the sets it knows
            cfg.MODEL.CLIP.TEMPLATES = args.templates
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise UsageError(f"config: {e}") from None
    cfg.freeze()
    return cfg


def check_task(demo: VisualizationDemo, task: str, names: Sequence[str], cfg) -> None:
    """Refuse a task the model cannot draw, before any image: one probe on a blank image."""
    if task == "semantic":
        return
    key = TASK_OUTPUTS[task]
    size = max(32, cfg.INPUT.MIN_SIZE_TEST or 32)
    output = demo.predictor.raw_output(np.zeros((size, size, 3), np.uint8), names)
    if key not in output:
        raise UsageError(
            f"--task {task}: {cfg.MODEL.META_ARCHITECTURE} outputs only {sorted(output)}, "
            f"no {key!r}; it cannot draw {task} predictions. Use --task semantic, or a model "
            f"that predicts {key!r}"
        )


def vocabulary_plan(args: argparse.Namespace, names) -> VocabularyPlan:
    """The demo's words: the vocabulary, augmented and with a background when asked."""
    if not 0.0 <= args.background_threshold <= 1.0:
        raise UsageError(
            f"--background-threshold {args.background_threshold} is not in [0, 1] (0: none)"
        )
    try:
        return VocabularyPlan.make(names, args.augment_vocabulary, args.background_threshold)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"vocabulary: {e}") from None


def run(args: argparse.Namespace) -> int:
    """The demo without the argument parsing; returns the exit status."""
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise UsageError(f"--confidence-threshold {args.confidence_threshold} is not in [0, 1]")
    cfg = setup_cfg(args)
    vocabulary = demo_vocabulary(args, cfg)
    words = vocabulary_plan(args, vocabulary.names)  # a misspelt list: before the model loads
    if not words.identity and args.task != "semantic":
        raise UsageError("--augment-vocabulary and --background-threshold need --task semantic")
    paths, failures = expand_inputs(args.input)
    for pattern, problem in failures:
        logger.error("--input %s: %s", pattern, problem)
    if not paths:
        raise UsageError(f"--input {' '.join(args.input)}: no image found")
    plans = plan_outputs(args.output, paths, args.heatmaps)
    logger.info(
        "Vocabulary of %d classes: %s%s",
        len(vocabulary),
        "; ".join(vocabulary.names[:20]),
        " ..." if len(vocabulary) > 20 else "",
    )
    if one_class_warning(vocabulary.names):
        logger.warning(one_class_warning(vocabulary.names, "The demo's vocabulary"))
    try:
        demo = VisualizationDemo(
            cfg,
            confidence_threshold=args.confidence_threshold,
            min_overlay_size=args.min_overlay_size,
        )
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as e:
        raise UsageError(f"could not build the model of {args.config_file}: {e}") from None
    if args.heatmaps and demo.predictor.teacher is None:
        raise UsageError(
            f"--heatmaps needs a CLIP teacher, and {cfg.MODEL.META_ARCHITECTURE} holds none; "
            "run without --heatmaps"
        )

    names, unseen = vocabulary.names, vocabulary.unseen
    check_task(demo, args.task, names, cfg)
    names = words.names
    if args.task == "semantic" and list(names) != list(vocabulary.names):
        # background / "other" moved the indices: say what each label PNG value means
        shown = ", ".join(f"{i} {n}" for i, n in enumerate(names[:30]))
        logger.info("Label PNG values: %s%s", shown, " ..." if len(names) > 30 else "")
    written = 0
    for path in tqdm.tqdm(paths, disable=len(paths) < 2, desc="demo", unit="image"):
        try:
            image = read_image(path, format=cfg.INPUT.FORMAT)
        except (OSError, ValueError) as e:
            logger.error("Skipping %s: not a readable image (%s)", path, e)
            failures.append((path, str(e)))
            continue
        start = time.perf_counter()
        plan = plans[path]
        try:
            _write_one(demo, args, image, plan, names, unseen, words)
        except Exception as e:  # one image the model cannot take (a 3x500 strip): the next
            logger.error("Skipping %s: %s: %s", path, type(e).__name__, e)
            failures.append((path, f"{type(e).__name__}: {e}"))
            continue
        written += 1
        logger.info(
            "%s: %dx%d in %.2fs -> %s",
            path,
            image.shape[1],
            image.shape[0],
            time.perf_counter() - start,
            plan["overlay"],
        )
    logger.info("Wrote %d of %d images", written, written + len(failures))
    if failures:
        logger.error("%d input(s) failed: %s", len(failures), ", ".join(p for p, _ in failures))
        return 1
    return 0


def _write_one(demo, args, image, plan, names, unseen, words) -> None:
    """Predict one image and write its overlay, label PNG (semantic) and heatmaps."""
    if args.task == "semantic":
        predictions, overlay = demo.run_on_image(image, names, unseen=unseen, plan=words)
        save_image(plan["label"], predictions["label"])
    else:
        output = demo.predictor.raw_output(image, names)
        overlay = demo.draw_prediction(image, output, names, args.task, unseen=unseen)
    save_image(plan["overlay"], overlay.get_image())
    if args.heatmaps:
        picture, _ = demo.heatmaps(image, words.model_names[: words.num_user])
        save_image(plan["heatmaps"], picture, palette=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the exit status is returned (see the module docstring)."""
    args = parse_opts_flag(get_parser(), argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    setup_logger(name="demo", abbrev_name="demo")
    setup_logger(name="ovseg")
    sys.exit(main())
