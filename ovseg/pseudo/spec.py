"""What a student expects of its teacher labels, for the data side to provide and check.

A student that learns from teacher pseudo-labels (MaskCLIP+) declares a classmethod
``pseudo_label_spec(cfg) -> PseudoLabelSpec``. The data side reads it
(:func:`expected_pseudo_labels`): the training loader checks a configured store against it
(:func:`ovseg.pseudo.pseudo_labelled_dataset_dicts`), and for the ``"online"`` source the
training mapper gives every sample its ``"teacher_input"``
(:func:`ovseg.data.build_dataset_mapper`). The model itself never opens a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from ..vocab import normalize_name
from .manifest_diff import manifest_diff
from .store import GENERATE_HINT, PseudoLabelStore

__all__ = ["PSEUDO_LABEL_SOURCES", "PseudoLabelSpec", "check_source", "expected_pseudo_labels"]

# "store": DATASETS.PSEUDO_LABELS, attached by the loader as "pseudo_sem_seg"; "online": the
# teacher labels each sample's original image in the loop, exactly as a store holds it, and
# the labels are moved onto the sample by its "transforms"; "online_augmented": the teacher
# labels the augmented sample itself (MaskCLIP+'s official recipe)
PSEUDO_LABEL_SOURCES = ("store", "online", "online_augmented")


def check_source(source: str, key: str = "PSEUDO_LABEL_SOURCE") -> str:
    """``source`` if it is one of PSEUDO_LABEL_SOURCES, else a ValueError naming ``key``."""
    if source not in PSEUDO_LABEL_SOURCES:
        raise ValueError(f"{key}={source!r} is not one of {list(PSEUDO_LABEL_SOURCES)}")
    return source


@dataclass(frozen=True)
class PseudoLabelSpec:
    """The teacher labels a training config uses.

    Attributes:
        source (str): one of PSEUDO_LABEL_SOURCES.
        scored (tuple[str, ...]): the classes the teacher scores, i.e. a fitting store's
            vocabulary (any order).
        threshold (float): the teacher's confidence threshold.
        command (str): a command that makes a fitting store, quoted in errors.
        owner (str): the config node holding PSEUDO_LABEL_SOURCE/CLASSES/THRESHOLD.
        student (str): the method's name, for messages.
        teacher (dict, optional): the manifest's "teacher" parts the config fixes
            (:func:`~ovseg.pseudo.labeller.expected_teacher`: labeller settings and CLIP
            weights identity); a store differing in any is refused. None = not checked.
    """

    source: str
    scored: Tuple[str, ...]
    threshold: float
    command: str = GENERATE_HINT
    owner: str = "MODEL.MASKCLIP_PLUS"
    student: str = "MaskCLIP+"
    teacher: Optional[Mapping[str, Any]] = None

    def __post_init__(self) -> None:
        check_source(self.source, f"{self.owner}.PSEUDO_LABEL_SOURCE")
        object.__setattr__(self, "scored", tuple(self.scored))

    def check_store(self, store: PseudoLabelStore) -> None:
        """Refuse a store made over other classes or at another threshold.

        Raises:
            ValueError: naming every difference and the command that makes a fitting store.
        """
        problems = []
        have = sorted(normalize_name(n) for n in store.vocabulary)
        if have != sorted(normalize_name(n) for n in self.scored):
            problems.append(
                f"its teacher scored {list(store.vocabulary)} but this config's labellers "
                f"score {list(self.scored)} ({self.owner}.PSEUDO_LABEL_CLASSES / "
                "ANNOTATION_FREE)"
            )
        if abs(store.threshold - float(self.threshold)) > 1e-9:
            problems.append(
                f"its threshold is {store.threshold} but {self.owner}.PSEUDO_LABEL_THRESHOLD "
                f"is {self.threshold}"
            )
        problems += self._teacher_problems(store)
        if problems:
            raise ValueError(
                f"Pseudo-label store {store.root!r} does not fit this {self.student} config: "
                + "; ".join(problems)
                + f". Generate a matching store with: {self.command}"
            )

    def _teacher_problems(self, store: PseudoLabelStore) -> list:
        """Differences between the store's teacher and the one this config describes."""
        if self.teacher is None:
            return []
        have = store.manifest.get("teacher") or {}
        diffs = []
        for key, want in self.teacher.items():
            diffs += manifest_diff(_only(have.get(key, "<absent>"), want), _only(want, want), key)
        return [
            f"its teacher.{name} is {a} but this config's teacher has {b}" for name, a, b in diffs
        ]


def _only(value: Any, shape: Any) -> Any:
    """``value`` with, in every mapping, only the keys ``shape`` has (as plain dicts)."""
    if isinstance(shape, Mapping) and isinstance(value, Mapping):
        return {k: _only(value.get(k, "<absent>"), shape[k]) for k in shape}
    return value


def expected_pseudo_labels(cfg) -> Optional[PseudoLabelSpec]:
    """The teacher labels the config's student trains from, or None for a student that
    learns from none (its meta-architecture declares no ``pseudo_label_spec``)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    name = cfg.MODEL.META_ARCHITECTURE
    arch = META_ARCH_REGISTRY.get(name) if name in META_ARCH_REGISTRY else None
    declare = getattr(arch, "pseudo_label_spec", None)
    return declare(cfg) if declare is not None else None
