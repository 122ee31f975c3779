"""The staging folder an export is built in: stale ones removed, renamed into place with signals held, and a full disk explained."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Callable

from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import pid_alive, staging_folder, staging_pid
from sdcpu.export.options import ExportOptions

Log = Callable[[str], None]
DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
NEARLY_FULL_BYTES = 64 * 2**20
WEIGHT_SUFFIXES = (".safetensors", ".bin")
WEIGHT_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae")
REDUCED_COPY = {"fp32": 0.0, "fp16": 0.5, "int8": 0.25}
MB = 10**6


def prepare_staging(staging: Path, log: Log) -> None:
    """A fresh staging folder beside OUT_DIR, renamed into place only once the export is complete."""
    _remove_stale_staging(staging.parent, log)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise
        raise UserError(f"cannot create a folder in {staging.parent}: {exc.strerror or exc}") from None


def _remove_stale_staging(parent: Path, log: Log) -> None:
    """Staging folders whose export process is gone (killed) are removed by the next export into PARENT."""
    if not parent.is_dir():
        return
    for path in sorted(parent.iterdir()):
        pid = staging_pid(path)
        if pid is None or pid == os.getpid() or pid_alive(pid) or path.is_symlink() or not path.is_dir():
            continue
        shutil.rmtree(path, ignore_errors=True)
        log(f"removed {path}, left by an interrupted export")


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM during the block are recorded and re-sent after it, so none lands between two renames."""
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.getsignal(number) for number in held}
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield
        return
    received = []
    for number in held:
        signal.signal(number, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in received:
            signal.raise_signal(number)


def move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished staging folder to OUT_DIR; a folder already there is replaced, then removed."""
    retired = staging_folder(out_dir, "old")
    shutil.rmtree(retired, ignore_errors=True)
    try:
        with _signals_held():
            replacing = out_dir.exists()
            if replacing:
                os.replace(out_dir, retired)
            try:
                os.replace(staging, out_dir)
            except OSError:
                if replacing:
                    os.replace(retired, out_dir)
                raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def _tree_bytes(folder: Path) -> int:
    """The size of the files under FOLDER."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def _fp32_bytes(weights: Path) -> int:
    """The size of a weights file's tensors at fp32: from a .safetensors header, else the file size."""
    if weights.suffix == ".safetensors":
        try:
            with open(weights, "rb") as file:
                header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
            return sum(4 * math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return weights.stat().st_size


def _source_fp32_bytes(src) -> int | None:
    """The fp32 size of the weights an export reads, when they are local files; None otherwise."""
    src = getattr(src, "base", src)
    if getattr(src, "shapes", None):
        return sum(4 * math.prod(shape) for shape in src.shapes.values())
    where = getattr(src, "where", None)
    if not where or not Path(where).is_dir():
        return None
    files = [f for name in WEIGHT_COMPONENTS for f in sorted((Path(where) / name).glob("*"))
             if f.suffix in WEIGHT_SUFFIXES and len(f.suffixes) == 1 and f.is_file()]
    return sum(_fp32_bytes(f) for f in files) or None


def _export_peak_bytes(weights: int, options: ExportOptions) -> int:
    """Free space an export takes at its peak: the fp32 graphs, each one's trace beside it while it is
    converted, the reduced-precision copy, and DeepCache's extra UNet graphs."""
    return int(weights * (2 + REDUCED_COPY.get(options.precision, 0.5) + (1 if options.deepcache else 0)))


def _is_disk_full(exc: BaseException, folder: Path) -> bool:
    """ENOSPC/EDQUOT, or a write error without an errno (OpenVINO: 'basic_ios::clear: iostream error')
    while the disk FOLDER is on is full."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def space_needed(exc: BaseException, staging: Path, src, options: ExportOptions) -> str | None:
    """'about N MB' (or 'more than N MB' without local weights) when EXC is a full disk; else None."""
    if not _is_disk_full(exc, staging.parent):
        return None
    try:
        weights = _source_fp32_bytes(src)
        if weights:
            return f"about {max(1, math.ceil(_export_peak_bytes(weights, options) / MB))} MB"
        return f"more than {max(1, math.ceil(_tree_bytes(staging) / MB))} MB"
    except OSError:
        return "more space"


def no_space_error(folder: Path, needed: str) -> UserError:
    free = shutil.disk_usage(folder).free
    return UserError(f"no space left on {folder} (needs {needed}, {free // MB} MB free); "
                     "free some space or export to another disk")
