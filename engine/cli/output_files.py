"""Where generate, grid and bench write: resolved and checked before any model work; write errors as one line."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from sdcpu.engine.errors import UserError

PNG_SUFFIX = ".png"
PNG_OVERHEAD_BYTES = 64 * 1024
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def resolve_png_output(output: Path | str, default_name: str) -> Path:
    """A folder (existing, or written with a trailing slash) gets DEFAULT_NAME inside; no suffix means .png.

    Any other suffix is refused: the parameters that make an image re-runnable live in a PNG text chunk.
    """
    text = str(output)
    output = Path(output).expanduser()
    if output.is_dir() or text.endswith(("/", os.sep)):
        return output / default_name
    if not output.suffix:
        return output.with_suffix(PNG_SUFFIX)
    if output.suffix.lower() != PNG_SUFFIX:
        raise UserError(f"-o {text}: sdcpu writes PNG files (their parameters live in a PNG text chunk); "
                        "name a .png file or a folder")
    return output


def png_bytes_bound(width: int, height: int, count: int = 1) -> int:
    """An upper bound on the size of COUNT uncompressed RGB PNGs of that size."""
    return count * (width * height * 3 + height + PNG_OVERHEAD_BYTES)


def nearest_existing_folder(path: Path) -> Path:
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(path: Path, option: str = "-o") -> None:
    """Refuse, before any work, an output that is a folder, under a file, or in a folder that cannot be written."""
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder, not a file")
    folder = nearest_existing_folder(path)
    if not folder.is_dir():
        raise UserError(f"cannot write {option} {path}: {folder} is not a writable folder (it is a file)")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"cannot write {option} {path}: {folder} is not a writable folder ({exc.strerror})") from None


def check_free_space(path: Path, needed_bytes: int) -> None:
    """Refuse an output whose disk has less than NEEDED_BYTES free, before the work that would fill it."""
    folder = nearest_existing_folder(path)
    if shutil.disk_usage(folder).free < needed_bytes:
        raise UserError(no_space_message(folder, needed_bytes))


def check_output(path: Path | None, option: str, suffix: str | None = None) -> None:
    """An optional report file (--json, --plot): the right suffix, and writable like any output."""
    if path is None:
        return
    if suffix and path.suffix.lower() != suffix:
        raise UserError(f"{option} must name a {suffix} file (got {path})")
    check_writable(path, option)
    check_free_space(path, PNG_OVERHEAD_BYTES)


def no_space_message(folder: Path, needed_bytes: int) -> str:
    return f"no space left on {folder} (needs about {max(1, round(needed_bytes / 1e6))} MB)"


@contextlib.contextmanager
def explained_write_errors(path: Path, needed_bytes: int) -> Iterator[None]:
    """Turn a failed write (disk full, permissions, read-only file system) into one UserError line."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise UserError(no_space_message(nearest_existing_folder(path), needed_bytes)) from None
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
