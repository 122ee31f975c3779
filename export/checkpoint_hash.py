"""A1111's model hash of a single-file checkpoint: the SHA-256 of the whole file, shown as its first 10 hex digits.

As A1111's modules/hashes.py (calculate_sha256, read 1 MiB at a time) and modules/sd_models.py
(CheckpointInfo.shorthash = sha256[0:10], the infotext's "Model hash"). The file is read block by block,
so a 7 GB SDXL checkpoint never sits in memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

BLOCK_BYTES = 2**20
SHORT_HASH_DIGITS = 10
LOG_ABOVE_BYTES = 256 * 2**20  # about a second of hashing


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    block = memoryview(bytearray(BLOCK_BYTES))
    with open(path, "rb") as file:
        while count := file.readinto(block):
            digest.update(block[:count])
    return digest.hexdigest()


def short_hash(sha256: str) -> str:
    """A1111's short model hash: the first 10 hex digits of the file's SHA-256."""
    return sha256[:SHORT_HASH_DIGITS]


def checkpoint_file(src) -> Path | None:
    """The single-file checkpoint an export source reads (under a fused LoRA too); None for diffusers
    folders, hub ids and random weights."""
    from sdcpu.export.single_file import SingleFileSource

    base = getattr(src, "base", src)
    return base.path if isinstance(base, SingleFileSource) else None


def source_hashes(src, log: Callable[[str], None]) -> tuple[str | None, str | None]:
    """(sha256, A1111 short hash) of the source's checkpoint file, or (None, None) when it has none."""
    path = checkpoint_file(src)
    if path is None:
        return None, None
    if path.stat().st_size > LOG_ABOVE_BYTES:
        log(f"hashing {path} for A1111's model hash")
    sha256 = file_sha256(path)
    return sha256, short_hash(sha256)
