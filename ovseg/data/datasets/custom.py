"""The user's own datasets: any folder of images and label PNGs, or COCO-format instances or
panoptic segments, registered with a vocabulary of the user's (docs/custom_dataset.md).

:func:`register_custom_dataset` registers one split from Python; :func:`register_from_config`
registers ``DATASETS.CUSTOM`` (specs, or registration files holding specs) before a run looks
its datasets up. Check a registration file and its folders with
``python -m ovseg.data.datasets.custom my_data/dataset.yaml``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.colors import deterministic_colors
from ...vocab import Vocabulary, normalize_name, resolve_vocabulary
from .common import register_split
from .custom_labels import GUIDE, check_label, undecodable_images
from .instance_common import register_instance_split, register_panoptic_split

__all__ = [
    "IMAGE_EXTENSIONS",
    "add_custom_argument",
    "custom_vocabulary",
    "load_custom_sem_seg",
    "load_registration_file",
    "missing_folder",
    "absolute_spec",
    "register_custom_dataset",
    "register_files",
    "register_from_config",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
KINDS = ("sem_seg", "instance", "panoptic")
_SPEC_KEYS = frozenset(
    {"name", "type", "images", "labels", "vocabulary", "unseen", "ignore_label", "annotations",
     "panoptic_labels", "instances", "check_labels", "splits"}
)  # fmt: skip

VocabularyLike = Union[str, os.PathLike, Sequence[str], Vocabulary]


def custom_vocabulary(vocabulary: VocabularyLike, unseen: Optional[Iterable[str]] = None):
    """A :class:`Vocabulary` from a builtin name (``"ade150"``), a .json file, a string in the
    vocabulary syntax (``"cat; dog, puppy; grass"``) or a list of names, with ``unseen``
    (names among them) replacing the vocabulary's own unseen classes when given."""
    if isinstance(vocabulary, Vocabulary):
        vocab = vocabulary
    elif isinstance(vocabulary, os.PathLike):
        vocab = Vocabulary.from_json(vocabulary)
    elif isinstance(vocabulary, str):
        vocab = resolve_vocabulary(vocabulary)
    elif isinstance(vocabulary, (list, tuple)):
        vocab = Vocabulary(tuple(vocabulary))
    else:
        raise ValueError(
            f"vocabulary must be a builtin name, a .json file, a 'a; b, c' string or a list of "
            f"names, got {type(vocabulary).__name__} {vocabulary!r}"
        )
    if unseen is None:
        return vocab
    if isinstance(unseen, str):
        unseen = [u for u in unseen.split(";" if ";" in unseen else ",") if u.strip()]
    return Vocabulary(vocab.names, vocab.templates, tuple(unseen))


def _stems(folder: str, extensions: Sequence[str], what: str, name: str) -> dict:
    found: dict = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        stem, ext = os.path.splitext(entry.name)
        if not entry.is_file() or entry.name.startswith(".") or ext.lower() not in extensions:
            continue
        if stem in found:
            raise ValueError(
                f"Dataset {name!r}: {found[stem]} and {entry.path} are two {what}s with one "
                "name; keep one file per name (images and labels are matched by name)"
            )
        found[stem] = entry.path
    return found


def missing_folder(what: str, path: str) -> str:
    """The error's end for a registered folder that does not exist: fix the registration."""
    where = "" if os.path.isabs(path) else f" (from the working directory {os.getcwd()})"
    return (
        f"{what} {path}{where} does not exist; fix the path in its registration "
        f"(DATASETS.CUSTOM; a registration file's relative paths are relative to its own "
        f"folder); see {GUIDE}"
    )


def load_custom_sem_seg(
    *, name: str, images: str, labels: str, num_classes: int, ignore_label: int, check: bool
) -> List[dict]:
    """Dataset dicts of one custom semantic split: each image matched to the label PNG of the
    same name, every label's values checked against the vocabulary when ``check``."""
    for what, path in (("image folder", images), ("label folder", labels)):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Dataset {name!r}: the {missing_folder(what, path)}")
    image_files = _stems(images, IMAGE_EXTENSIONS, "image", name)
    label_files = _stems(labels, (".png",), "label", name)
    if not image_files:
        raise FileNotFoundError(
            f"Dataset {name!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {images}"
        )
    no_label = [image_files[s] for s in image_files if s not in label_files]
    no_image = [label_files[s] for s in label_files if s not in image_files]
    if no_label or no_image:
        parts = []
        if no_label:
            expected = Path(labels) / f"{Path(no_label[0]).stem}.png"
            parts.append(f"{len(no_label)} images without a label PNG of the same name, e.g. "
                         f"{no_label[0]} (expected {expected})")  # fmt: skip
        if no_image:
            parts.append(f"{len(no_image)} labels without an image of the same name, e.g. "
                         f"{no_image[0]}")  # fmt: skip
        raise ValueError(
            f"Dataset {name!r}: images and labels are matched by file name (without the "
            f"extension), and {'; '.join(parts)}. Rename the files so that every image has "
            f"its label, or move the unmatched ones out; see {GUIDE}"
        )
    dicts = []
    for stem in sorted(image_files):
        if check:
            check_label(label_files[stem], image_files[stem], num_classes, ignore_label, name)
        dicts.append(
            {"file_name": image_files[stem], "sem_seg_file_name": label_files[stem],
             "image_id": stem}
        )  # fmt: skip
    logger.info("Loaded %d images of %s from %s", len(dicts), name, images)
    return dicts


def _categories(json_file: str, name: str) -> List[dict]:
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"Dataset {name!r}: the annotation file {json_file} does not exist; fix the "
            f"path in its registration; see {GUIDE}"
        )
    with open(json_file, encoding="utf-8") as f:
        categories = json.load(f).get("categories")
    if not categories:
        raise ValueError(f"Dataset {name!r}: {json_file} has no 'categories' (COCO format)")
    return [
        {"id": c["id"], "name": c["name"], "isthing": int(c.get("isthing", 1))}
        for c in sorted(categories, key=lambda c: c["id"])
    ]


def _check_coco_vocabulary(categories, vocab: Optional[Vocabulary], json_file, name) -> None:
    if vocab is None:
        return
    got = [normalize_name(c["name"]) for c in categories]
    if got != [normalize_name(n) for n in vocab.names]:
        raise ValueError(
            f"Dataset {name!r}: the vocabulary {list(vocab.names)[:8]} differs from the "
            f"categories of {json_file} {[c['name'] for c in categories][:8]} (in id order); "
            "leave 'vocabulary' out to use the file's names, or make them agree"
        )


def register_custom_dataset(
    name: str,
    *,
    images: Union[str, os.PathLike],
    labels: Optional[Union[str, os.PathLike]] = None,
    vocabulary: Optional[VocabularyLike] = None,
    unseen: Optional[Iterable[str]] = None,
    ignore_label: int = 255,
    kind: str = "sem_seg",
    annotations: Optional[Union[str, os.PathLike]] = None,
    panoptic_labels: Optional[Union[str, os.PathLike]] = None,
    instances: Optional[Union[str, os.PathLike]] = None,
    check_labels: bool = True,
) -> None:
    """Register one split of the user's data under ``name`` (``DATASETS.TRAIN/TEST``).

    Args:
        name (str): the split's dataset name.
        images: the image folder (any of :data:`IMAGE_EXTENSIONS`).
        labels: ``sem_seg``: the folder of label PNGs, one per image with the same name,
            holding each pixel's class index; panoptic: optional semantic PNGs (for mIoU).
        vocabulary: the classes (``sem_seg``; for COCO files optional, then the file's
            category names): a builtin name, a .json file, a ``"cat; dog, puppy"`` string
            or a list; label value k is the vocabulary's k-th class.
        unseen: classes whose pixels a zero-shot run never trains on (default: the
            vocabulary's own, e.g. a builtin's zero-shot split).
        ignore_label (int): the label value of unlabelled pixels.
        kind (str): the spec's ``type``: "sem_seg", "instance" (COCO instances json in
            ``annotations``) or "panoptic" (COCO panoptic json in ``annotations``, PNGs in
            ``panoptic_labels``).
        annotations, panoptic_labels, instances: COCO-format files (see ``kind``);
            ``instances``: an instances json for mask AP of a panoptic split.
        check_labels (bool): check every label's values when the split is loaded.
    """
    if kind not in KINDS:
        raise ValueError(f"Dataset {name!r}: type {kind!r} is not one of {list(KINDS)}")
    images = os.fspath(images)
    if kind != "sem_seg":
        _register_coco(name, kind, images, labels, vocabulary, unseen, annotations,
                       panoptic_labels, instances)  # fmt: skip
    else:
        _register_semantic(name, images, labels, vocabulary, unseen, ignore_label, check_labels)
    # the set-up checks' advice for a missing folder: the registration, not DETECTRON2_DATASETS
    MetadataCatalog.get(name).set(registration_guide=GUIDE)


def _register_semantic(name, images, labels, vocabulary, unseen, ignore_label, check_labels):
    if labels is None or vocabulary is None:
        raise ValueError(
            f"Dataset {name!r}: a semantic split needs 'labels' (a folder of label PNGs) and "
            f"'vocabulary' (the classes the label values index); see {GUIDE}"
        )
    vocab = custom_vocabulary(vocabulary, unseen)
    if ignore_label < len(vocab):
        raise ValueError(
            f"Dataset {name!r}: ignore_label {ignore_label} is a class index of the "
            f"{len(vocab)}-class vocabulary; choose a value >= {len(vocab)} (255 by default)"
        )
    labels = os.fspath(labels)
    loader = functools.partial(
        load_custom_sem_seg, name=name, images=images, labels=labels,
        num_classes=len(vocab), ignore_label=int(ignore_label), check=bool(check_labels),
    )  # fmt: skip
    register_split(
        name,
        loader,
        stuff_classes=list(vocab.names),
        stuff_colors=deterministic_colors(len(vocab)),
        ignore_label=int(ignore_label),
        evaluator_type="ovseg_sem_seg",
        image_root=images,
        sem_seg_root=labels,
        unseen_classes=list(vocab.unseen),
        seen_classes=list(vocab.seen),
    )


def _register_coco(name, kind, images, labels, vocabulary, unseen, annotations, pan, inst):
    if annotations is None:
        raise ValueError(f"Dataset {name!r}: a {kind} split needs 'annotations' (a COCO json)")
    annotations = os.fspath(annotations)
    categories = _categories(annotations, name)
    vocab = None if vocabulary is None else custom_vocabulary(vocabulary)
    _check_coco_vocabulary(categories, vocab, annotations, name)
    names = [c["name"] for c in categories]
    unseen = list(unseen if unseen is not None else (vocab.unseen if vocab else ()))
    Vocabulary(tuple(names), unseen=tuple(unseen))  # unknown unseen names stop here
    unseen_ids = [c["id"] for c in categories if normalize_name(c["name"]) in
                  {normalize_name(u) for u in unseen}]  # fmt: skip
    if not os.path.isdir(images):
        raise FileNotFoundError(f"Dataset {name!r}: the image folder {images} does not exist")
    if kind == "instance":
        register_instance_split(name, categories=[{**c, "isthing": 1} for c in categories],
                                unseen_ids=unseen_ids, image_root=images,
                                json_file=annotations, prepare_script=GUIDE)  # fmt: skip
        return
    if pan is None or not os.path.isdir(pan):
        raise FileNotFoundError(
            f"Dataset {name!r}: a panoptic split needs 'panoptic_labels', the folder of its "
            f"COCO panoptic PNGs (got {pan}); see {GUIDE}"
        )
    register_panoptic_split(
        name, categories=categories, unseen_ids=unseen_ids, image_root=images,
        panoptic_root=os.fspath(pan), panoptic_json=annotations,
        sem_seg_root=os.fspath(labels) if labels else None,
        instances_json=os.fspath(inst) if inst else None, prepare_script=GUIDE,
        image_ext=_image_ext(images),
    )  # fmt: skip


def _image_ext(folder: str) -> str:
    exts = [os.path.splitext(n)[1] for n in os.listdir(folder)]
    known = [e for e in exts if e.lower() in IMAGE_EXTENSIONS]
    return max(set(known), key=known.count) if known else ".jpg"


def _expand_splits(spec: Mapping[str, Any], where: str) -> List[dict]:
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: a dataset spec must be a mapping, got {spec!r}; see {GUIDE}")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown or "name" not in spec:
        problem = f"unknown keys {unknown}" if unknown else "no 'name'"
        raise ValueError(f"{where}: dataset spec {dict(spec)} has {problem}; keys are "
                         f"{sorted(_SPEC_KEYS)}; see {GUIDE}")  # fmt: skip
    spec = dict(spec)
    splits = spec.pop("splits", None)
    if splits is None:
        return [spec]
    if not isinstance(splits, Mapping) or not splits:
        raise ValueError(f"{where}: 'splits' of {spec['name']!r} must map split names to "
                         "{images, labels, ...}, e.g. {train: {...}, val: {...}}")  # fmt: skip
    out = []
    for split, extra in splits.items():
        sub = _expand_splits({**spec, **dict(extra or {}), "name": f"{spec['name']}_{split}"},
                             where)  # fmt: skip
        out.extend(sub)
    return out


def _resolve_paths(spec: dict, base: Optional[Path]) -> dict:
    if base is None:
        return spec
    out = dict(spec)
    for key in ("images", "labels", "annotations", "panoptic_labels", "instances"):
        if out.get(key) and not os.path.isabs(out[key]):
            out[key] = str(base / out[key])
    vocab = out.get("vocabulary")
    if isinstance(vocab, str) and vocab.lower().endswith(".json") and not os.path.isabs(vocab):
        out["vocabulary"] = str(base / vocab)
    return out


def absolute_spec(spec: Any) -> Any:
    """An inline spec (``DATASETS.CUSTOM``) with its relative paths, its splits' included,
    made absolute from the working directory, so the config a run saves loads from any
    folder; anything else unchanged."""
    if not isinstance(spec, Mapping):
        return spec
    out = _resolve_paths(dict(spec), Path.cwd())
    splits = out.get("splits")
    if isinstance(splits, Mapping):
        out["splits"] = {k: _resolve_paths(dict(v), Path.cwd()) if isinstance(v, Mapping) else v
                         for k, v in splits.items()}  # fmt: skip
    return out


def load_registration_file(path: Union[str, os.PathLike]) -> List[dict]:
    """The dataset specs of a registration file (.yaml/.yml/.json): a list of specs or
    ``{"datasets": [...]}``; relative paths in it are relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Registration file {str(path)!r} does not exist (from {os.getcwd()}); see {GUIDE}"
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if isinstance(data, Mapping) and set(data) == {"datasets"}:
        data = data["datasets"]
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list) or not data:
        raise ValueError(f"Registration file {path}: expected a list of dataset specs or "
                         f"{{datasets: [...]}}; see {GUIDE}")  # fmt: skip
    base = path.resolve().parent
    return [_resolve_paths(s, base) for spec in data for s in _expand_splits(spec, str(path))]


def register_from_config(cfg) -> List[str]:
    """Register ``cfg.DATASETS.CUSTOM``: each entry a spec (a mapping) or a registration
    file's path. Returns the registered names."""
    entries = cfg.DATASETS.get("CUSTOM", [])
    if isinstance(entries, (str, Mapping)):
        entries = [entries]
    names = []
    for entry in entries:
        if isinstance(entry, str):
            specs = load_registration_file(entry)
        else:
            specs = _expand_splits(entry, "DATASETS.CUSTOM")
        for spec in specs:
            names.append(_register_spec(spec))
    return names


def add_custom_argument(parser) -> None:
    """A tool's ``--custom FILE`` option (repeatable): registration files to register with
    :func:`register_files` before the tool looks a dataset up."""
    parser.add_argument(
        "--custom",
        action="append",
        default=[],
        metavar="FILE",
        help=f"a registration file of your own datasets (as DATASETS.CUSTOM, {GUIDE}), "
        "registered first; repeatable",
    )


def register_files(paths: Iterable[Union[str, os.PathLike]]) -> List[str]:
    """Register every split of each registration file (the tools' ``--custom``, as
    ``DATASETS.CUSTOM``). Returns the registered names."""
    return [_register_spec(spec) for path in paths for spec in load_registration_file(path)]


def _register_spec(spec: Mapping[str, Any]) -> str:
    spec = dict(spec)
    name = spec.pop("name")
    spec["kind"] = spec.pop("type", "sem_seg")
    register_custom_dataset(name, **spec)
    return name


def _main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m ovseg.data.datasets.custom",  # its usage line said "custom.py"
        description="Check registration files and their data: every split is loaded, its "
        "labels checked and its images decoded; each problem is one line, and the exit status "
        "is 2 if any was found.",
    )
    parser.add_argument("files", nargs="+", help="registration files (.yaml/.json)")
    args = parser.parse_args(argv)
    problems = 0
    for path in args.files:
        try:
            specs = load_registration_file(path)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            problems += 1
            continue
        for spec in specs:
            try:
                name = _register_spec(spec)
                records = DatasetCatalog.get(name)
                problem = undecodable_images(records, name)
                if problem:
                    raise ValueError(problem)
            except (ValueError, OSError) as e:
                print(f"error: {e}", file=sys.stderr)
                problems += 1
                continue
            meta = MetadataCatalog.get(name)
            print(f"{name}: {len(records)} images, "
                  f"{len(meta.stuff_classes)} classes, unseen {meta.unseen_classes}")  # fmt: skip
    if problems:
        print(f"{problems} problem(s) found; fix them as each line says (see {GUIDE})",
              file=sys.stderr)  # fmt: skip
    return 2 if problems else 0


if __name__ == "__main__":
    raise SystemExit(_main())
