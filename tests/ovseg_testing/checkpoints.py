"""Damaging a saved checkpoint as a disk or a bad copy would: one byte of one tensor."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Optional

import torch


def flip_tensor_byte(path: Path, tensor: torch.Tensor, out: Optional[Path] = None) -> Path:
    """Flip one bit in the middle of the zip record of ``path`` that holds ``tensor``'s bytes
    (found by content), the file otherwise byte for byte the same: torch reads it back.

    Args:
        path (Path): a file ``torch.save`` wrote.
        tensor (Tensor): one of its tensors, whose bytes no other record holds.
        out (Path): where the damaged copy goes (None: ``path`` itself).

    Returns:
        Path: the damaged file.
    """
    raw = bytearray(path.read_bytes())
    wanted = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    with zipfile.ZipFile(path) as archive:
        [info] = [i for i in archive.infolist() if archive.read(i) == wanted]
    assert info.compress_type == zipfile.ZIP_STORED
    names, extra = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + names + extra
    raw[start + info.file_size // 2] ^= 0x01
    out = path if out is None else out
    out.write_bytes(bytes(raw))
    return out
