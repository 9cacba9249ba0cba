"""Checksums of a pseudo-label store's files.

Every stored image's label and confidence PNG get a SHA-256 digest. While generation runs,
each process appends ``[image_id, label digest, confidence digest]`` lines to its own
journal (``<root>/checksums/<host>-<pid>-<random>.jsonl``: no two writers share a file, and
a line cut by a kill is skipped, so its image is labelled again); ``finalize`` merges them
into the manifest's "checksums". A resumed generation re-makes every image whose files do not
match, and readers refuse such a file naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
from typing import Dict, List, Optional, Tuple

__all__ = ["ChecksumJournal", "bytes_digest", "file_digest", "verify_file"]

JOURNALS = "checksums"
# hex digits kept of each SHA-256 (128 bits: integrity, not security; keeps manifests small)
DIGEST_CHARS = 32

Digests = Tuple[str, str]  # (label, confidence)


def bytes_digest(data: bytes) -> str:
    """The stored digest of ``data``: the first DIGEST_CHARS hex digits of its SHA-256."""
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def file_digest(path: str) -> Optional[str]:
    """:func:`bytes_digest` of a file's bytes, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return bytes_digest(f.read())
    except OSError:
        return None


def verify_file(path: str, expected: str, command: str) -> None:
    """Raise naming ``path`` when its bytes do not match the digest a store recorded.

    Args:
        path (str): a stored label or confidence PNG.
        expected (str): its digest in the store's manifest.
        command (str): the generation command, which re-makes bad files when re-run.
    """
    got = file_digest(path)
    if got != expected:
        state = "cannot be read" if got is None else "does not match its checksum"
        raise ValueError(
            f"Pseudo-label file {path!r} {state} in the store's manifest (truncated, corrupt or "
            f"changed after generation); re-run the generation, which re-makes it: {command}"
        )


class ChecksumJournal:
    """One process's append-only record of the digests of the images it stored."""

    def __init__(self, root: str):
        self.folder = os.path.join(root, JOURNALS)
        self._path: Optional[str] = None

    def append(self, image_id: str, digests: Digests) -> None:
        """Record one image's (label, confidence) digests, flushed to disk."""
        if self._path is None:
            os.makedirs(self.folder, exist_ok=True)
            name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
            self._path = os.path.join(self.folder, name)
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps([image_id, *digests]) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def paths(root: str) -> List[str]:
        """The journals of the store at ``root``, sorted: some while a generation runs (or
        after one was stopped), none once ``finalize`` merged them into the manifest."""
        folder = os.path.join(root, JOURNALS)
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        return [os.path.join(folder, n) for n in names if n.endswith(".jsonl")]

    @staticmethod
    def read_all(root: str) -> Dict[str, Digests]:
        """Every journalled image's digests (later lines win); cut or foreign lines skipped."""
        out: Dict[str, Digests] = {}
        for path in ChecksumJournal.paths(root):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        image_id, label, confidence = json.loads(line)
                    except (ValueError, TypeError):
                        continue  # the last line of a killed writer
                    out[str(image_id)] = (str(label), str(confidence))
        return out

    @staticmethod
    def remove_all(root: str) -> None:
        """Delete the journals (after ``finalize`` wrote their digests to the manifest)."""
        for path in ChecksumJournal.paths(root):
            os.remove(path)
