"""Teacher pseudo-labels: generation, the on-disk store, the score -> label rules, what a
student expects of its teacher labels, attaching them to training data, and the one
self-training schedule."""

from .attach import (
    attach_pseudo_labels,
    pseudo_labelled_dataset_dicts,
    store_class_count,
    store_label_map,
)
from .generate import all_ok, generate_pseudo_labels, open_store, shard_dataset_dicts
from .instance_store import (
    InstancePseudoLabelStore,
    attach_pseudo_instances,
    generate_pseudo_instances,
    store_kind,
)
from .instances import PseudoInstance, PseudoInstanceLabeller
from .labeller import (
    build_manifest,
    expected_teacher,
    find_teacher,
    labeller_fingerprint,
    labeller_settings,
    teacher_weights_id,
)
from .labels import (
    SCORE_KINDS,
    label_table,
    pixel_labels,
    score_kind_of,
    scores_to_labels,
    store_ignore_value,
)
from .lazy_masks import LazyMasks
from .spec import PSEUDO_LABEL_SOURCES, PseudoLabelSpec, check_source, expected_pseudo_labels
from .store import PseudoLabelStore, image_id_of

__all__ = [
    "InstancePseudoLabelStore",
    "LazyMasks",
    "PseudoInstance",
    "PseudoInstanceLabeller",
    "attach_pseudo_instances",
    "generate_pseudo_instances",
    "store_kind",
    "PSEUDO_LABEL_SOURCES",
    "SCORE_KINDS",
    "PseudoLabelSpec",
    "PseudoLabelStore",
    "all_ok",
    "attach_pseudo_labels",
    "build_manifest",
    "check_source",
    "expected_pseudo_labels",
    "expected_teacher",
    "find_teacher",
    "generate_pseudo_labels",
    "image_id_of",
    "label_table",
    "open_store",
    "labeller_fingerprint",
    "labeller_settings",
    "pixel_labels",
    "pseudo_labelled_dataset_dicts",
    "score_kind_of",
    "scores_to_labels",
    "shard_dataset_dicts",
    "store_class_count",
    "store_ignore_value",
    "store_label_map",
    "teacher_weights_id",
]
