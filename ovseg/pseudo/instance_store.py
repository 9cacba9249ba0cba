"""The instance pseudo-label store (XPM) and its generation.

The semantic store's machinery (:class:`~ovseg.pseudo.store.PseudoLabelStore`: fingerprinted
manifest, atomic writes, checksum journals, resume) with one JSON record per image::

    <root>/manifest.json                 "kind": "instances", fingerprint, vocabulary, ...
    <root>/instances/<image_id>.json     {"image_id", "height", "width",
                                          "nouns": [[phrase, category], ...],
                                          "instances": [PseudoInstance.to_json(), ...]}

The manifest's "threshold" is the score threshold applied when generating (0: none, as
XPM). An image counts as done when its record exists and matches its recorded digest.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Sequence

import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..utils.io import TMP_PREFIX, atomic_write
from .checksums import bytes_digest, file_digest, verify_file
from .generate import shard_dataset_dicts
from .instances import PseudoInstance, PseudoInstanceLabeller, proposals_at_size
from .store import MANIFEST, PseudoLabelStore, _check_image_id, image_id_of

__all__ = [
    "InstancePseudoLabelStore",
    "attach_pseudo_instances",
    "generate_pseudo_instances",
    "store_kind",
]

logger = logging.getLogger(__name__)

INSTANCES = "instances"


def store_kind(root: str) -> str:
    """What a store folder holds: its manifest's "kind" ("semantic" when absent)."""
    path = os.path.join(os.fspath(root), MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return "semantic"  # the semantic store's reader names the problem
    return manifest.get("kind", "semantic") if isinstance(manifest, dict) else "semantic"


class InstancePseudoLabelStore(PseudoLabelStore):
    """Per-image pseudo instances (noun, class, RLE mask, box, cosine, score)."""

    KIND = INSTANCES
    SUBDIRS = (INSTANCES,)

    @classmethod
    def create(cls, root: str, manifest: Mapping[str, Any]) -> InstancePseudoLabelStore:
        """:meth:`PseudoLabelStore.create` for an instance store (adds ``"kind"``)."""
        return super().create(root, {**manifest, "kind": cls.KIND})  # type: ignore[return-value]

    def path_for(self, image_id: str) -> str:
        """Path of the record of ``image_id`` (it may not exist yet)."""
        return os.path.join(self.root, INSTANCES, _check_image_id(image_id) + ".json")

    def confidence_path_for(self, image_id: str) -> str:
        raise NotImplementedError("an instance store keeps scores in its records")

    def is_valid(self, image_id: str) -> bool:
        digests = self.digests().get(image_id)
        return digests is not None and digests[0] == file_digest(self.path_for(image_id))

    def image_ids(self):
        folder = os.path.join(self.root, INSTANCES)
        names = os.listdir(folder) if os.path.isdir(folder) else []
        return tuple(
            sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith(TMP_PREFIX))
        )

    def write(self, image_id: str, record: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Store one image's record atomically (checked: sizes, classes, masks).

        Args:
            image_id (str): the image's key.
            record (dict): "height", "width", "nouns" and "instances" (each a
                :class:`PseudoInstance` or its JSON).
        """
        instances = [
            i if isinstance(i, PseudoInstance) else PseudoInstance.from_json(i)
            for i in record["instances"]
        ]
        height, width = int(record["height"]), int(record["width"])
        for inst in instances:
            self._check_instance(image_id, inst, height, width)
        data = {
            "image_id": image_id,
            "height": height,
            "width": width,
            "nouns": [list(n) for n in record.get("nouns", ())],
            "instances": [i.to_json() for i in instances],
        }
        blob = json.dumps(data, sort_keys=True).encode("utf-8")
        atomic_write(self.path_for(image_id), lambda f: f.write(blob))
        digests = (bytes_digest(blob), "")
        self._journal.append(image_id, digests)
        self.digests()[image_id] = digests

    def _check_instance(self, image_id: str, inst: PseudoInstance, height: int, width: int):
        if not 0 <= inst.category_id < len(self.vocabulary) or (
            self.vocabulary[inst.category_id] != inst.category
        ):
            raise ValueError(
                f"{image_id}: pseudo instance class {inst.category!r} (id {inst.category_id}) "
                f"is not that entry of the store's vocabulary {list(self.vocabulary)}"
            )
        if list(inst.mask.get("size", ())) != [height, width]:
            raise ValueError(
                f"{image_id}: pseudo mask of size {inst.mask.get('size')} in an image of "
                f"{[height, width]}"
            )

    def read(self, image_id: str) -> Dict[str, Any]:  # type: ignore[override]
        """One image's record, its instances as :class:`PseudoInstance`.

        Raises:
            FileNotFoundError: the image is not in the store.
            ValueError: the record does not match its recorded digest.
        """
        path = self.path_for(image_id)
        if not self.has(image_id) or image_id not in self.digests():
            raise FileNotFoundError(
                f"Pseudo-label store {self.root!r} has no record for image_id {image_id!r} "
                f"({path}); generate it with: {self.command}"
            )
        return read_record(path, self.digests()[image_id][0], self.command)


def read_record(path: str, digest: str = "", command: str = "") -> Dict[str, Any]:
    """A stored record (verified against ``digest`` when given), instances parsed."""
    if digest:
        verify_file(path, digest, command or "tools/generate_pseudo_labels.py")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["instances"] = [PseudoInstance.from_json(i) for i in data["instances"]]
    return data


def attach_pseudo_instances(
    dataset_dicts: Sequence[Mapping[str, Any]], store: InstancePseudoLabelStore
) -> List[Dict[str, Any]]:
    """Copies of ``dataset_dicts`` with "pseudo_instances_file_name" and
    "pseudo_instances_sha256" (the record's digest, which the mapper verifies).

    Raises:
        FileNotFoundError: naming the first image without a record and the command.
    """
    done, out, missing = set(store.image_ids()), [], []
    for d in dataset_dicts:
        image_id = image_id_of(d)
        digests = store.digests().get(image_id)
        if image_id not in done or digests is None:
            missing.append((image_id, d.get("file_name")))
            continue
        out.append(
            {
                **d,
                "pseudo_instances_file_name": store.path_for(image_id),
                "pseudo_instances_sha256": digests[0],
            }
        )
    if missing:
        image_id, file_name = missing[0]
        raise FileNotFoundError(
            f"Pseudo-label store {store.root!r} has no record for image_id {image_id!r} "
            f"({file_name}); {len(missing)} of {len(dataset_dicts)} images lack one. Generate "
            f"or finish them (done images are skipped) with: {store.command}"
        )
    return out


def _label_one(proposer, labeller: PseudoInstanceLabeller, inputs: dict, captions) -> dict:
    """The record of one mapped image: the teacher's proposals at the original size, then
    the labeller on the image resized to it. A labeller that reads only the chosen proposals'
    masks asks for them lazily (``propose(..., masks=False)``)."""
    height, width = int(inputs["height"]), int(inputs["width"])
    with torch.no_grad():
        if labeller.needs_every_mask:
            proposals = proposer.propose([inputs])[0]
        else:
            proposals = proposer.propose([inputs], masks=False)[0]
    proposals = proposals_at_size(proposals, height, width)
    image = inputs["image"].float()
    if tuple(image.shape[-2:]) != (height, width):
        image = F.interpolate(image[None], size=(height, width), mode="bilinear")[0]
    image = image.to(proposals.pred_boxes.device)
    nouns = labeller.nouns(captions)
    instances = labeller(image, captions, proposals)
    return {
        "height": height,
        "width": width,
        "nouns": [[p, labeller.vocabulary[c]] for p, c in nouns],
        "instances": instances,
    }


def _captions(image_id: str, dataset_dict: Mapping[str, Any]) -> List[str]:
    captions = dataset_dict.get("captions")
    if captions is None:
        raise ValueError(
            f"{image_id}: the dataset dict has no 'captions'; XPM's pseudo-labels need a "
            "dataset registered with its captions (e.g. coco_2017_train_instance_48_17, "
            "toy_world_instance_train)"
        )
    return list(captions)


def generate_pseudo_instances(
    proposer,
    labeller: PseudoInstanceLabeller,
    dataset_dicts: Sequence[Mapping[str, Any]],
    mapper,
    store: InstancePseudoLabelStore,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> Dict[str, int]:
    """Label this process's shard of a dataset into ``store``, skipping finished images.

    Args:
        proposer: has ``propose(batched_inputs) -> list[Instances]`` (``pred_boxes``,
            ``pred_masks`` probabilities, ``scores``), e.g. the XPM teacher; in eval mode.
            For a "teacher" labeller, ``propose(batched_inputs, masks=False)``, whose
            ``pred_masks`` may be a :class:`~ovseg.pseudo.lazy_masks.LazyMasks`.
        labeller (PseudoInstanceLabeller): nouns -> best proposals.
        dataset_dicts: dataset dicts with "captions"; every process passes the same list.
        mapper: dataset dict -> model input (test mode).
        store (InstancePseudoLabelStore): where records go.
        rank, world_size (int): this process's share.
        progress (bool): a tqdm bar on rank 0.

    Returns:
        dict: {"total", "written", "skipped"} images of this shard.
    """
    if labeller.score_threshold != store.threshold:
        raise ValueError(
            f"score threshold {labeller.score_threshold} differs from the store's "
            f"{store.threshold} ({store.root}); use the store's or another output folder"
        )
    shard = shard_dataset_dicts(dataset_dicts, rank, world_size)
    done = {image_id for image_id, _ in shard if store.is_valid(image_id)}
    logger.info(f"Pseudo instances into {store.root}: {len(shard)} images, {len(done)} done")
    stats = {"total": len(shard), "written": 0, "skipped": 0}
    bar = tqdm(total=len(shard), disable=not progress or rank != 0, desc="pseudo-instances")
    try:
        for image_id, dataset_dict in shard:
            if image_id in done:
                stats["skipped"] += 1
            else:
                captions = _captions(image_id, dataset_dict)
                record = _label_one(proposer, labeller, mapper(dict(dataset_dict)), captions)
                store.write(image_id, record)
                stats["written"] += 1
            bar.update(1)
    finally:
        bar.close()
    return stats
