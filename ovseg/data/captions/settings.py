"""What a config says about XPM's caption pseudo instances, read by the training mapper
(ovseg/data/dataset_mappers/xpm_instance.py), the store's generation
(ovseg/engine/pseudo_instances.py), the student's online labels
(ovseg/modeling/meta_arch/xpm_online.py) and the benchmarks, each from here:

- where the student's pseudo instances come from (MODEL.XPM.PSEUDO_LABEL_SOURCE);
- the caption matcher (MODEL.XPM.CAPTION_SYNONYMS, CAPTION_VOCABULARY: :mod:`.nouns`,
  :mod:`.lvis`);
- the vocabulary a store labels and a run trains over, and the text space nouns are matched
  in (a store made otherwise is refused).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

from detectron2.data import MetadataCatalog

from ...vocab import Vocabulary, normalize_name, resolve_vocabulary
from .lvis import check_caption_vocabulary, lvis_vocabulary
from .nouns import COCO_LVIS_SYNONYMS, CaptionNounMatcher

__all__ = [
    "CAPTION_MATCHERS",
    "LVIS_SYNONYMS",
    "XPM_PSEUDO_LABEL_SOURCES",
    "build_caption_matcher",
    "caption_vocabulary",
    "check_text_space",
    "lvis_pseudo_vocabulary",
    "matches_in_bert_space",
    "xpm_pseudo_label_source",
    "xpm_store_vocabulary",
    "xpm_vocabulary",
]


# "store": DATASETS.PSEUDO_LABELS, read by the mapper; "online": made in the training step
XPM_PSEUDO_LABEL_SOURCES = ("store", "online")


def xpm_pseudo_label_source(cfg) -> str:
    """MODEL.XPM.PSEUDO_LABEL_SOURCE, checked: "online" needs the teacher's weights, the
    teacher's region embeddings and no store."""
    xpm = cfg.MODEL.XPM
    source = xpm.PSEUDO_LABEL_SOURCE
    if source not in XPM_PSEUDO_LABEL_SOURCES:
        raise ValueError(
            f"MODEL.XPM.PSEUDO_LABEL_SOURCE={source!r} is not one of "
            f"{list(XPM_PSEUDO_LABEL_SOURCES)}"
        )
    if source == "store":
        return source
    if not xpm.TEACHER_WEIGHTS:
        raise ValueError(
            "MODEL.XPM.PSEUDO_LABEL_SOURCE 'online' labels captions with the teacher's frozen "
            "RoI heads, loaded from MODEL.XPM.TEACHER_WEIGHTS, which is empty; set it to the "
            "XPM teacher's checkpoint (the model_final.pth of its run)"
        )
    if xpm.REGION_EMBEDDING != "teacher":
        raise ValueError(
            f"MODEL.XPM.PSEUDO_LABEL_SOURCE 'online' matches caption nouns to the teacher's own "
            f"region embeddings (REGION_EMBEDDING 'teacher', as XPM), not CLIP's "
            f"{xpm.REGION_EMBEDDING!r} (every proposal's mask at the image size, each step); "
            "set MODEL.XPM.REGION_EMBEDDING 'teacher', or make a store (PSEUDO_LABEL_SOURCE "
            "'store' with tools/generate_pseudo_labels.py)"
        )
    if cfg.DATASETS.PSEUDO_LABELS:
        raise ValueError(
            f"MODEL.XPM.PSEUDO_LABEL_SOURCE 'online' makes the pseudo-labels in the training "
            f"step, but DATASETS.PSEUDO_LABELS={cfg.DATASETS.PSEUDO_LABELS!r} names a store "
            "too; leave it empty, or set PSEUDO_LABEL_SOURCE 'store' to train on the store"
        )
    return source


def _coco(names: Sequence[str], extras: bool) -> CaptionNounMatcher:
    return CaptionNounMatcher.coco(names, extras=extras)


def _auto(names: Sequence[str]) -> CaptionNounMatcher:
    if set(names) <= set(COCO_LVIS_SYNONYMS):
        return _coco(names, True)
    return CaptionNounMatcher(names)


# MODEL.XPM.CAPTION_SYNONYMS -> matcher over the vocabulary's names
CAPTION_MATCHERS: Dict[str, Callable[[Sequence[str]], CaptionNounMatcher]] = {
    "auto": _auto,
    "coco": lambda names: _coco(names, True),
    "coco_official": lambda names: _coco(names, False),
    "none": lambda names: CaptionNounMatcher(names),
}


# MODEL.XPM.CAPTION_SYNONYMS values that mean XPM's LVIS lists alone with the LVIS vocabulary
LVIS_SYNONYMS = ("auto", "coco_official")


def build_caption_matcher(cfg, vocabulary: Sequence[str]) -> CaptionNounMatcher:
    """The caption matcher MODEL.XPM.CAPTION_SYNONYMS asks for, over ``vocabulary``; with
    MODEL.XPM.CAPTION_VOCABULARY "lvis", XPM's LVIS matcher (``vocabulary`` unused)."""
    kind = cfg.MODEL.XPM.CAPTION_SYNONYMS
    if kind not in CAPTION_MATCHERS:
        raise ValueError(
            f"MODEL.XPM.CAPTION_SYNONYMS={kind!r} is not one of {sorted(CAPTION_MATCHERS)}"
        )
    if check_caption_vocabulary(cfg.MODEL.XPM.CAPTION_VOCABULARY) == "lvis":
        if kind not in LVIS_SYNONYMS:
            raise ValueError(
                f"MODEL.XPM.CAPTION_SYNONYMS={kind!r} has no meaning for the LVIS caption "
                f"vocabulary, which reads the LVIS synonym lists alone; set it to one of "
                f"{list(LVIS_SYNONYMS)} or MODEL.XPM.CAPTION_VOCABULARY to 'train'"
            )
        return CaptionNounMatcher.lvis()
    return CAPTION_MATCHERS[kind](list(vocabulary))


def xpm_vocabulary(cfg, dataset_name: str, store=None) -> Vocabulary:
    """The full vocabulary XPM trains over: MODEL.OVSEG.TRAIN_VOCABULARY, else ``store``'s
    (an :class:`InstancePseudoLabelStore`), else the dataset's classes; unseen names are the
    vocabulary's own (a builtin's), the store's and the dataset's."""
    meta = MetadataCatalog.get(dataset_name)
    spec = cfg.MODEL.OVSEG.TRAIN_VOCABULARY
    if spec.strip():
        vocab = resolve_vocabulary(spec)
    elif store is not None:
        vocab = Vocabulary(store.vocabulary, unseen=store.unseen)
    else:
        vocab = Vocabulary.from_metadata(meta)
    keys = {normalize_name(n) for n in meta.get("unseen_classes", None) or ()}
    keys |= {normalize_name(n) for n in vocab.unseen}
    unseen = tuple(n for n in vocab.names if normalize_name(n) in keys)
    return Vocabulary(vocab.names, unseen=unseen)


def caption_vocabulary(cfg, store=None, root: str = "") -> str:
    """MODEL.XPM.CAPTION_VOCABULARY, refused when ``store`` (an
    :class:`InstancePseudoLabelStore`, at ``root``) was made with another one."""
    kind = check_caption_vocabulary(cfg.MODEL.XPM.CAPTION_VOCABULARY)
    if store is None:
        return kind
    made = store.manifest.get("caption_vocabulary", "train")  # absent: made before the key
    if made != kind:
        raise ValueError(
            f"pseudo-label store {root!r} was made with MODEL.XPM.CAPTION_VOCABULARY "
            f"{made!r} but this config trains with {kind!r}: regenerate the store with this "
            "config (tools/generate_pseudo_labels.py --config-file <this config> --output "
            f"<new folder>) or set MODEL.XPM.CAPTION_VOCABULARY {made!r}"
        )
    return kind


def matches_in_bert_space(cfg) -> bool:
    """Whether ``cfg`` matches caption nouns to regions in the XPM teacher's BERT space
    (MODEL.XPM.CLASS_EMBEDDING "bert" with REGION_EMBEDDING "teacher", XPM's own matching;
    else in CLIP's). A store made so records ``"text_space"`` in its labeller settings."""
    xpm = cfg.MODEL.XPM
    return xpm.get("CLASS_EMBEDDING", "clip") == "bert" and xpm.REGION_EMBEDDING == "teacher"


def check_text_space(cfg, store=None, root: str = "") -> None:
    """Refuse a ``store`` whose nouns were matched in another space than the config's
    (:func:`matches_in_bert_space`)."""
    if store is None:
        return
    xpm = cfg.MODEL.XPM
    settings = store.manifest.get("teacher", {}).get("settings", {}).get("xpm", {})
    made = "BERT" if "text_space" in settings else "CLIP"  # absent: CLIP, as stores before
    want = "BERT" if matches_in_bert_space(cfg) else "CLIP"
    if made != want:
        raise ValueError(
            f"pseudo-label store {root!r} matched caption nouns in {made}'s space but this "
            f"config (MODEL.XPM.CLASS_EMBEDDING {xpm.get('CLASS_EMBEDDING', 'clip')!r}, "
            f"REGION_EMBEDDING {xpm.REGION_EMBEDDING!r}) makes them in {want}'s: regenerate "
            "the store with this config (tools/generate_pseudo_labels.py --config-file <this "
            "config> --output <new folder>)"
        )


def lvis_pseudo_vocabulary(store=None, root: str = "") -> List[str]:
    """The LVIS names pseudo classes index; ``store``'s vocabulary must be them."""
    names = list(lvis_vocabulary())
    if store is not None and list(store.vocabulary) != names:
        raise ValueError(
            f"pseudo-label store {root!r} says it holds LVIS classes but its vocabulary "
            f"({len(store.vocabulary)} names, {list(store.vocabulary)[:3]}...) is not the "
            f"{len(names)} LVIS names of this detectron2; regenerate it"
        )
    return names


def xpm_store_vocabulary(cfg, dataset_name: str) -> Tuple[Vocabulary, Dict[str, str]]:
    """The vocabulary a config's pseudo-instance store labels (its training vocabulary, or
    the LVIS names with MODEL.XPM.CAPTION_VOCABULARY "lvis"; unseen: the training
    vocabulary's among them) and the manifest fields that say which."""
    vocab = xpm_vocabulary(cfg, dataset_name)
    if caption_vocabulary(cfg) != "lvis":
        return vocab, {}
    names = lvis_pseudo_vocabulary()
    keys = {normalize_name(n) for n in vocab.unseen}
    unseen = tuple(n for n in names if normalize_name(n) in keys)
    return Vocabulary(names, unseen=unseen), {"caption_vocabulary": "lvis"}
