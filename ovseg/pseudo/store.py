"""The on-disk pseudo-label store: one label PNG and one confidence PNG per image.

Layout::

    <root>/manifest.json              who made the labels, for which vocabulary, threshold
    <root>/labels/<image_id>.png      vocabulary index per pixel, ``ignore_value`` where the
                                      teacher's confidence was below the threshold
                                      (uint8 and 255; uint16 and 65535 for > 255 classes)
    <root>/confidence/<image_id>.png  uint8, round(confidence * 255)
    <root>/checksums/*.jsonl          digests journalled while generating, merged into the
                                      manifest's "checksums" by finalize (pseudo/checksums.py)

Every file is written to a temporary name in its own folder and renamed into place, the
confidence before the label, and an image counts as done only when its label exists; so a
run killed at any point leaves either a complete pair or an image that is labelled again.
An image's files count only when they match their recorded digests: a resumed generation
labels a corrupt one again, and reading one raises naming it.
"""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timezone
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..utils.io import TMP_PREFIX, atomic_write, atomic_write_json, make_output_folder
from ..utils.locks import FolderLock
from .checksums import ChecksumJournal, Digests, bytes_digest, file_digest, verify_file
from .labels import label_table, store_ignore_value
from .manifest_diff import manifest_diff, normalise, without

__all__ = ["FORMAT_VERSION", "PseudoLabelStore", "generation_lock", "image_id_of"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".generation.lock"  # held from create() to finalize() by the one generating job
LABELS = "labels"
CONFIDENCE = "confidence"
# bookkeeping fields: they may differ between two runs that make the same labels
_VOLATILE = ("created", "count", "command", "checksums")
_REQUIRED = ("fingerprint", "vocabulary", "threshold")
_ONE_JOB = (
    "one job generates a store: its processes (--num-gpus N, --num-machines M) share the images; "
    "re-run the command once that job ended to finish what it left"
)
GENERATE_HINT = "python tools/generate_pseudo_labels.py --config-file <teacher config> " + (
    "--dataset <dataset> --output <store folder>"
)


def generation_lock(root: str) -> FolderLock:
    """The lock the one job generating into store ``root`` holds (not taken here)."""
    return FolderLock(root, "pseudo-label generation", LOCK, hint=_ONE_JOB)


def image_id_of(dataset_dict: Mapping[str, Any]) -> str:
    """The store key of a dataset dict: its "image_id", else the stem of its "file_name"."""
    image_id = dataset_dict.get("image_id")
    if image_id is None or (isinstance(image_id, str) and not image_id):
        file_name = dataset_dict.get("file_name")
        if not file_name:
            raise ValueError(
                f"Dataset dict {dict(dataset_dict)!r} has neither 'image_id' nor 'file_name'"
            )
        image_id = os.path.splitext(os.path.basename(file_name))[0]
    return _check_image_id(str(image_id))


def _check_image_id(image_id: Any) -> str:
    if not isinstance(image_id, str) or not image_id.strip():
        raise ValueError(f"image_id {image_id!r} must be a non-empty string")
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in image_id for s in seps) or image_id in (".", "..") or "\0" in image_id:
        raise ValueError(
            f"image_id {image_id!r} cannot name a file in the store (it holds a path separator "
            "or is '.'/'..'); give the dataset dicts plain 'image_id' strings"
        )
    if image_id.startswith(TMP_PREFIX):
        raise ValueError(f"image_id {image_id!r} starts with the store's temporary prefix")
    return image_id


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _identity(manifest: Mapping[str, Any]) -> Dict[str, Any]:
    return without(manifest, _VOLATILE)


class PseudoLabelStore:
    """A folder of per-image pseudo-labels and confidences made by one labeller.

    Make one with :meth:`create` (generation) or :meth:`open` (training); the constructor
    only wraps an already-validated manifest.
    """

    KIND = "semantic"  # the manifest's "kind" (absent = semantic); subclasses hold others
    SUBDIRS = (LABELS, CONFIDENCE)  # the per-image folders

    def __init__(self, root: str, manifest: Mapping[str, Any]):
        """
        Args:
            root (str): the store folder.
            manifest (dict): its manifest, as written by :meth:`create`.
        """
        self.root = os.fspath(root)
        self.manifest: Dict[str, Any] = dict(manifest)
        self.vocabulary: Tuple[str, ...] = tuple(self.manifest["vocabulary"])
        self.label_dtype = np.dtype(self.manifest["label_dtype"])
        self.ignore_value = int(self.manifest["ignore_value"])
        self._journal = ChecksumJournal(self.root)
        self._digests: Optional[Dict[str, Digests]] = None
        self._lock: Optional[FolderLock] = None

    # ------------------------------------------------------------------ creation / opening
    @classmethod
    def create(cls, root: str, manifest: Mapping[str, Any]) -> PseudoLabelStore:
        """Create a store, or reopen one made by the same labeller to resume it.

        Args:
            root (str): the store folder (created if missing).
            manifest (dict): at least "fingerprint" (str: teacher + labeller settings),
                "vocabulary" (list[str]: the names label indices refer to) and "threshold"
                (float); usually also "teacher" (readable fingerprint parts), "unseen",
                "dataset" and "command". "format_version", "label_dtype", "ignore_value",
                "created" and "count" are filled in.

        Returns:
            PseudoLabelStore, holding the store's generation lock until :meth:`finalize`.

        Raises:
            FolderInUseError: another job is generating into ``root`` (named with its pid).
        """
        root = os.fspath(root)
        missing = [k for k in _REQUIRED if k not in manifest]
        if missing:
            raise ValueError(f"Pseudo-label manifest lacks {missing}; it needs {list(_REQUIRED)}")
        vocabulary = list(manifest["vocabulary"])
        if not vocabulary or not all(isinstance(n, str) and n for n in vocabulary):
            raise ValueError(f"manifest 'vocabulary' must be non-empty names, got {vocabulary!r}")
        if len(vocabulary) > 65535:
            raise ValueError(f"{len(vocabulary)} classes do not fit uint16 label PNGs")
        threshold = float(manifest["threshold"])
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold} is outside [0, 1]")
        ignore_value = store_ignore_value(len(vocabulary))
        fresh = {
            "format_version": FORMAT_VERSION,
            **normalise(manifest),
            "threshold": threshold,
            "label_dtype": "uint8" if ignore_value == 255 else "uint16",
            "ignore_value": ignore_value,
            "created": _now(),
            "count": 0,
        }
        fresh.setdefault("unseen", [])
        make_output_folder(root)
        # one job at a time: a second one's create and finalize would drop the first's
        # temporaries and journals, and its manifest would record only part of the labels
        lock = generation_lock(root).acquire()
        try:
            store = cls._create_or_resume(root, fresh)
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        return store

    @classmethod
    def _create_or_resume(cls, root: str, fresh: Dict[str, Any]) -> PseudoLabelStore:
        """:meth:`create` under the store's lock: write ``fresh`` or check the manifest there."""
        path = os.path.join(root, MANIFEST)
        if os.path.isfile(path):
            existing = cls.read_manifest(root)
            diffs = manifest_diff(_identity(existing), _identity(fresh), "manifest")
            if diffs:
                lines = "\n".join(f"  {k}: existing {a}, now {b}" for k, a, b in diffs)
                raise ValueError(
                    f"{root!r} already holds a pseudo-label store made differently:\n{lines}\n"
                    "Use another --output folder, or delete this one to regenerate it."
                )
            store = cls(root, existing)
        else:
            labels = os.path.join(root, LABELS)
            if os.path.isdir(labels) and any(n.endswith(".png") for n in os.listdir(labels)):
                raise ValueError(
                    f"{root!r} holds label PNGs but no {MANIFEST}, so nobody can tell which "
                    "teacher made them; use another --output folder or delete this one"
                )
            store = cls(root, fresh)
            store._write_manifest()
        for sub in cls.SUBDIRS:
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        store._remove_stale_temporaries()
        return store

    @classmethod
    def open(cls, root: str, expect: Optional[Mapping[str, Any]] = None) -> PseudoLabelStore:
        """Open an existing store, refusing one made for something else.

        Args:
            root (str): the store folder.
            expect (dict, optional): manifest fields that must match, e.g. {"fingerprint":
                ..., "vocabulary": [...]}; a mismatch raises naming the field and both values.

        Returns:
            PseudoLabelStore
        """
        root = os.fspath(root)
        manifest = cls.read_manifest(root)
        kind = manifest.get("kind", "semantic")
        if kind != cls.KIND:
            raise ValueError(
                f"Pseudo-label store {root!r} holds {kind} pseudo-labels, not {cls.KIND} "
                "ones: point this config at a store its method makes"
            )
        if expect:
            expect = normalise(expect)
            diffs = []
            for key, value in expect.items():
                diffs += manifest_diff(manifest.get(key, "<absent>"), value, key)
            if diffs:
                lines = "\n".join(f"  {k}: store has {a}, expected {b}" for k, a, b in diffs)
                command = manifest.get("command") or GENERATE_HINT
                raise ValueError(
                    f"Pseudo-label store {root!r} was made for something else:\n{lines}\n"
                    f"(it was made by: {command}). Regenerate the labels with the current "
                    "teacher into a new folder (tools/generate_pseudo_labels.py --output ...) "
                    "or point to a store made with it."
                )
        return cls(root, manifest)

    @staticmethod
    def read_manifest(root: str) -> Dict[str, Any]:
        """The manifest of the store at ``root``, refused in one line when it is missing, not
        JSON, or of another format version."""
        path = os.path.join(root, MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} does not exist, so {root!r} is not a pseudo-label store; make one "
                f"with: {GENERATE_HINT}"
            )
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path} is not valid JSON ({e}); delete the store and regenerate"
            ) from None
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format_version {version!r}; this ovseg reads version "
                f"{FORMAT_VERSION}. Regenerate the store with this version's tool."
            )
        return manifest

    def _write_manifest(self) -> None:
        atomic_write_json(os.path.join(self.root, MANIFEST), self.manifest, sort_keys=True)

    def _remove_stale_temporaries(self) -> None:
        # left by a killed run; only called while no process of this store is writing
        for sub in self.SUBDIRS:
            folder = os.path.join(self.root, sub)
            for name in os.listdir(folder):
                if name.startswith(TMP_PREFIX):
                    os.remove(os.path.join(folder, name))

    # ------------------------------------------------------------------ per-image access
    def path_for(self, image_id: str) -> str:
        """Path of the label PNG of ``image_id`` (it may not exist yet)."""
        return os.path.join(self.root, LABELS, _check_image_id(image_id) + ".png")

    def confidence_path_for(self, image_id: str) -> str:
        """Path of the confidence PNG of ``image_id`` (it may not exist yet)."""
        return os.path.join(self.root, CONFIDENCE, _check_image_id(image_id) + ".png")

    def has(self, image_id: str) -> bool:
        """True when the image is done: its label (written last) exists."""
        return os.path.isfile(self.path_for(image_id))

    def digests(self) -> Dict[str, Digests]:
        """image_id -> recorded (label, confidence) digests: the manifest's, then journals'."""
        if self._digests is None:
            recorded = {k: tuple(v) for k, v in self.manifest.get("checksums", {}).items()}
            self._digests = {**recorded, **ChecksumJournal.read_all(self.root)}
        return self._digests

    def label_checksum(self, image_id: str) -> Optional[str]:
        """The recorded digest of the image's label PNG, or None when none is recorded."""
        digests = self.digests().get(image_id)
        return digests[0] if digests else None

    def is_valid(self, image_id: str) -> bool:
        """True when both files of the image exist and match their recorded digests."""
        digests = self.digests().get(image_id)
        return digests is not None and digests == (
            file_digest(self.path_for(image_id)),
            file_digest(self.confidence_path_for(image_id)),
        )

    def image_ids(self) -> Tuple[str, ...]:
        """The ids of all finished images, sorted."""
        folder = os.path.join(self.root, LABELS)
        names = os.listdir(folder) if os.path.isdir(folder) else []
        return tuple(
            sorted(n[:-4] for n in names if n.endswith(".png") and not n.startswith(TMP_PREFIX))
        )

    def write(self, image_id: str, label: np.ndarray, confidence: np.ndarray) -> None:
        """Store one image's labels, confidence first and label last, each atomically.

        Args:
            image_id (str): the image's key (no path separators).
            label (np.ndarray): (H, W) integer vocabulary indices, ``ignore_value`` allowed.
            confidence (np.ndarray): (H, W) floats in [0, 1].
        """
        label_path, conf_path = self.path_for(image_id), self.confidence_path_for(image_id)
        label, confidence = np.asarray(label), np.asarray(confidence)
        if label.ndim != 2 or confidence.shape != label.shape:
            raise ValueError(
                f"{image_id}: label {label.shape} and confidence {confidence.shape} must be the "
                "same (H, W)"
            )
        if not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"{image_id}: label dtype {label.dtype} is not an integer type")
        bad = (label < 0) | ((label >= len(self.vocabulary)) & (label != self.ignore_value))
        if bad.any():
            raise ValueError(
                f"{image_id}: label values {np.unique(label[bad])[:8].tolist()} are neither "
                f"indices of the {len(self.vocabulary)}-name vocabulary nor the ignore value "
                f"{self.ignore_value}"
            )
        confidence = confidence.astype(np.float64)
        if not np.isfinite(confidence).all() or confidence.min() < 0 or confidence.max() > 1:
            raise ValueError(
                f"{image_id}: confidence must be finite and in [0, 1], got "
                f"[{np.nanmin(confidence)}, {np.nanmax(confidence)}]"
            )
        conf_png = _png_bytes(np.rint(confidence * 255).astype(np.uint8))
        label_png = _png_bytes(label.astype(self.label_dtype))
        atomic_write(conf_path, lambda f: f.write(conf_png))
        atomic_write(label_path, lambda f: f.write(label_png))
        digests = (bytes_digest(label_png), bytes_digest(conf_png))
        self._journal.append(image_id, digests)
        self.digests()[image_id] = digests

    def read(self, image_id: str) -> Tuple[np.ndarray, np.ndarray]:
        """One image's (label (H, W) uint8/uint16, confidence (H, W) float32 in [0, 1]).

        Raises:
            FileNotFoundError: the image is not in the store.
            ValueError: a file does not match its recorded digest, or a label value is
                neither a vocabulary index nor the ignore value; naming the file.
        """
        if not self.has(image_id) or image_id not in self.digests():
            raise FileNotFoundError(
                f"Pseudo-label store {self.root!r} has no label for image_id {image_id!r} "
                f"({self.path_for(image_id)}); generate it with: {self.command}"
            )
        label_path, conf_path = self.path_for(image_id), self.confidence_path_for(image_id)
        for path, digest in zip((label_path, conf_path), self.digests()[image_id]):
            verify_file(path, digest, self.command)
        with Image.open(label_path) as im:
            label = np.asarray(im).astype(self.label_dtype)
        self.check_labels(label, label_path)
        with Image.open(conf_path) as im:
            confidence = np.asarray(im).astype(np.float32) / 255.0
        return label, confidence

    def check_labels(self, label: np.ndarray, path: str) -> None:
        """Raise naming ``path`` when ``label`` holds a value that is neither an index of the
        vocabulary nor the ignore value."""
        bad = (label != self.ignore_value) & ((label < 0) | (label >= len(self.vocabulary)))
        if bad.any():
            raise ValueError(
                f"Pseudo-label file {path!r} has values {np.unique(label[bad])[:8].tolist()} "
                f"that are neither indices of the store's {len(self.vocabulary)} classes nor "
                f"its ignore value {self.ignore_value}; regenerate it: {self.command}"
            )

    # ------------------------------------------------------------------ bookkeeping
    @property
    def command(self) -> str:
        """The command that made this store (from its manifest), else a template."""
        return self.manifest.get("command") or GENERATE_HINT

    @property
    def unseen(self) -> Tuple[str, ...]:
        return tuple(self.manifest.get("unseen", ()))

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    def finalize(self) -> int:
        """Record the finished images (their count and digests) in the manifest, drop the
        journals (every process's: call it once all have finished) and give back the
        generation lock :meth:`create` took; return the count."""
        self._digests = None  # re-read: other processes journalled too
        digests = self.digests()
        done = [i for i in self.image_ids() if i in digests]
        self.manifest["checksums"] = {i: list(digests[i]) for i in done}
        self.manifest["count"] = len(done)
        self._write_manifest()
        ChecksumJournal.remove_all(self.root)
        if self._lock is not None:  # the generation is over: another job may resume it
            self._lock.release()
        return self.manifest["count"]

    def label_map_to(self, names: Sequence[str], ignore_label: int = 255) -> np.ndarray:
        """A lookup table from this store's label values to indices of another vocabulary
        (:func:`~ovseg.pseudo.labels.label_table`).

        Names are compared as :func:`~ovseg.vocab.normalize_name` does; store classes
        missing from ``names`` and the store's ignore value map to ``ignore_label``.

        Args:
            names: the target vocabulary (e.g. a training mapper's).
            ignore_label (int): the target's ignore label.

        Returns:
            np.ndarray: table of ``ignore_value + 1`` entries (uint8 when every entry fits,
            else int64); ``table[label]``.
        """
        return label_table(
            self.vocabulary, names, source_ignore=self.ignore_value, target_ignore=ignore_label
        )

    def __repr__(self) -> str:
        return (
            f"PseudoLabelStore({self.root!r}, {len(self.vocabulary)} classes, "
            f"fingerprint {self.fingerprint[:12]}...)"
        )


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
