"""Graph weights and compiled blobs mapped from their files, copy-on-write, so their pages can be given back.

OpenVINO keeps the weights it was handed (an IR's `model.bin`, an imported blob) beside the packed
copy its CPU kernels run on. Handing it a mapping of our own lets us tell the kernel, once the packed
copy exists, that the mapped pages are idle (MADV_PAGEOUT): they leave resident memory and, being clean
pages of the file, are read back from it if anything ever touches them again. On an SD1.5 UNet this is
1.7 GB of the 3.6 GB a compiled fp16 graph otherwise holds (bench/RESULTS.md). Private (copy-on-write)
mappings, because OpenVINO wants writable memory; nothing writes to them, so no page is ever copied.
"""

from __future__ import annotations

import contextlib
import mmap
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Linux's MADV_PAGEOUT (5.4+); Python < 3.12 does not name it. Where the kernel lacks it, madvise fails
# and the pages simply stay resident.
MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21 if sys.platform.startswith("linux") else None)


@dataclass
class MappedFile:
    """A file mapped copy-on-write as a uint8 array; keep it alive as long as anything reads the array."""

    path: Path
    mapping: mmap.mmap
    array: np.ndarray

    @classmethod
    def open(cls, path: Path) -> "MappedFile | None":
        """Map `path`; None for an empty file (nothing to map)."""
        with open(path, "rb") as file:
            if not file.seek(0, 2):
                return None
            mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        return cls(path, mapping, np.frombuffer(mapping, dtype=np.uint8))

    def page_out(self) -> None:
        """Give the mapped pages back to the kernel (re-read from the file if touched again)."""
        if MADV_PAGEOUT is None or not hasattr(self.mapping, "madvise"):
            return
        with contextlib.suppress(OSError, ValueError):
            self.mapping.madvise(MADV_PAGEOUT)
