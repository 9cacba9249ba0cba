"""Config checks run at set-up, before a model is built or anything is written.

A misspelt dataset name or a nonsensical solver value would otherwise surface late (an
unknown ``DATASETS.TEST`` name after training has finished) or not at all (``MAX_ITER -5``
trains nothing and exits 0), and a missing optional extra only once the model is built.
:func:`check_config` refuses them while the run costs nothing.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from typing import Callable, List, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.datasets.common import DATASETS_README, closest_datasets, datasets_root
from ..utils.downloads import local_weights_problem
from ..utils.io import check_output_file, make_output_folder
from ..utils.locks import FolderLock
from .resume import check_resume_target, last_checkpoint_name
from .value_checks import check_values

__all__ = [
    "UnknownDatasetError",
    "check_config",
    "check_data_folders",
    "check_dataset_names",
    "check_extras",
    "check_run_files",
    "check_run_target",
    "check_solver",
    "check_values",
    "check_vocabularies",
    "closest_datasets",
    "give_back_run_folder",
    "hold_run_folder",
]

RUN_LOCK = ".training.lock"
# held until the process ends, with the folders hold_run_folder made
_RUN_LOCKS: List[Tuple[FolderLock, List[str]]] = []


class UnknownDatasetError(KeyError, ValueError):
    """A dataset name that is not registered: a KeyError for lookups, a ValueError (a user's
    mistake) for the tools, and printed as its message, not as KeyError's quoted repr."""

    __str__ = BaseException.__str__


logger = logging.getLogger(__name__)

# (key, test, what the value must be); keys are read from cfg.SOLVER
_SOLVER_RULES: List[tuple[str, Callable[[float], bool], str]] = [
    ("MAX_ITER", lambda v: v > 0, "a positive number of iterations"),
    ("BASE_LR", lambda v: v > 0, "a positive learning rate"),
    ("IMS_PER_BATCH", lambda v: v > 0, "a positive number of images per batch"),
    ("CHECKPOINT_PERIOD", lambda v: v > 0, "a positive number of iterations"),
    ("WARMUP_ITERS", lambda v: v >= 0, "a number of iterations >= 0"),
    ("WARMUP_FACTOR", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("GAMMA", lambda v: v > 0, "a positive factor"),
    ("MOMENTUM", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("WEIGHT_DECAY", lambda v: v >= 0, ">= 0"),
    ("POLY_LR_POWER", lambda v: v >= 0, ">= 0"),
    ("ACCUMULATE_STEPS", lambda v: v >= 1 and v == int(v), "a whole number of batches >= 1"),
    # ovseg's: a negative multiplier would make its parameters climb the loss
    ("BACKBONE_MULTIPLIER", lambda v: v >= 0, ">= 0 (0 freezes the backbone)"),
    ("LR_MULTIPLIER", lambda v: v >= 0, ">= 0"),
    ("WEIGHT_DECAY_EMBED", lambda v: v >= 0, ">= 0"),
    ("POLY_LR_CONSTANT_ENDING", lambda v: 0 <= v <= 1, "a fraction of the base lr in [0, 1]"),
]


def check_dataset_names(cfg: CfgNode) -> None:
    """Refuse a ``DATASETS.TRAIN``/``DATASETS.TEST`` name that is not registered.

    Raises:
        KeyError: naming the key, the name and the registered names that come closest.
    """
    registered = DatasetCatalog.list()
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS.get(key, ()):
            if name in registered:
                continue
            raise UnknownDatasetError(
                f"DATASETS.{key} names {name!r}, which is not a registered dataset; "
                f"{closest_datasets(name)}. "
                "Fix the name, or register the dataset (ovseg/data/datasets/, datasets/README.md)"
            )


def check_solver(cfg: CfgNode) -> None:
    """Refuse solver values no training run can mean (MAX_ITER <= 0, BASE_LR <= 0, ...).

    Raises:
        ValueError: naming every offending key, its value and what it must be.
    """
    problems = []
    for key, ok, must in _SOLVER_RULES:
        value = cfg.SOLVER.get(key, None)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            problems.append(f"SOLVER.{key}={value!r} (must be {must})")
    clip = cfg.SOLVER.get("CLIP_GRADIENTS", None)
    if clip is not None and clip.ENABLED and not clip.CLIP_VALUE > 0:
        problems.append(
            f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE={clip.CLIP_VALUE!r} (must be positive when "
            "CLIP_GRADIENTS.ENABLED)"
        )
    eval_period = cfg.TEST.get("EVAL_PERIOD", 0)
    if eval_period < 0:
        problems.append(f"TEST.EVAL_PERIOD={eval_period!r} (must be >= 0; 0 = only at the end)")
    steps, images = cfg.SOLVER.get("ACCUMULATE_STEPS", 1), cfg.SOLVER.IMS_PER_BATCH
    if isinstance(steps, int) and steps >= 1 and images > 0 and images % steps:
        problems.append(
            f"SOLVER.ACCUMULATE_STEPS={steps!r} (must divide SOLVER.IMS_PER_BATCH={images}: "
            "each forward takes IMS_PER_BATCH / ACCUMULATE_STEPS images)"
        )
    workers = cfg.DATALOADER.get("NUM_WORKERS", 0)
    if workers < 0:
        problems.append(f"DATALOADER.NUM_WORKERS={workers!r} (must be >= 0)")
    if problems:
        raise ValueError("Nonsensical config values: " + "; ".join(problems))


def check_extras(cfg: CfgNode) -> None:
    """Refuse a model whose optional extra is missing or cannot read what it names: XPM's
    official BERT classes (MODEL.XPM.CLASS_EMBEDDING "bert", the official-checkpoint
    configs) need transformers and the BERT of MODEL.XPM.BERT_NAME (its config is read).

    Raises:
        ValueError: naming the extra to install.
        OSError: naming MODEL.XPM.BERT_NAME and what to give instead.
    """
    if not cfg.MODEL.META_ARCHITECTURE.startswith("XPM") or cfg.MODEL.XPM.CLASS_EMBEDDING != "bert":
        return
    from ..modeling.xpm.bert import bert_width

    try:
        bert_width(cfg.MODEL.XPM.BERT_NAME)
    except ImportError as e:  # a missing package is the user's to install: one line
        raise ValueError(str(e)) from e


def check_vocabularies(cfg: CfgNode) -> None:
    """Refuse a MODEL.OVSEG.TRAIN_VOCABULARY / TEST_VOCABULARY that no model could read (an
    empty class, an unknown builtin name, a missing .json file).

    Raises:
        ValueError, OSError: naming the key and what is wrong with its value.
    """
    from ..vocab import resolve_vocabulary

    for key in ("TRAIN_VOCABULARY", "TEST_VOCABULARY"):
        spec = cfg.MODEL.OVSEG.get(key, "")
        if not isinstance(spec, str) or not spec.strip():
            continue
        try:
            resolve_vocabulary(spec)
        except (ValueError, OSError) as e:
            raise type(e)(f"MODEL.OVSEG.{key}: {e}") from None


def check_meta_architecture(cfg: CfgNode) -> None:
    """Refuse a MODEL.META_ARCHITECTURE no module registered (a misspelt name, or a class of
    a module the config does not name in EXTENSIONS), with the closest registered names."""
    from detectron2.modeling import META_ARCH_REGISTRY

    arch = cfg.MODEL.META_ARCHITECTURE
    if arch in META_ARCH_REGISTRY:
        return
    names = sorted(name for name, _ in META_ARCH_REGISTRY)
    close = difflib.get_close_matches(arch, names, n=3, cutoff=0.6)
    known = f"did you mean {' or '.join(close)}?" if close else f"registered: {', '.join(names)}"
    raise ValueError(
        f"MODEL.META_ARCHITECTURE {arch!r} is not a registered meta-architecture ({known}); "
        "a class of your own is registered by its module, which the config names in "
        "EXTENSIONS (docs/new_student.md)"
    )


def check_config(cfg: CfgNode) -> None:
    """Every set-up check: dataset names, solver values, vocabularies, optional extras (see
    the module docstring)."""
    check_dataset_names(cfg)
    check_solver(cfg)
    check_values(cfg)
    check_vocabularies(cfg)
    check_extras(cfg)


def trained_unseen_warning(cfg: CfgNode) -> str:
    """One line ("" if none) when a custom training set's unseen classes are trained on:
    MODEL.OVSEG.ZERO_SHOT_SETTING "none" over a registration that names unseen classes (a
    real-CLIP config of a supervised protocol taken for one's own data), so mIoU-unseen and
    hIoU would measure no zero-shot transfer. The protocols that read unseen labels only to
    locate pixels (ZegCLIP's and MaskCLIP+'s "unseen" pixels) are left alone."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if cfg.MODEL.OVSEG.get("ZERO_SHOT_SETTING", "none") != "none" or arch in TRAINING_FREE:
        return ""
    locate_only = {"ZegCLIP": ("ZEGCLIP", "SELF_TRAINING_PIXELS"),
                   "MaskCLIPPlus": ("MASKCLIP_PLUS", "PSEUDO_LABEL_PIXELS")}  # fmt: skip
    if arch in locate_only:
        group, key = locate_only[arch]
        if cfg.MODEL.get(group, {}).get(key) == "unseen":
            return ""
    if arch == "MaskCLIPPlus" and cfg.MODEL.MASKCLIP_PLUS.get("ANNOTATION_FREE", False):
        return ""  # reads no ground truth at all
    for name in cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(name)
        unseen = meta.get("unseen_classes", None)
        if unseen and meta.get("registration_guide", None):  # a DATASETS.CUSTOM split
            return (
                f"{name}'s unseen classes {list(unseen)} are trained on: "
                "MODEL.OVSEG.ZERO_SHOT_SETTING is 'none', so mIoU-unseen and hIoU measure no "
                "zero-shot transfer; set it to 'inductive' (or 'transductive') for a "
                "zero-shot run (docs/custom_dataset.md)"
            )
    return ""


# meta-architectures that learn nothing: they only evaluate
TRAINING_FREE = ("MaskCLIP",)


# metadata keys naming what every loader of a registered split reads
_DATA_FOLDERS = (("image_root", "image folder"), ("sem_seg_root", "label folder"))


def check_run_target(
    cfg: CfgNode, eval_only: bool = False, resume: bool = False, weights_given: bool = False
) -> None:
    """Refuse a run that would write where it cannot, overwrite a run, or score a random
    initialisation by mistake (train_net.py's check before launch); warn when --eval-only
    --resume ignores a MODEL.WEIGHTS given on the command line.

    Args:
        weights_given: MODEL.WEIGHTS was set on the command line (``MODEL.WEIGHTS ""``
            evaluates a model's initialisation on purpose).

    Raises:
        OSError: OUTPUT_DIR cannot be written.
        FileExistsError: training without --resume into an OUTPUT_DIR that holds a run.
        ValueError: --eval-only of a trainable model with no weights.
    """
    from .defaults import EVAL_CONFIG

    out = cfg.OUTPUT_DIR
    saved = EVAL_CONFIG if eval_only else "config.yaml"  # the config file setup() writes
    check_output_file(os.path.join(out, saved), "folder", "OUTPUT_DIR")
    latest = last_checkpoint_name(out)
    if not eval_only and not resume and latest is not None:
        raise FileExistsError(
            f"OUTPUT_DIR {out} holds a run (its last checkpoint: {latest}); training again "
            "would overwrite it. Continue it with --resume, or give another OUTPUT_DIR"
        )
    arch = cfg.MODEL.META_ARCHITECTURE
    resumes = resume and latest is not None
    if resume and not resumes:  # a misspelt OUTPUT_DIR would train from scratch unnoticed
        logger.warning(
            "--resume: OUTPUT_DIR %s holds no last_checkpoint; the run starts from "
            "MODEL.WEIGHTS (%s)",
            out,
            cfg.MODEL.WEIGHTS or "none",
        )
    if eval_only and resumes and weights_given:  # detectron2 loads the last checkpoint
        path = os.path.join(out, latest)
        if not _same_file(cfg.MODEL.WEIGHTS, path):  # the very file: nothing is ignored
            logger.warning(
                "--eval-only --resume evaluates OUTPUT_DIR's last checkpoint %s: MODEL.WEIGHTS "
                "%s is ignored. Leave out --resume to evaluate MODEL.WEIGHTS",
                path,
                cfg.MODEL.WEIGHTS or '""',
            )
    if eval_only and not cfg.MODEL.WEIGHTS and not resumes and not weights_given:
        if arch not in TRAINING_FREE:
            raise ValueError(
                f"--eval-only with no MODEL.WEIGHTS would score {arch}'s random "
                "initialisation. Pass MODEL.WEIGHTS <checkpoint> (output/<run>/model_final.pth)"
                ', or --resume to evaluate OUTPUT_DIR\'s last checkpoint; MODEL.WEIGHTS "" on '
                "the command line evaluates the initialisation on purpose"
            )


def hold_run_folder(output_dir: str) -> FolderLock:
    """Take ``OUTPUT_DIR``'s training lock for the rest of this process (train_net.py's
    launcher, before its checks read the folder): a second training or ``--resume`` into the
    folder while one runs is refused naming it. Two trainings used to run there side by side,
    interleaving their checkpoints, ``metrics.json`` and log, and ``last_checkpoint`` named
    whichever saved last. A run its later checks refuse calls :func:`give_back_run_folder`.

    Raises:
        OSError: OUTPUT_DIR cannot be written.
        FolderInUseError: another training holds the folder (its pid, host and command).
    """
    created, folder = [], os.path.abspath(output_dir)
    while not os.path.exists(folder):  # made here: the deepest first
        created.append(folder)
        folder = os.path.dirname(folder)
    make_output_folder(output_dir)  # a file of that name is refused, and nothing made
    hint = "give this run another OUTPUT_DIR, or --resume once that training ended"
    lock = FolderLock(output_dir, "training", RUN_LOCK, hint=hint)
    _RUN_LOCKS.append((lock, created))
    try:  # a folder that takes no file: refused in check_run_target's words
        check_output_file(os.path.join(output_dir, "config.yaml"), "folder", "OUTPUT_DIR")
        return lock.acquire()
    except BaseException:
        give_back_run_folder(output_dir)
        raise


def give_back_run_folder(output_dir: str) -> None:
    """Undo :func:`hold_run_folder` for a run refused by a later check: give the lock back
    and remove the folders it made, so a refused run leaves no ``OUTPUT_DIR`` behind."""
    for lock, created in [h for h in _RUN_LOCKS if h[0].folder == output_dir]:
        _RUN_LOCKS.remove((lock, created))
        if created and os.path.isfile(lock.path):  # removed while held: no job waits on it
            os.remove(lock.path)
        lock.release()
        for folder in created:
            try:
                os.rmdir(folder)
            except OSError:  # not empty: another job writes there now
                break


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (relative ones from the working directory)."""
    real = lambda p: os.path.realpath(os.path.expanduser(p))  # noqa: E731
    return bool(a) and real(a) == real(b)


def check_run_files(cfg: CfgNode, eval_only: bool = False, resume: bool = False) -> None:
    """Refuse a run whose data or weights are not on disk, before a model is built:
    the image and label folders of DATASETS.TEST (and DATASETS.TRAIN when training), and a
    local MODEL.WEIGHTS (unless ``resume`` finds OUTPUT_DIR/last_checkpoint); when training,
    a training-free model, a pseudo-label store not made yet, and the labels of custom
    splits (read now, not in the launched run or after training); with ``resume``, an
    OUTPUT_DIR whose run was another meta-architecture, or (training) whose checkpoint holds
    another SOLVER.OPTIMIZER's state (:func:`~ovseg.engine.resume.check_resume_target`).

    Raises:
        FileNotFoundError: naming the key, the dataset or file and what to do.
        ValueError: a training-free model to train, a custom label out of its vocabulary,
            or a resume into another meta-architecture's run or optimizer's state.
    """
    if resume:
        check_resume_target(cfg, training=not eval_only)
    arch = cfg.MODEL.META_ARCHITECTURE
    if not eval_only and arch in TRAINING_FREE:
        raise ValueError(
            f"{arch} is training-free: it has nothing to learn. Evaluate it with --eval-only "
            "(train_net.py --config-file <this config> --eval-only)"
        )
    keys = ("TEST",) if eval_only else ("TRAIN", "TEST")
    for key in keys:
        for name in cfg.DATASETS.get(key, ()):
            _check_data_folders(key, name)
    if not eval_only:
        if cfg.DATASETS.get("PSEUDO_LABELS", ""):
            _check_pseudo_label_store(cfg.DATASETS.PSEUDO_LABELS)
        # custom splits are read (their labels checked) in the launched run, the test split
        # after training: now instead, where a mistake ends in one line
        for name in (*cfg.DATASETS.get("TRAIN", ()), *cfg.DATASETS.get("TEST", ())):
            if MetadataCatalog.get(name).get("registration_guide", None):
                DatasetCatalog.get(name)
    weights = cfg.MODEL.WEIGHTS
    resumes = resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    what = None if resumes else local_weights_problem(weights)
    if what:
        raise FileNotFoundError(
            f"MODEL.WEIGHTS {weights} {what} (from {os.getcwd()}); pass a weight file: "
            "a checkpoint of the run the config names, or a converted official one "
            "(docs/reproduction.md, tools/convert_checkpoint.py)"
        )


def check_data_folders(name: str, where: str) -> None:
    """Refuse a registered dataset whose image or label folder is not on disk (a tool's
    ``--dataset``); ``where`` names the option.

    Raises:
        FileNotFoundError: naming the folder and what to do.
    """
    _check_data_folders(where, name, option=True)


# what a tool that reads a whole set's annotations needs too (a run reads them from its folders)
_ANNOTATION_FILES = (
    ("panoptic_root", "panoptic PNG folder"),
    ("panoptic_json", "panoptic annotation file"),
    ("json_file", "annotation file"),
)


def _check_data_folders(key: str, name: str, option: bool = False) -> None:
    from ..data.datasets.custom import missing_folder

    meta = MetadataCatalog.get(name)
    named = f"{key} names" if option else f"DATASETS.{key} names"
    custom = meta.get("registration_guide", None)  # registered from DATASETS.CUSTOM
    for field, what in _DATA_FOLDERS + (_ANNOTATION_FILES if option else ()):
        path = meta.get(field, None)
        if not isinstance(path, str) or not path or os.path.exists(path):
            continue
        if custom:
            raise FileNotFoundError(f"{named} {name!r}, whose {missing_folder(what, path)}")
        raise FileNotFoundError(
            f"{named} {name!r}, whose {what} {path} does not exist. "
            "Set DETECTRON2_DATASETS to the folder holding the datasets (now "
            f"{datasets_root()!r}) and prepare it as described in {DATASETS_README}"
        )


def _check_pseudo_label_store(root: str) -> None:
    """A training run that reads DATASETS.PSEUDO_LABELS needs the store made first, and its
    generation finished (a killed one ended in a traceback of the launched run)."""
    from ..pseudo.checksums import ChecksumJournal
    from ..pseudo.store import GENERATE_HINT, MANIFEST, PseudoLabelStore

    if not os.path.isfile(os.path.join(root, MANIFEST)):
        raise FileNotFoundError(
            f"DATASETS.PSEUDO_LABELS {root} is not a pseudo-label store yet (no {MANIFEST}); "
            f"make it first with: {GENERATE_HINT}; the config's header gives the command"
        )
    manifest = PseudoLabelStore.read_manifest(root)
    # a generation's checksum journals live until its finalize merges them; the count of
    # labelled images is filled in by that finalize too
    journals = ChecksumJournal.paths(root)
    if journals or not manifest.get("count"):
        why = "it counts no image"
        if journals:
            why = f"{os.path.dirname(journals[0])} holds its checksum journals"
        command = manifest.get("command") or GENERATE_HINT
        raise ValueError(
            f"DATASETS.PSEUDO_LABELS {root}: its generation did not finish (stopped, or still "
            f"running: {why}); finish it by running its command again (images already done "
            f"are skipped): {command}"
        )
