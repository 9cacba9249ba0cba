# Follows HSNet's FSS-1000 loader as lang-seg ships it (isl-org/lang-seg @bb00b21
# fewshot_data/data/fss.py; juhongm999/hsnet data/fss.py) and LSeg's zero-shot FSS test runs it
# (nshot 0), re-written. Line numbers below are lang-seg's copy.
"""FSS-1000 (1000 classes, 10 images each) as LSeg's zero-shot tables use it.

HSNet's split (fewshot_data/data/splits/fss/{trn,val,test}.txt, from the FSS-1000 authors'
test list) assigns 520 classes to training, 240 to validation and 240 to the test; a class's
id is its place in the sorted list of its split plus the split's offset (0, 520, 760;
fss.py:22-24, :89-95, :118-125). ``ovseg/data/vocabularies/fss1000.json`` holds the 1000 folder
names in that id order (lang-seg's ``label_files/fewshot_fss.txt``, whose names are LSeg's
prompts as they are: ``"abe's_flyingfish"``), its "unseen" the 240 test classes.

- ``fss1000_train``: every image of the 520 training classes (LSeg trains on query and
  support images alike, ``lsegmentation_module_zs.py:122-124``).
- ``fss1000_val`` / ``fss1000_test``: one episode per image of the split's classes, in
  HSNet's order (sorted folder listing; with nshot 0 no image is kept back as a support,
  fss.py:127-139), scored over the split's classes.

A record is an (image, class) pair; its mask ``<n>.png`` beside ``<n>.jpg`` is read as
greyscale and is the class where it is >= 128 (``read_mask``, fss.py:83-87): the
``mask_threshold`` metadata the ``ovseg_binary_episode`` mapper applies.
"""

from __future__ import annotations

import functools
import os
from typing import Dict, List, Tuple

from ...utils.colors import deterministic_colors
from ...vocab import Vocabulary
from .catalog import register_split
from .common import DATASETS_README

__all__ = ["FSS_FOLDER", "FSS_SPLITS", "class_images", "load_fss1000", "register_fss1000"]

FSS_FOLDER = "FSS-1000"
VOCABULARY = "fss1000"
# split -> (first class id, end), fss.py:118-125
FSS_SPLITS: Dict[str, Tuple[int, int]] = {"train": (0, 520), "val": (520, 760), "test": (760, 1000)}
IMAGES_PER_CLASS = 10  # the FSS-1000 release; the evaluator warns when a copy has other counts
MASK_THRESHOLD = 128  # fss.py:85-86


def class_images(folder: str) -> List[Tuple[str, str]]:
    """(image, mask) paths of one class folder in HSNet's order: the sorted listing's entries
    whose second dot-part is "jpg" (fss.py:130-139), each with ``<stem>.png`` beside it
    (which may be missing: callers check)."""
    images = [p for p in sorted(os.listdir(folder)) if p.split(".")[1:2] == ["jpg"]]
    return [
        (os.path.join(folder, p), os.path.join(folder, p.split(".")[0] + ".png")) for p in images
    ]


def _class_records(folder: str, class_id: int, name: str) -> List[dict]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Dataset {name!r}: class folder {folder} does not exist. FSS-1000 is expected as "
            f"<DETECTRON2_DATASETS>/{FSS_FOLDER}/<class>/<n>.jpg and <n>.png, all 1000 class "
            f"folders (HSNet's download; python datasets/prepare_fss1000.py lists what is "
            f"missing); see {DATASETS_README}"
        )
    pairs = class_images(folder)
    if not pairs:
        raise FileNotFoundError(
            f"Dataset {name!r}: class folder {folder} holds no .jpg image; re-extract FSS-1000"
        )
    records = []
    for image, mask in pairs:
        if not os.path.isfile(mask):
            raise FileNotFoundError(
                f"Dataset {name!r}: {image} has no mask {mask}; re-extract FSS-1000"
            )
        stem = os.path.basename(image).split(".")[0]
        records.append(
            {
                "file_name": image,
                "sem_seg_file_name": mask,
                # a plain file name (stores and outputs are named by it); unique, as the
                # stem after the last "_" is the image number
                "image_id": f"{os.path.basename(folder)}_{stem}",
                "episode_class": class_id,
            }
        )
    return records


def load_fss1000(root: str, split: str, name: str = "") -> List[dict]:
    """The (image, class) records of one FSS-1000 split, in HSNet's order.

    Args:
        root (str): the datasets root (holding ``FSS-1000/``).
        split (str): "train", "val" or "test".
        name (str): the dataset name, for messages.

    Returns:
        list[dict]: "file_name", "sem_seg_file_name", "image_id" (``<class>_<n>``),
        "episode_class" (the HSNet class id) and, for val/test, "episode" (its index).
    """
    if split not in FSS_SPLITS:
        raise ValueError(f"FSS-1000 split must be one of {sorted(FSS_SPLITS)}, got {split!r}")
    classes = Vocabulary.builtin(VOCABULARY).names
    start, end = FSS_SPLITS[split]
    records = []
    for class_id in range(start, end):
        folder = os.path.join(root, FSS_FOLDER, classes[class_id])
        records.extend(_class_records(folder, class_id, name or f"fss1000_{split}"))
    if split != "train":
        for i, record in enumerate(records):
            record["episode"] = i
    return records


def register_fss1000(root: str) -> None:
    """Register ``fss1000_{train,val,test}`` under ``root`` (nothing is read now)."""
    classes = list(Vocabulary.builtin(VOCABULARY).names)
    colors = deterministic_colors(len(classes))
    train = range(*FSS_SPLITS["train"])
    for split, (start, end) in FSS_SPLITS.items():
        name = f"fss1000_{split}"
        # scored classes: the split's own for val / test; the test's for the training set
        scored = list(range(*FSS_SPLITS["test" if split == "train" else split]))
        register_split(
            name,
            functools.partial(load_fss1000, root, split, name),
            stuff_classes=classes,
            stuff_colors=colors,
            ignore_label=255,
            evaluator_type="fewshot_binary",
            benchmark="fss1000",
            novel_class_ids=scored,
            unseen_classes=[classes[i] for i in scored],
            seen_classes=[classes[i] for i in train],
            background_name="others",
            label_offset=1,
            mask_threshold=MASK_THRESHOLD,
            test_ignores_boundary=False,
            num_episodes=None if split == "train" else IMAGES_PER_CLASS * (end - start),
            vocabulary_name=VOCABULARY,
            train_sampling="records",
        )
