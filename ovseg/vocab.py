"""Vocabularies: class names, their prompt templates and the seen/unseen split.

A :class:`Vocabulary` is what an open-vocabulary model is asked to segment. It is resolved
from a dataset's metadata, a builtin benchmark list (``ovseg/data/vocabularies/<name>.json``),
a JSON file of the user's, or a string in the one vocabulary syntax of the demo, the configs
and the Python API: classes separated by ``;``, a class's synonyms by ``,``
(``"pickup truck, truck; sky"``); a string without ``;`` is a comma-separated list of classes.
A class name holding commas (ADE's ``"road, route"``) is one class whose synonyms are the
comma-separated words (:func:`split_synonyms`); the model scores it from all of them
(MODEL.OVSEG.SYNONYM_MERGE).
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from importlib import resources
from string import Formatter
from typing import Any, Iterable, Optional, Sequence

__all__ = [
    "ZERO_SHOT_SETTINGS",
    "Vocabulary",
    "builtin_vocabulary_names",
    "check_templates",
    "check_unique_names",
    "normalize_name",
    "one_class_warning",
    "resolve_vocabulary",
    "split_synonyms",
    "training_label_space",
    "training_vocabulary",
]

# "none": fully supervised; "inductive": unseen pixels are ignore and the unseen names are
# not in the training vocabulary; "transductive": unseen pixels are ignore but their names are
ZERO_SHOT_SETTINGS = ("none", "inductive", "transductive")

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

_JSON_SCHEMA = (
    'a JSON list of class names, e.g. ["cat", "dog"], or an object '
    '{"classes": ["cat", "dog", ...], "unseen": ["dog", ...]} ("unseen" and "name" optional)'
)
_JSON_KEYS = frozenset({"name", "classes", "unseen"})


def normalize_name(name: str) -> str:
    """The form in which two class names are compared: stripped, case-folded."""
    return name.strip().casefold()


def split_synonyms(name: str) -> tuple[str, ...]:
    """The synonyms of one class name: its comma-separated words (``"road, route"`` ->
    ``("road", "route")``), stripped; a name without commas is its only synonym.

    Raises:
        ValueError: a synonym is empty (``"road,,route"``).
    """
    parts = tuple(part.strip() for part in name.split(","))
    if not all(parts):
        raise ValueError(
            f"Class {name!r} has an empty synonym; separate a class's synonyms by single "
            "commas, e.g. 'pickup truck, truck'"
        )
    return parts


def check_templates(templates: Iterable[Any], source: str = "templates") -> tuple[str, ...]:
    """Validate prompt templates and return them as a tuple.

    Each template must be a string with exactly one ``"{}"`` placeholder and no other
    format fields, so ``template.format(name)`` puts the class name in one place.

    Args:
        templates: the templates to check.
        source (str): where they came from (a set name or a file), for error messages.

    Returns:
        tuple[str, ...]: the templates.
    """
    if isinstance(templates, str):
        raise ValueError(f"{source}: expected a list of templates, got the string {templates!r}")
    result = tuple(templates)
    if not result:
        raise ValueError(f"{source}: no prompt templates given; need at least one like 'a {{}}.'")
    for i, template in enumerate(result):
        if not isinstance(template, str):
            raise ValueError(f"{source}: template {i} is {template!r}, not a string")
        try:
            fields = [field for _, field, _, _ in Formatter().parse(template) if field is not None]
        except ValueError as e:  # unbalanced braces
            raise ValueError(f"{source}: template {i} {template!r} is malformed: {e}") from None
        if template.count("{}") != 1 or fields != [""]:
            raise ValueError(
                f"{source}: template {i} {template!r} must contain exactly one '{{}}' "
                "(where the class name goes) and no other braces"
            )
    return result


def check_unique_names(names: Sequence[str], where: str = "") -> None:
    """Raise ValueError naming every class name given twice (compared case-insensitively,
    ignoring surrounding spaces; ``where``, e.g. "Input 'a.jpg'", begins the message): two
    rows for one class would split its score."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        positions.setdefault(normalize_name(name), []).append(i)
    duplicates = [
        f"{names[pos[0]]!r} at positions {pos}" for pos in positions.values() if len(pos) > 1
    ]
    if duplicates:
        prefix = f"{where}: d" if where else "D"
        raise ValueError(
            f"{prefix}uplicate class names (compared case-insensitively, ignoring surrounding "
            f"spaces): {'; '.join(duplicates)}"
        )


@dataclass(frozen=True)
class Vocabulary:
    """Class names to segment, with their prompt templates and the seen/unseen split.

    Names are stored stripped of surrounding spaces; two names that differ only in case or
    surrounding spaces are duplicates. The index of a name in ``names`` is its label id.

    Args:
        names: the class names, in label order.
        templates: prompt templates, each with one ``"{}"`` for the class name.
        unseen: names (a subset of ``names``) whose pixels are never labelled in training.
    """

    names: tuple[str, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    unseen: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.names, str):
            raise ValueError(
                f"Vocabulary names must be a list of names, got the string {self.names!r}; "
                "use Vocabulary.from_string for a comma-separated list"
            )
        names = tuple(self.names)
        if not names:
            raise ValueError("The vocabulary is empty: give at least one class name")
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise ValueError(f"Class name at position {i} is {name!r}, not a string")
            if not name.strip():
                raise ValueError(f"Class name at position {i} is empty ({name!r})")
        names = tuple(name.strip() for name in names)
        check_unique_names(names)

        if isinstance(self.unseen, str):
            raise ValueError(f"unseen must be a list of names, got the string {self.unseen!r}")
        canonical = {normalize_name(name): name for name in names}
        unseen = []
        for name in self.unseen:
            if not isinstance(name, str) or normalize_name(name) not in canonical:
                raise ValueError(
                    f"Unseen class {name!r} is not in the vocabulary; unseen names must be "
                    f"among the class names {list(names)}"
                )
            if canonical[normalize_name(name)] in unseen:
                raise ValueError(f"Unseen class {name!r} is listed twice")
            unseen.append(canonical[normalize_name(name)])

        object.__setattr__(self, "names", names)
        object.__setattr__(self, "unseen", tuple(unseen))
        object.__setattr__(self, "templates", check_templates(self.templates))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def unseen_indices(self) -> tuple[int, ...]:
        """Label ids of the unseen classes, ascending."""
        unseen = set(self.unseen)
        return tuple(i for i, name in enumerate(self.names) if name in unseen)

    @property
    def seen_indices(self) -> tuple[int, ...]:
        """Label ids of the seen classes (all but the unseen), ascending."""
        unseen = set(self.unseen)
        return tuple(i for i, name in enumerate(self.names) if name not in unseen)

    @property
    def seen(self) -> tuple[str, ...]:
        """The seen class names, in label order."""
        return tuple(self.names[i] for i in self.seen_indices)

    @classmethod
    def from_metadata(cls, metadata: Any, templates: Sequence[str] = DEFAULT_TEMPLATES):
        """Build from a dataset's ``MetadataCatalog`` entry.

        Args:
            metadata: a detectron2 ``Metadata`` with ``stuff_classes`` and, optionally,
                ``unseen_classes``.
            templates: prompt templates.
        """
        dataset = getattr(metadata, "name", repr(metadata))
        names = metadata.get("stuff_classes", None)
        if not names:
            raise ValueError(
                f"Dataset {dataset!r} has no 'stuff_classes' metadata, so it gives no "
                "vocabulary; set MODEL.OVSEG.TEST_VOCABULARY (a builtin name, a .json file or "
                "a comma-separated list) or register the dataset's stuff_classes"
            )
        unseen = metadata.get("unseen_classes", None) or ()
        try:
            return cls(tuple(names), tuple(templates), tuple(unseen))
        except ValueError as e:
            raise ValueError(f"Metadata of dataset {dataset!r}: {e}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike, templates: Sequence[str] = DEFAULT_TEMPLATES):
        """Build from a JSON file holding a list of names or {"classes": [...], "unseen": [...]}.

        Args:
            path: the JSON file.
            templates: prompt templates.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Vocabulary file {path!r} does not exist; expected {_JSON_SCHEMA}"
            )
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return cls._from_json_text(text, path, templates)

    @classmethod
    def _from_json_text(cls, text: str, source: str, templates: Sequence[str]):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"Vocabulary file {source!r} is not valid JSON ({e}); expected {_JSON_SCHEMA}"
            ) from None
        if isinstance(data, list):
            names, unseen = data, []
        elif isinstance(data, dict):
            unknown = sorted(set(data) - _JSON_KEYS)
            if "classes" not in data or unknown:
                problem = f"unknown keys {unknown}" if unknown else 'no "classes" key'
                raise ValueError(
                    f"Vocabulary file {source!r} has {problem}; expected {_JSON_SCHEMA}"
                )
            names, unseen = data["classes"], data.get("unseen", [])
            if not isinstance(names, list) or not isinstance(unseen, list):
                raise ValueError(
                    f'Vocabulary file {source!r}: "classes" and "unseen" must be lists; '
                    f"expected {_JSON_SCHEMA}"
                )
        else:
            raise ValueError(
                f"Vocabulary file {source!r} holds a {type(data).__name__}; expected {_JSON_SCHEMA}"
            )
        try:
            return cls(tuple(names), tuple(templates), tuple(unseen))
        except ValueError as e:
            raise ValueError(f"Vocabulary file {source!r}: {e}") from None

    @classmethod
    def from_string(cls, text: str, templates: Sequence[str] = DEFAULT_TEMPLATES):
        """Build from the vocabulary syntax: ``"pickup truck, truck; sky"`` (classes separated
        by ``;``, a class's synonyms by ``,``) or, without ``;``, a comma-separated list of
        classes such as ``"cat, dog, potted plant"``.

        Args:
            text: the vocabulary; spaces around each name are ignored.
            templates: prompt templates.
        """
        if ";" not in text:
            items = text.split(",")
            for i, item in enumerate(items):
                if not item.strip():
                    raise ValueError(
                        f"Item {i} of the comma-separated vocabulary {text!r} is empty; "
                        "write names separated by single commas, e.g. 'cat,dog,potted plant'"
                    )
            return cls(tuple(items), tuple(templates))
        classes = []
        for i, item in enumerate(text.split(";")):
            if not item.strip():
                if i == len(text.split(";")) - 1:
                    continue  # a trailing ';'
                raise ValueError(
                    f"Class {i} of the vocabulary {text!r} is empty; separate classes by "
                    "single ';' and synonyms by ',', e.g. 'pickup truck, truck; sky'"
                )
            try:
                classes.append(", ".join(split_synonyms(item.strip())))
            except ValueError as e:
                raise ValueError(f"Vocabulary {text!r}: {e}") from None
        return cls(tuple(classes), tuple(templates))

    @classmethod
    def builtin(cls, name: str, templates: Sequence[str] = DEFAULT_TEMPLATES):
        """Load a builtin benchmark vocabulary (``ade150``, ``coco171``, ``voc20``, ...).

        Args:
            name: the vocabulary's name, a file stem under ``ovseg/data/vocabularies/``.
            templates: prompt templates.
        """
        available = builtin_vocabulary_names()
        if name not in available:
            raise ValueError(f"Unknown builtin vocabulary {name!r}; builtins are {list(available)}")
        text = _vocabulary_dir().joinpath(f"{name}.json").read_text(encoding="utf-8")
        return cls._from_json_text(text, f"builtin:{name}", templates)


def _vocabulary_dir():
    # ovseg.data is a regular package; its "vocabularies" folder is plain package data.
    return resources.files("ovseg.data").joinpath("vocabularies")


def one_class_warning(names: Sequence[str], where: str = "The vocabulary") -> Optional[str]:
    """The warning for a vocabulary of one name (every pixel gets it), else None.

    Args:
        names: the vocabulary's class names.
        where (str): what holds them, starting the message.
    """
    if len(names) != 1:
        return None
    return (
        f"{where} has one class ({names[0]!r}): a pixel takes the best-scoring class, so every "
        "pixel gets this one. Add the other classes (or a 'background' name) to segment"
    )


def builtin_vocabulary_names() -> tuple[str, ...]:
    """Names of the builtin vocabularies shipped with ovseg, sorted."""
    folder = _vocabulary_dir()
    if not folder.is_dir():
        return ()
    return tuple(
        sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))
    )


def resolve_vocabulary(spec: str, metadata: Any = None) -> Vocabulary:
    """Resolve a vocabulary specification as written in a config or on a command line.

    Args:
        spec (str): ``""`` for the dataset's own classes (``metadata`` required); a builtin
            name (``voc20``); a path to a ``.json`` file; or names in the vocabulary syntax
            (``"cat,dog"``, or ``"pickup truck, truck; sky"`` with synonyms).
        metadata: a dataset's ``MetadataCatalog`` entry, used when ``spec`` is empty.

    Returns:
        Vocabulary: with the default template; set templates with ``dataclasses.replace``.
    """
    if not isinstance(spec, str):
        raise ValueError(f"A vocabulary specification must be a string, got {spec!r}")
    spec = spec.strip()
    if not spec:
        if metadata is None:
            raise ValueError(
                "Empty vocabulary specification and no dataset metadata to take the classes "
                "from; give a builtin name, a .json file or a comma-separated list"
            )
        return Vocabulary.from_metadata(metadata)
    if spec.lower().endswith(".json") or os.path.isfile(spec):
        return Vocabulary.from_json(spec)
    if "," in spec or ";" in spec:
        return Vocabulary.from_string(spec)
    if spec in builtin_vocabulary_names():
        return Vocabulary.builtin(spec)
    close = difflib.get_close_matches(spec, builtin_vocabulary_names(), n=1, cutoff=0.75)
    guess = f"did you mean the builtin {close[0]!r}? It is " if close else ""
    raise ValueError(
        f"Unknown vocabulary {spec!r}: {guess}not a builtin (builtins are "
        f"{list(builtin_vocabulary_names())}), not a .json file, and not a comma-separated "
        "list of names such as 'cat,dog' (or 'pickup truck, truck; sky' with synonyms; "
        f"one class is written with a ';': '{spec};')"
    )


def training_label_space(
    classes: Vocabulary,
    setting: str,
    target_names: Optional[Sequence[str]] = None,
    dataset_name: str = "",
) -> Vocabulary:
    """The names training label ids refer to, with the unseen ones among them.

    ``none`` and ``transductive`` keep every class (their unseen names are known; in
    ``transductive`` their pixels are ignore), ``inductive`` only the seen ones. With
    ``target_names`` (MODEL.OVSEG.TRAIN_VOCABULARY) the label space is that list instead,
    less the unseen names in the inductive setting.

    Args:
        classes (Vocabulary): the dataset's classes and unseen classes.
        setting (str): one of ZERO_SHOT_SETTINGS.
        target_names: an explicit training vocabulary, or None.
        dataset_name (str): for error messages.

    Returns:
        Vocabulary: the training names in label order; ``unseen`` = the dataset's unseen
        classes among them.
    """
    where = f"dataset {dataset_name!r}" if dataset_name else "the dataset"
    if setting not in ZERO_SHOT_SETTINGS:
        raise ValueError(
            f"Unknown zero-shot setting {setting!r} (MODEL.OVSEG.ZERO_SHOT_SETTING); "
            f"choose one of {list(ZERO_SHOT_SETTINGS)}"
        )
    if setting != "none" and not classes.unseen:
        raise ValueError(
            f"ZERO_SHOT_SETTING={setting!r} needs unseen classes, but {where} has none "
            "(metadata 'unseen_classes'); register the dataset's unseen_classes or set "
            "MODEL.OVSEG.ZERO_SHOT_SETTING 'none'"
        )
    unseen = {normalize_name(n) for n in classes.unseen}
    names = classes.names if target_names is None else Vocabulary(tuple(target_names)).names
    if setting == "inductive":
        names = tuple(n for n in names if normalize_name(n) not in unseen)
    return Vocabulary(names, unseen=tuple(n for n in names if normalize_name(n) in unseen))


def training_vocabulary(cfg, dataset_name: Optional[str] = None) -> Optional[Vocabulary]:
    """The training vocabulary a config gives a dataset (see :func:`training_label_space`).

    The mapper labels samples with its names; models read which of them are unseen.

    Args:
        cfg (CfgNode): MODEL.OVSEG.ZERO_SHOT_SETTING and TRAIN_VOCABULARY are read.
        dataset_name (str, optional): default: the first of DATASETS.TRAIN.

    Returns:
        Vocabulary, or None when there is no training dataset or it has no stuff_classes.
    """
    from detectron2.data import MetadataCatalog

    if dataset_name is None:
        if not cfg.DATASETS.TRAIN:
            return None
        dataset_name = cfg.DATASETS.TRAIN[0]
    meta = MetadataCatalog.get(dataset_name)
    if not meta.get("stuff_classes", None):
        return None
    spec = cfg.MODEL.OVSEG.TRAIN_VOCABULARY
    target = resolve_vocabulary(spec).names if spec.strip() else None
    return training_label_space(
        Vocabulary.from_metadata(meta), cfg.MODEL.OVSEG.ZERO_SHOT_SETTING, target, dataset_name
    )
